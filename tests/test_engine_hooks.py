"""The engine's public hooks that the simulator uses instead of patching engine objects: no block tables, a fast
prompt-id check, importing a transferred prefix into the KV manager, the cluster's admission hook, and replica
counters restored from another process."""

from __future__ import annotations

import pytest

from pitstop.clock import VirtualClock
from pitstop.config import EngineConfig
from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.engine.llm_engine import LLMEngine
from pitstop.executor.simulated_runner import SimulatedRunner
from pitstop.sampling_params import SamplingParams
from pitstop.sim.cluster import Cluster, EngineCounts, Replica, SimRequest
from pitstop.sim.cost_models import ProfiledCostModel
from pitstop.sim.cost_models.profiled import FEATURES
from pitstop.sim.routers import get_router

LINEAR = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))
SP = SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0)


def sim_engine(**kw) -> tuple[LLMEngine, VirtualClock]:
    clk = VirtualClock()
    eng = LLMEngine(EngineConfig(block_size=4, max_num_batched_tokens=64), executor=SimulatedRunner(LINEAR, clk,
                    vocab_size=1000), clock=clk, num_blocks=64, vocab_size=1000, max_model_len=128, **kw)
    return eng, clk


def run_all(eng: LLMEngine) -> tuple[list, dict]:
    tables, outs = [], {}
    while eng.has_unfinished_requests():
        so = eng.begin_step()
        if so.is_empty:
            break
        tables.append([list(s.block_ids) for s in so.scheduled])
        res = eng.executor.execute(so)
        for o in eng.finish_step(so, res):
            if o.finished:
                outs[o.request_id] = (o.outputs[0].token_ids, o.metrics.finished_time, o.num_cached_tokens)
    return tables, outs


def test_llm_engine_without_an_executor_names_the_builder():
    with pytest.raises(TypeError, match="build_engine"):
        LLMEngine(EngineConfig())


def test_block_tables_off_gives_empty_tables_and_the_same_run():
    runs = []
    for tables_on in (True, False):
        eng, _ = sim_engine(block_tables=tables_on)
        for i in range(3):
            eng.add_request(f"r{i}", list(range(10, 30 + 7 * i)), SP, arrival_time=0.0)
        eng.add_request("shared", list(range(10, 30)), SP, arrival_time=0.0)
        tables, outs = run_all(eng)
        runs.append((tables, outs, eng.stats()))
        eng.check_kv_invariants()
    (t_on, o_on, s_on), (t_off, o_off, s_off) = runs
    assert any(any(t) for t in t_on) and not any(any(t) for step in t_off for t in step)
    assert [len(s) for s in t_on] == [len(s) for s in t_off]
    assert o_on == o_off and s_on == s_off


def test_ids_in_range_hook_is_the_fast_path_and_errors_stay_precise():
    calls = []

    def check(ids, vocab):
        calls.append(len(ids))
        return all(0 <= t < vocab for t in ids)

    eng, _ = sim_engine(ids_in_range=check)
    eng.add_request("ok", [1, 2, 3], SP)
    assert calls == [3]
    with pytest.raises(ValueError, match=r"outside \[0, 1000\)"):
        eng.add_request("bad", [1, 5000], SP)
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", [], SP)
    eng.abort_request("ok")


def test_import_prefix_fills_the_prefix_cache_for_the_next_request():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    tokens = list(range(100, 114))  # 14 tokens: 3 full blocks a request with them can hit
    assert kv.import_prefix("x", tokens) == (0, 3)
    kv.check_invariants()
    assert kv.num_free_blocks == 16 and not kv.req_blocks  # cached free, held by nobody
    assert kv.import_prefix("y", tokens) == (3, 0)  # already there
    eng, _ = sim_engine()
    eng.kv_manager.import_prefix("p", tokens)
    eng.add_request("d", tokens + [7], SP)
    _, outs = run_all(eng)
    assert outs["d"][2] == 12  # the imported blocks were hits


def test_import_prefix_changes_nothing_when_it_cannot():
    off = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    assert off.import_prefix("x", list(range(40))) == (0, 0)
    small = KVCacheManager(num_blocks=2, block_size=4)
    assert small.import_prefix("x", list(range(40))) == (0, 0)
    small.check_invariants()
    assert small.num_free_blocks == 2 and not small.req_blocks


def make_cluster(n: int = 2) -> Cluster:
    def make(i, clock):
        return Replica(i, EngineConfig(block_size=16), LINEAR, clock, 256, 1000, 1024)
    return Cluster(n, get_router("round-robin"), make)


def req(rid: str, at: float) -> SimRequest:
    return SimRequest(rid, at, 40, 3, lambda: list(range(5, 45)))


def test_cluster_admission_hook_sees_every_arrival_after_it_is_added():
    cluster = make_cluster()
    seen = []

    def on_admitted(sreq, idx, now):
        assert cluster.replicas[idx].engine.has_unfinished_requests()  # already added to its engine
        seen.append((sreq.request_id, idx, now))

    cluster.on_admitted = on_admitted
    cluster.run([req("a", 0.0), req("b", 0.5), req("c", 0.5)])
    assert seen == [("a", 0, 0.0), ("b", 1, 0.5), ("c", 0, 0.5)]


def test_replica_counters_come_from_the_engine_unless_restored():
    cluster = make_cluster(1)
    cluster.run([req("a", 0.0), req("b", 0.0)])
    rep = cluster.replicas[0]
    kv = rep.engine.kv_manager
    assert rep.engine_counts() == EngineCounts(kv.prefix_queries, kv.prefix_hits, rep.scheduler.num_preemptions)
    assert kv.prefix_queries == 80
    rep.restore_counts(EngineCounts(7, 3, 1))
    assert rep.engine_counts() == EngineCounts(7, 3, 1) and kv.prefix_queries == 80  # the engine is untouched
