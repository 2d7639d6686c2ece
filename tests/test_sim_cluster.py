"""The simulator: virtual clock, SimulatedRunner, the engine's own classes driven unchanged, cluster event loop."""

from __future__ import annotations

import json

import pytest

from pitstop.config import EngineConfig
from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.engine.llm_engine import LLMEngine
from pitstop.engine.scheduler import Scheduler
from pitstop.executor.simulated_runner import SimulatedRunner
from pitstop.policies import get_scheduling_policy
from pitstop.sampling_params import SamplingParams
from pitstop.clock import VirtualClock
from pitstop.sim.cluster import Cluster, Replica, SimRequest
from pitstop.sim.cost_models import ProfiledCostModel, StepShape
from pitstop.sim.cost_models.profiled import FEATURES
from pitstop.sim.simulator import SimConfig, build_cluster, simulate
from pitstop.sim.workload import PromptFactory, WorkloadOptions, build_sim_workload

# t = 10 ms + 0.1 ms per token: easy to check by hand
LINEAR = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))


def test_virtual_clock_never_goes_back():
    c = VirtualClock()
    assert c() == 0.0
    c.advance(1.5)
    c.advance_to(2.0)
    assert c() == 2.0
    with pytest.raises(ValueError):
        c.advance_to(1.0)
    with pytest.raises(ValueError):
        c.advance(-1)


def test_engine_with_simulated_runner_stamps_virtual_times():
    """One LLMEngine + SimulatedRunner + VirtualClock: TTFT = the prefill step, each decode one step later."""
    clk = VirtualClock()
    runner = SimulatedRunner(LINEAR, clk, vocab_size=1000, avoid_token_ids=frozenset({2}))
    eng = LLMEngine(EngineConfig(block_size=16, max_num_batched_tokens=512), executor=runner, clock=clk,
                    num_blocks=64, eos_token_ids=frozenset({2}), vocab_size=1000, max_model_len=512)
    eng.add_request("a", list(range(3, 203)), SamplingParams(max_tokens=5, ignore_eos=True), arrival_time=0.0)
    done = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    m = done["a"].metrics
    assert m.ttft == pytest.approx(0.010 + 200e-4)
    assert m.e2el == pytest.approx(0.030 + 4 * 0.0101)
    assert clk() == pytest.approx(m.finished_time)
    assert len(done["a"].outputs[0].token_ids) == 5 and 2 not in done["a"].outputs[0].token_ids
    assert runner.num_steps == 5


def test_simulator_drives_the_engines_own_classes():
    cluster = build_cluster(SimConfig(replicas=2, kv_cache_tokens=50_000, max_model_len=8192))
    for rep in cluster.replicas:
        assert type(rep.engine) is LLMEngine
        assert type(rep.scheduler) is Scheduler and rep.scheduler is rep.engine.scheduler
        assert type(rep.engine.kv_manager) is KVCacheManager and rep.scheduler.kv is rep.engine.kv_manager
        assert type(rep.scheduler.policy) is type(get_scheduling_policy("fcfs"))
        assert isinstance(rep.engine.executor, SimulatedRunner)
        assert rep.engine.clock is cluster.clock
    # no scheduling code in the simulator package: it never defines schedule()/update()/allocate_slots()
    import inspect
    import pitstop.sim.cluster as cl
    src = inspect.getsource(cl)
    assert "def schedule(" not in src and "def allocate_slots(" not in src and "def update(" not in src


def _reqs(n, plen, olen, gap, vocab=1000):
    pf = PromptFactory(vocab)
    return [SimRequest(f"r{i}", i * gap, plen, olen, pf.unique(i, plen), (i,), 16) for i in range(n)]


def test_cluster_timings_match_hand_computed_steps():
    cfg = SimConfig(model="smollm2-135m", replicas=1, kv_cache_tokens=4096, max_num_batched_tokens=256,
                    max_model_len=1024)
    res, cluster = simulate(cfg, _reqs(1, 100, 3, 0.0), cost_model=LINEAR)
    s = res["summary"]
    assert s["completed"] == 1
    assert s["ttft_ms"]["mean"] == pytest.approx(1e3 * (0.010 + 100e-4))
    assert s["tpot_ms"]["mean"] == pytest.approx(1e3 * 0.0101)
    assert s["itl_ms"]["mean"] == pytest.approx(1e3 * 0.0101)
    # a request arriving during a step waits for the next step
    res, _ = simulate(cfg, [*_reqs(1, 100, 3, 0.0), SimRequest("late", 0.005, 50, 1, PromptFactory(1000).unique(9, 50))],
                      cost_model=LINEAR)
    fin = {f.request_id: f for r in _.replicas for f in r.finished}
    assert fin["late"].first_token_s == pytest.approx(0.020 + 0.010 + 1e-4 * 51)  # joined the 2nd step (1 decode + 50)


