"""The Ray Serve front's pure parts: routing keys (``pitstop.server.ray.routing``), the merged per-replica
/metrics text, and the request router's choices over fake replicas (needs Ray importable; no cluster)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pitstop.server.ray.ingress import merge_metrics
from pitstop.server.ray.routing import (CHARS_PER_BLOCK, KIND_PROGRAM, KIND_REPLICA, RouteInfo, program_key,
                                        route_info, text_prefix_keys, token_prefix_keys)


def test_text_prefix_keys_chain_and_share_leading_blocks():
    a = "x" * CHARS_PER_BLOCK + "y" * CHARS_PER_BLOCK
    b = "x" * CHARS_PER_BLOCK + "z" * CHARS_PER_BLOCK
    ka, kb = text_prefix_keys(a), text_prefix_keys(b)
    assert len(ka) == 2 and ka[0] == kb[0] and ka[1] != kb[1]
    assert text_prefix_keys("short") == ()
    assert token_prefix_keys(list(range(1024)))[0] == token_prefix_keys(list(range(512)) + [7] * 600)[0]


def test_route_info_of_bodies():
    body = {"model": "m", "prompt": "p" * (2 * CHARS_PER_BLOCK), "max_tokens": 7, "program_id": "prog",
            "is_last_turn": False}
    info = route_info("/v1/completions", json.dumps(body).encode(), "key-a", "r1")
    assert info.output_len == 7 and len(info.prefix_keys) == 2 and info.prompt_len == CHARS_PER_BLOCK // 2
    assert info.program_key == program_key("key-a", "prog") != program_key("key-b", "prog")
    assert info.is_last_turn is False
    chat = {"messages": [{"role": "user", "content": "hi"}], "job_id": "j"}
    info = route_info("/v1/chat/completions", json.dumps(chat).encode(), None, "r2")
    assert info.program_key == program_key(None, "j") and info.is_last_turn and info.output_len == 16
    assert route_info("/v1/completions", b'{"prompt": ', None, "r3").program_key is None  # replica answers 400
    assert RouteInfo.from_dict(info.to_dict()) == info


def test_merge_metrics_labels_each_replica():
    text = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2.0\n"
            "# HELP g G.\n# TYPE g gauge\ng 3.0\n")
    out = merge_metrics([text, text]).splitlines()
    assert out.count("# TYPE a_total counter") == 1
    assert 'a_total{replica="0",x="1"} 2.0' in out and 'a_total{replica="1",x="1"} 2.0' in out
    assert 'g{replica="1"} 3.0' in out


@dataclass
class _Replica:
    unique_id: str
    routing_stats: dict = field(default_factory=dict)

    @property
    def replica_id(self):
        return SimpleNamespace(unique_id=self.unique_id)


def _pending(info: RouteInfo, rid: str):
    return SimpleNamespace(args=[info.to_dict()], kwargs={}, created_at=0.0,
                           metadata=SimpleNamespace(internal_request_id=rid),
                           routing_context=SimpleNamespace(should_backoff=False))


def _router(name: str):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from pitstop.server.ray.request_router import PitstopRequestRouter
    r = PitstopRequestRouter.__new__(PitstopRequestRouter)  # no Serve internals needed by choose_replicas
    r.initialize_state(router=name)
    return r


def _choose(router, replicas, info, rid):
    return asyncio.run(router.choose_replicas(replicas, _pending(info, rid)))[0][0].unique_id


def test_request_router_program_affinity_and_program_ops():
    router = _router("program-affinity")
    reps = [_Replica("b"), _Replica("a")]
    first = _choose(router, reps, RouteInfo(request_id="1", prompt_len=10, program_key="p", is_last_turn=False), "1")
    assert first == "a"  # least loaded, ties to the lowest index (replicas sorted by id)
    lone = _choose(router, reps, RouteInfo(request_id="2", prompt_len=10), "2")
    assert lone == "b"  # "a" has a request in flight
    router.on_request_completed(None, "2")
    for i in range(3):
        assert _choose(router, reps, RouteInfo(request_id=f"t{i}", prompt_len=10, program_key="p",
                                               is_last_turn=False), f"t{i}") == "a"
    assert _choose(router, reps, RouteInfo(kind=KIND_PROGRAM, program_key="p"), "op") == "a"
    assert _choose(router, reps, RouteInfo(kind=KIND_REPLICA, replica_index=1), "bc") == "b"


def test_request_router_round_robin_override_and_unknown_name():
    router = _router("least-loaded")
    reps = [_Replica("a"), _Replica("b")]
    seen = [_choose(router, reps, RouteInfo(request_id=str(i), router="round-robin"), str(i)) for i in range(4)]
    assert seen == ["a", "b", "a", "b"]
    with pytest.raises(ValueError):
        _router("no-such-router")
