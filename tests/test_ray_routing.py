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


class _FakeEngine:
    """A handle double: each ``remote`` call plays the next script (a list of ASGI messages, or an exception to raise
    after them)."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.calls = 0

    def remote(self, info, request):
        script = self.scripts[self.calls]
        self.calls += 1

        async def gen():
            for m in script:
                if isinstance(m, Exception):
                    raise m
                yield m
        return gen()


def _relay(scripts, num_replicas=2):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from pitstop.server.ray.ingress import Ingress
    ing = Ingress.__new__(Ingress)
    ing.engine, ing.num_replicas = _FakeEngine(scripts), num_replicas
    sent = []

    async def send(m):
        sent.append(m)
    asyncio.run(ing._relay(RouteInfo(request_id="r"), {}, send))
    return ing.engine.calls, sent


_START_SSE = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}


def test_relay_retries_a_request_the_dead_replica_never_started():
    ok = [{"type": "http.response.start", "status": 200, "headers": []},
          {"type": "http.response.body", "body": b"{}", "more_body": False}]
    calls, sent = _relay([[RuntimeError("ActorDiedError")], ok])
    assert calls == 2 and sent == ok
    calls, sent = _relay([[RuntimeError("dead")], [RuntimeError("dead too")]])
    assert calls == 2 and sent[0]["status"] == 503 and b"replica_failed" in sent[1]["body"]


def test_relay_ends_a_broken_stream_with_an_error_event():
    chunk = {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
    calls, sent = _relay([[_START_SSE, chunk, RuntimeError("ActorDiedError: gone")]])
    assert calls == 1 and sent[:2] == [_START_SSE, chunk]  # not retried: the client has part of the answer
    tail = sent[2]["body"].decode()
    assert sent[2]["more_body"] is False and tail.endswith("data: [DONE]\n\n")
    assert json.loads(tail.split("\n\n")[0][6:])["error"]["code"] == "replica_failed"


def test_prompt_hasher_names_the_blocks_the_engine_caches():
    """The front's hashes of a completion and of a chat (with tools) equal the engine's prefix-block hashes of the
    prompt ids the server builds (``LLM.generate`` / ``LLM.chat`` build them the same way); a tenant's salt under
    per-key isolation changes them as the server's ``scoped_salt`` does; an invalid body gives none."""
    from pitstop import LLM, SamplingParams
    from pitstop.engine.block_pool import prefix_block_hashes
    from pitstop.server.ray.prompt_hashes import PromptHasher
    from pitstop.server.tenants import scoped_salt, tenant_of
    from server_helpers import MODEL

    llm = LLM(model=MODEL, dtype="float32", kv_cache_memory="64MiB", max_model_len=1024, num_threads=1)
    sp = SamplingParams(temperature=0, max_tokens=1)
    hasher = PromptHasher(MODEL, 16, api_keys=["k1"], cache_isolation="per-key")
    text = "Count the lighthouses of the northern coast, one by one: " * 4
    ids = llm.generate([text], sp, use_tqdm=False)[0].prompt_token_ids
    body = json.dumps({"model": MODEL, "prompt": text}).encode()
    assert hasher.block_hashes("/v1/completions", body, None) == tuple(prefix_block_hashes(ids, 16))
    salted = scoped_salt(tenant_of("k1", ["k1"]), None, "per-key")
    assert hasher.block_hashes("/v1/completions", body, "k1") == tuple(prefix_block_hashes(ids, 16, salted))
    tools = [{"type": "function", "function": {"name": "ls", "description": "List files in a folder.",
                                               "parameters": {"type": "object",
                                                              "properties": {"path": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "You are a careful coding agent."},
                {"role": "user", "content": "Which files are in the repository root? " * 3}]
    chat_ids = llm.chat(messages, sp, use_tqdm=False, tools=tools)[0].prompt_token_ids
    chat = json.dumps({"model": MODEL, "messages": messages, "tools": tools}).encode()
    got = hasher.block_hashes("/v1/chat/completions", chat, None)
    assert len(got) >= 4 and got == tuple(prefix_block_hashes(chat_ids, 16))
    assert hasher.block_hashes("/v1/chat/completions", b'{"messages": 3}', None) == ()
    assert hasher.hash_prompt("/v1/completions", body, None)[0] == len(ids)  # the token count routers compare to