def test_prefix_cache_hits_in_simulation_follow_shared_blocks():
    pf = PromptFactory(1000, block_tokens=64)
    shared = SimRequest("a", 0.0, 256, 2, pf.blocks((1, 2, 3, 4), 256))
    same = SimRequest("b", 1.0, 256, 2, pf.blocks((1, 2, 3, 5), 256))
    other = SimRequest("c", 2.0, 256, 2, pf.blocks((9, 2, 3, 4), 256))
    cfg = SimConfig(model="smollm2-135m", kv_cache_tokens=8192, max_model_len=1024)
    res, cluster = simulate(cfg, [shared, same, other], cost_model=LINEAR)
    fin = {f.request_id: f for f in cluster.replicas[0].finished}
    assert fin["a"].num_cached_tokens == 0 and fin["b"].num_cached_tokens == 192 and fin["c"].num_cached_tokens == 0
    assert res["summary"]["prefix_cache_hit_rate"] == pytest.approx(192 / 768)


def test_event_loop_routes_in_time_order_and_balances():
    cfg = SimConfig(model="smollm2-135m", replicas=3, router="round-robin", kv_cache_tokens=8192, max_model_len=1024)
    reqs = _reqs(30, 64, 8, 0.003)
    res, cluster = simulate(cfg, list(reversed(reqs)), cost_model=LINEAR)  # order of the list does not matter
    assert res["summary"]["completed"] == 30
    assert [cluster.assignment[f"r{i}"] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [len(r.finished) for r in cluster.replicas] == [10, 10, 10]
    assert res["sim"]["events"] == 30 + res["sim"]["steps"]
    again, _ = simulate(cfg, reqs, cost_model=LINEAR)
    assert again["summary"]["e2el_ms"] == res["summary"]["e2el_ms"]  # deterministic
    for rep in cluster.replicas:
        rep.scheduler.check_kv_accounting()


def test_kv_pressure_preempts_and_still_finishes():
    cfg = SimConfig(model="smollm2-135m", kv_cache_tokens=1024, max_model_len=1024, max_num_batched_tokens=512)
    res, cluster = simulate(cfg, _reqs(12, 200, 60, 0.0), cost_model=LINEAR)
    assert res["summary"]["completed"] == 12
    assert cluster.replicas[0].scheduler.num_preemptions > 0


def test_mooncake_workload_loads_with_shared_prefixes():
    reqs, info = build_sim_workload("mooncake", WorkloadOptions(num_requests=50, time_scale=0.5), 128256, 131072)
    assert info["num_requests"] == 50 and info["block_tokens"] == 512
    a, b = reqs[0].make_prompt(), reqs[1].make_prompt()
    assert len(a) == reqs[0].prompt_len and a[:512] == b[:512] and a[512:1024] != b[512:1024]  # hash id 0 shared
    assert reqs[0].prefix_keys[0] == reqs[1].prefix_keys[0] and reqs[0].prefix_keys[1] != reqs[1].prefix_keys[1]


def _conversations(n_conv=10, turns=4, block=64, gap=0.05, router_keys=True):
    """Multi-turn chats: turn k's prompt = the conversation's first k+1 blocks (growing shared prefix); with
    ``router_keys``, each request carries the router's chained keys of its blocks (else none)."""
    pf = PromptFactory(1000, block_tokens=block)
    out = []
    for t in range(turns):
        for c in range(n_conv):
            ids = tuple(1000 * c + j for j in range(t + 2))
            keys = tuple(hash(ids[:j + 1]) for j in range(len(ids))) if router_keys else ()
            out.append(SimRequest(f"c{c}t{t}", (t * n_conv + c) * gap, len(ids) * block, 4,
                                  pf.blocks(ids, len(ids) * block), keys, block))
    return out


def test_prefix_affinity_beats_round_robin_on_multi_turn_chats():
    hits = {}
    for router in ("round-robin", "prefix-affinity", "two-choice"):
        cfg = SimConfig(model="smollm2-135m", replicas=4, router=router, kv_cache_tokens=8192, max_model_len=2048)
        res, _ = simulate(cfg, _conversations(), cost_model=LINEAR)
        assert res["summary"]["completed"] == 40
        hits[router] = res["summary"]["prefix_cache_hit_rate"]
    assert hits["prefix-affinity"] > 1.5 * hits["round-robin"]
    assert hits["two-choice"] > hits["round-robin"]


def test_cli_writes_json_png_and_chrome_trace(tmp_path):
    from pitstop.cli.main import main
    out = tmp_path / "sim.json"
    assert main(["simulate", "--workload", "azure-code", "--num-requests", "40", "--replicas", "2",
                 "--router", "least-loaded", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "goodput", "request_throughput", "output_throughput"):
        assert key in res["summary"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    trace = json.loads((tmp_path / "sim.trace.json").read_text())
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert steps and {e["pid"] for e in steps} == {0, 1} and all(e["dur"] > 0 for e in steps)
    sweep = tmp_path / "sweep.json"
    assert main(["simulate", "--workload", "random", "--num-requests", "30", "--random-input-len", "256",
                 "--sweep", "replicas=1,2", "--output", str(sweep)]) == 0
    pts = json.loads(sweep.read_text())["points"]
    assert [p["num_replicas"] for p in pts] == [1, 2]
    assert pts[1]["summary"]["e2el_ms"]["mean"] <= pts[0]["summary"]["e2el_ms"]["mean"]


def test_ttl_pin_expires_on_the_virtual_clock():
    """A non-final program turn pins its KV for the fixed TTL; the pin is released once virtual time passes it."""
    clk = VirtualClock()
    runner = SimulatedRunner(LINEAR, clk, vocab_size=1000)
    eng = LLMEngine(EngineConfig(block_size=16, ttl_policy="fixed", ttl_seconds=5.0), executor=runner, clock=clk,
                    num_blocks=64, vocab_size=1000, max_model_len=512)
    eng.add_request("t1", list(range(3, 67)), SamplingParams(max_tokens=2, ignore_eos=True), arrival_time=0.0,
                    program_id="P", is_last_turn=False, tool_name="bash")
    while eng.has_unfinished_requests():
        eng.step()
    pm = eng.scheduler.programs
    assert pm.has_pins and pm.pinned_refs() == 4  # 64 prompt tokens + 1 computed output = 4 full blocks
    clk.advance_to(4.0)
    eng.scheduler.schedule(clk())
    assert pm.has_pins
    clk.advance_to(clk() + 2.0)  # past the 5 s TTL (the turn ended at ~0.03 s)
    eng.scheduler.schedule(clk())
    assert not pm.has_pins and pm.pinned_refs() == 0
    eng.scheduler.check_kv_accounting()


def test_replica_mirrors_every_call_of_engine_step():
    """LLMEngine.step() = begin_step + executor + finish_step; the cluster splits it at the executor (a step is
    planned at its start and applied at its end) and must call the same halves, never engine internals."""
    import ast
    import inspect
    import textwrap
    tree = ast.parse(textwrap.dedent(inspect.getsource(LLMEngine.step)))

    def calls(nodes) -> set[str]:
        return {n.func.attr for node in nodes for n in ast.walk(node)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    handlers = [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    on_error = calls(handlers)
    for h in handlers:
        h.body = []
    assert calls([tree]) == {"begin_step", "execute", "finish_step"}, f"LLMEngine.step calls {sorted(calls([tree]))}"
    # the only error path is the executor raising, which the simulated runner never does
    assert on_error == {"fail_step"}, f"LLMEngine.step's error path calls {sorted(on_error)}"
    src = inspect.getsource(Replica)
    assert "engine.begin_step(" in src and "runner.execute(" in src and "engine.finish_step(" in src
    assert "engine._" not in src and "scheduler.schedule(" not in src and "scheduler.update(" not in src


def test_an_explicit_context_the_kv_cache_cannot_hold_fails_as_in_the_real_engine():
    """Issue 20: the simulator applies the engine's own check (it used to shrink max_model_len silently)."""
    with pytest.raises(ValueError, match=r"the KV cache holds 4096 tokens .* less than max_model_len=8192"):
        build_cluster(SimConfig(model="smollm2-135m", replicas=1, kv_cache_tokens=4096, max_model_len=8192))
    # the model's own (defaulted) context is still fitted to the cache
    cluster = build_cluster(SimConfig(model="smollm2-135m", replicas=1, kv_cache_tokens=4096))
    assert cluster.replicas[0].engine.max_model_len == 4096
