"""Serving benchmark pieces that need no server: Mooncake prompts, arrivals, SLO parsing, summaries."""

from __future__ import annotations

import pytest

from pitstop.replay.serving import RequestResult, gamma_arrivals, meets_slo, parse_slo, summarize
from pitstop.workloads.mooncake import build_block_prompts, load_mooncake, scale_mooncake


def test_mooncake_blocks_repeat_exactly_where_hash_ids_repeat():
    reqs = load_mooncake(limit=200)
    assert len(reqs) == 200 and reqs[0].spec.arrival_s == 0.0
    scaled, block = scale_mooncake(reqs, 0.05, 2048)
    assert block == round(512 * 0.05)
    prompts = build_block_prompts(scaled, block, vocab=list(range(100, 5000)), seed=1)
    seen: dict[int, list[int]] = {}
    for r, p in zip(scaled, prompts):
        assert len(p) == r.spec.input_len
        for i, h in enumerate(r.hash_ids):
            chunk = p[i * block:(i + 1) * block]
            if len(chunk) < block:
                continue  # the last, partial block
            if h in seen:
                assert seen[h] == chunk
            else:
                assert chunk not in seen.values()
                seen[h] = chunk
    shared = [r.hash_ids[0] for r in scaled]
    assert len(set(shared)) < len(shared)  # the trace really shares prefixes


def test_gamma_arrivals_rate_and_order():
    xs = gamma_arrivals(4000, rate=5.0, burstiness=0.5, seed=0)
    assert xs == sorted(xs) and xs[0] == 0.0
    assert (len(xs) - 1) / xs[-1] == pytest.approx(5.0, rel=0.1)
    assert gamma_arrivals(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]


def test_slo_and_summary():
    slo = parse_slo("ttft=100,tpot=20")
    assert slo == {"ttft": 100.0, "tpot": 20.0}
    with pytest.raises(ValueError):
        parse_slo("latency=3")
    good = RequestResult(ok=True, prompt_len=10, output_len=11, ttft_s=0.05, e2el_s=0.05 + 10 * 0.01, itl_s=[0.01] * 10)
    slow = RequestResult(ok=True, prompt_len=10, output_len=11, ttft_s=0.5, e2el_s=1.0, itl_s=[0.05] * 10)
    failed = RequestResult(ok=False, error="HTTP 429")
    assert meets_slo(good, slo) and not meets_slo(slow, slo)
    s = summarize([good, slow, failed], wall_s=2.0, slo=slo)
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["total_output_tokens"] == 22 and s["output_throughput"] == 11.0
    assert s["goodput"] == 0.5 and s["slo_attainment"] == pytest.approx(1 / 3)
    assert s["tpot_ms"]["median"] == pytest.approx((10.0 + 50.0) / 2)


def test_server_cpu_pinning(monkeypatch):
    from pitstop.bench import serve

    assert serve.pin_cpus(["pitstop", "serve"], None) == ["pitstop", "serve"]
    assert serve.pin_cpus(["pitstop", "serve"], "0") == ["taskset", "-c", "0", "pitstop", "serve"]
    monkeypatch.setattr(serve.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert serve.client_cpus(None) is None
    assert serve.client_cpus("0") == {1, 2, 3}
    assert serve.client_cpus("0-1,3") == {2}
    assert serve.client_cpus("0-3") is None  # nothing left: the client stays where it is
