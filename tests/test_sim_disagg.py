"""Prefill/decode disaggregation in the simulator (``pitstop.sim.disagg``): the transfer time formula, every output
token generated exactly once (first on the prefill pool, the rest on the decode pool), KV imported into the
decode replica's prefix cache, KV accounting balanced on both pools, and the CLI."""

from __future__ import annotations

import json

import pytest

from pitstop.engine.llm_engine import LLMEngine
from pitstop.engine.scheduler import Scheduler
from pitstop.sim.cost_models import ProfiledCostModel
from pitstop.sim.cost_models.profiled import FEATURES
from pitstop.sim.disagg import (
    DEFAULT_KV_LINK_GBPS, DisaggCluster, build_disagg_cluster, import_kv, kv_bytes_per_token, kv_transfer_time_s,
    parse_disaggregation,
)
from pitstop.sim.simulator import SimConfig, build_cluster, run_cluster
from pitstop.sim.workload import PromptFactory
from pitstop.sim.cluster import SimRequest

# t = 10 ms + 0.1 ms per token
LINEAR = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))
CFG = SimConfig(model="smollm2-135m", replicas=2, kv_cache_tokens=8192, max_model_len=2048,
                max_num_batched_tokens=512)


def _reqs(lens, gap=0.002, vocab=1000):
    pf = PromptFactory(vocab)
    return [SimRequest(f"r{i}", i * gap, p, o, pf.unique(i, p), (i,), 16) for i, (p, o) in enumerate(lens)]


def _disagg(cfg=CFG, num_prefill=1, gbps=DEFAULT_KV_LINK_GBPS) -> DisaggCluster:
    base = build_cluster(cfg, cost_model=LINEAR)
    return build_disagg_cluster(base, num_prefill, cfg.router, cfg.router_kwargs, cfg.model, gbps)


def test_transfer_time_formula_and_kv_bytes():
    # Llama-3.1-8B: 32 layers x 2 (K, V) x 8 KV heads x 128 dims x 2 bytes (bf16)
    assert kv_bytes_per_token("llama-3.1-8b") == 32 * 2 * 8 * 128 * 2 == 131072
    # 1,000 tokens = 131 MB over 400 Gb/s = 50 GB/s: 2.62 ms
    assert kv_transfer_time_s(1000, 131072, 400.0) == pytest.approx(1000 * 131072 * 8 / 400e9)
    assert kv_transfer_time_s(1000, 131072, 400.0) == pytest.approx(2.62144e-3)
    assert kv_transfer_time_s(1000, 131072, 3600.0, latency_s=1e-5) == pytest.approx(1e-5 + 2.62144e-3 / 9)
    assert kv_transfer_time_s(0, 131072, 400.0) == 0.0
    with pytest.raises(ValueError):
        kv_transfer_time_s(10, 1, 0.0)
    assert parse_disaggregation("3:5") == (3, 5)
    for bad in ("2", "0:1", "1:0", "a:b", "1:"):
        with pytest.raises(ValueError):
            parse_disaggregation(bad)


def test_every_token_generated_once_and_kv_balances_on_both_pools():
    cluster = _disagg()
    for rep in cluster.replicas:
        rep.keep_output_ids = True
    lens = [(100, 5), (300, 1), (50, 20), (257, 9), (33, 2), (400, 12)]
    reqs = _reqs(lens)
    res, finished = run_cluster(CFG, cluster, reqs)
    pre, dec = cluster.prefill[0], cluster.decode[0]
    assert [r.name for r in cluster.replicas] == ["prefill 0", "decode 0"]
    assert type(pre.engine) is LLMEngine and type(dec.scheduler) is Scheduler
    by_id = {f.request_id: f for f in finished}
    assert sorted(by_id) == sorted(r.request_id for r in reqs) and len(finished) == len(reqs)
    for r in reqs:
        f = by_id[r.request_id]
        assert f.output_len == r.output_len and len(f.token_times_s) == r.output_len
        assert len(f.output_token_ids) == r.output_len
        assert f.arrival_s == r.arrival_s and f.prompt_len == r.prompt_len
        assert f.arrival_s < f.first_token_s <= f.finish_s
    # the prefill pool sampled exactly one token per request, the decode pool the rest
    assert sorted(f.output_len for f in pre.finished) == [1] * len(reqs)
    assert sum(f.output_len for f in dec.finished) == sum(o - 1 for _, o in lens)
    assert len(dec.finished) == sum(1 for _, o in lens if o > 1) == cluster.dstats.transfers
    assert cluster.dstats.finished_on_prefill == 1
    # the decode replica never re-prefilled a prompt: only its last partial block and the first token
    bs = CFG.block_size
    for f in dec.finished:
        assert f.computed_prompt_tokens <= bs
        assert f.num_cached_tokens == (f.prompt_len - 1) // bs * bs  # the imported blocks were hit
    assert cluster.dstats.kv_imports_failed == 0
    assert res["summary"]["completed"] == len(reqs)
    for rep in cluster.replicas:  # (the autouse fixture checks it again after the test)
        rep.scheduler.check_kv_accounting()
        rep.engine.kv_manager.assert_idle()


def test_decode_leg_arrives_after_the_transfer():
    gbps = 0.1  # slow enough to see: 100 tokens x 23,040 B (SmolLM2-135M: 30 x 2 x 3 x 64 x 2) x 8 / 0.1e9 = 184 ms
    cluster = _disagg(gbps=gbps)
    (req,) = _reqs([(100, 4)])
    _, (f,) = run_cluster(CFG, cluster, [req])
    p_leg, d_leg = cluster.prefill[0].finished[0], cluster.decode[0].finished[0]
    xfer = kv_transfer_time_s(100, kv_bytes_per_token("smollm2-135m"), gbps)
    assert xfer == pytest.approx(100 * 23040 * 8 / 0.1e9)
    assert d_leg.arrival_s == pytest.approx(p_leg.finish_s + xfer)
    assert f.first_token_s == pytest.approx(0.010 + 100e-4)  # the prefill step, on the prefill replica
    # decode leg: one step computing the partial block + first token (100 - 96 + 1 = 5 tokens), then 2 decodes
    assert f.finish_s == pytest.approx(p_leg.finish_s + xfer + (0.010 + 5e-4) + 2 * 0.0101)
    assert cluster.dstats.transfer_bytes == 100 * 23040


def test_transfers_share_the_prefill_replicas_link_in_order():
    cluster = _disagg(gbps=0.1)
    reqs = [SimRequest(f"r{i}", 0.0, 64, 3, PromptFactory(1000).unique(i, 64), (i,), 16) for i in range(3)]
    run_cluster(CFG, cluster, reqs)
    xfer = kv_transfer_time_s(64, kv_bytes_per_token("smollm2-135m"), 0.1)
    arrivals = sorted(f.arrival_s for f in cluster.decode[0].finished)
    p_end = cluster.prefill[0].finished[0].finish_s  # the three prefills ran in one step
    assert all(f.finish_s == p_end for f in cluster.prefill[0].finished)
    assert arrivals == pytest.approx([p_end + xfer, p_end + 2 * xfer, p_end + 3 * xfer])
    assert cluster.dstats.transfer_wait_s_total == pytest.approx(xfer + 2 * xfer)


def test_import_kv_uses_the_kv_manager_and_refuses_what_does_not_fit():
    cluster = _disagg(SimConfig(model="smollm2-135m", replicas=2, kv_cache_tokens=256, max_model_len=256))
    dec = cluster.decode[0]
    kv = dec.engine.kv_manager
    ids = list(range(10, 110))  # 100 tokens: 6 full blocks a request with these tokens can hit
    assert import_kv(dec, "x", ids, 0.0) == (0, 6)
    assert kv.pool.num_cached_free_blocks == 6 and kv.num_free_blocks == kv.num_blocks
    assert import_kv(dec, "y", ids, 0.0) == (6, 0)  # already there: nothing written
    assert import_kv(dec, "z", list(range(2000, 2300)), 0.0) == (0, 0)  # 18 blocks > 16 in the pool
    assert kv.pool.num_cached_free_blocks == 6 and not kv.req_blocks and not kv._hashes
    kv.assert_idle()


def test_slower_link_raises_tpot_not_ttft():
    reqs = _reqs([(500, 8)] * 6, gap=0.05)
    fast, _ = run_cluster(CFG, _disagg(gbps=3600.0), reqs)
    slow, _ = run_cluster(CFG, _disagg(gbps=0.5), reqs)
    assert slow["summary"]["tpot_ms"]["mean"] > fast["summary"]["tpot_ms"]["mean"] + 5.0
    assert slow["summary"]["ttft_ms"]["mean"] == pytest.approx(fast["summary"]["ttft_ms"]["mean"])


def test_cli_disaggregation(tmp_path):
    from pitstop.cli.main import main
    out = tmp_path / "pd.json"
    assert main(["simulate", "--workload", "random", "--num-requests", "12", "--random-input-len", "256",
                 "--random-output-len", "16", "--request-rate", "20", "--disaggregation", "1:2",
                 "--kv-link-gbps", "100", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["summary"]["completed"] == 12 and res["config"]["replicas"] == 3
    d = res["disaggregation"]
    assert d["num_prefill"] == 1 and d["num_decode"] == 2 and d["link_gbps"] == 100.0 and d["transfers"] == 12
    assert [r["pool"] for r in res["replicas"]] == ["prefill", "decode", "decode"]
    trace = json.loads((tmp_path / "pd.trace.json").read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in trace if e["name"] == "process_name"}
    assert names == {0: "prefill 0", 1: "decode 0", 2: "decode 1"}
