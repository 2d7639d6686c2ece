"""Migration of a waiting program's pinned KV between engines (issue 17, Llumnix): export on one engine, import on
another, the next turn there hits the imported blocks and computes the same tokens; accounting balances on both.
The paged echo executor checks that every block holds its tokens; the real model checks the K/V bytes."""

from __future__ import annotations

import pytest

from fake_executor import Clock, PagedEchoExecutor
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.sampling_params import SamplingParams

SP = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def _engine(num_blocks=40, block_size=4):
    ex = PagedEchoExecutor(num_blocks, block_size)
    eng = LLMEngine(EngineConfig(block_size=block_size, ttl_policy="fixed", ttl_seconds=30.0,
                                 scheduling_policy="program-fcfs"),
                    executor=ex, clock=Clock(), num_blocks=num_blocks, vocab_size=1000,
                    max_model_len=min(128, num_blocks * block_size))
    return eng, ex


def _run(eng, rid, prompt, program="p", last=False, params=SP):
    eng.add_request(rid, prompt, params, program_id=program, is_last_turn=last, tool_name="Bash")
    done = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    return done[rid]


def test_export_import_moves_the_pin_and_the_next_turn_hits_it():
    a, _ = _engine()
    b, ex_b = _engine()
    prompt = list(range(10, 31))  # 21 tokens
    first = _run(a, "t0", prompt)
    assert a.waiting_programs() == [("p", 6)]  # 21 + 4 - 1 computed tokens: 6 full blocks
    kv = a.export_program_kv("p")
    assert kv.num_blocks == 6 and kv.num_bytes == 6 * 64 and kv.ttl_s > 0 and kv.tool_name == "Bash"
    assert kv.token_ids == (prompt + first.outputs[0].token_ids)[:24]
    assert b.import_program_kv(kv) == 6
    assert a.end_program("p")
    a.kv_manager.assert_idle()
    assert b.kv_manager.num_pinned_blocks == 6 and b.program_stats("p")["pinned_blocks"] == 6
    nxt = prompt + first.outputs[0].token_ids + [7, 8, 9]
    out = _run(b, "t1", nxt, last=True)
    assert out.num_cached_tokens == 24  # the imported blocks, found by prefix lookup
    ref, _ = _engine()
    assert out.outputs[0].token_ids == _run(ref, "r", nxt, program=None).outputs[0].token_ids
    b.kv_manager.assert_idle()
    assert b.kv_manager.num_pinned_blocks == 0 and not b.waiting_programs()


def test_export_refuses_a_running_or_unpinned_program_and_import_checks_sizes():
    a, _ = _engine()
    assert a.export_program_kv("nope") is None
    _run(a, "t0", list(range(10, 31)), last=True)  # a last turn pins nothing
    assert a.export_program_kv("p") is None
    _run(a, "t1", list(range(40, 61)), program="q")
    kv = a.export_program_kv("q")
    small, _ = _engine(num_blocks=5)
    assert small.import_program_kv(kv) == 0  # does not fit: nothing changes
    small.kv_manager.assert_idle()
    other, _ = _engine(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        other.import_program_kv(kv)
    kv.data = None
    fresh, _ = _engine()
    with pytest.raises(ValueError, match="payload"):
        fresh.import_program_kv(kv)
    a.end_program("q")
    a.kv_manager.assert_idle()


def test_import_shares_blocks_already_cached_on_the_target():
    a, _ = _engine()
    b, _ = _engine()
    prompt = list(range(10, 31))
    first = _run(a, "t0", prompt)
    _run(b, "x", prompt[:12], program=None)  # b caches the first 2 blocks (12 tokens: 2 full + ... computed 15)
    kv = a.export_program_kv("p")
    free_before = b.kv_manager.num_free_blocks
    assert b.import_program_kv(kv) == 6
    assert free_before - b.kv_manager.num_free_blocks == 6  # 3 cached free blocks revived + 3 allocated
    b.end_program("p")
    a.end_program("p")
    b.kv_manager.assert_idle()
    assert first.outputs[0].token_ids


def test_real_model_migrated_kv_gives_the_same_greedy_tokens(smollm2_dir):
    """Two engines of the real model: a program's first turn on A, its KV moved to B, the next turn on B equals
    the next turn computed from scratch, and B found the whole moved prefix in its cache."""
    from pitstop.entrypoints.engine_builder import build_engine

    cfg = dict(model=str(smollm2_dir), dtype="float32", kv_cache_memory="32MiB", max_model_len=512,
               ttl_policy="fixed", ttl_seconds=60.0, scheduling_policy="program-fcfs", num_threads=1)
    a, b, ref = (build_engine(EngineConfig(**cfg)) for _ in range(3))
    params = SamplingParams(temperature=0, max_tokens=12)
    prompt = a.tokenizer("A lighthouse keeper writes in her log: the storm began at dawn and").input_ids
    first = _run(a, "t0", prompt, params=params)
    kv = a.export_program_kv("p")
    assert kv is not None and kv.num_bytes == kv.num_blocks * a.executor.kv_bytes_per_block
    assert b.import_program_kv(kv) == kv.num_blocks
    a.end_program("p")
    nxt = prompt + first.outputs[0].token_ids + b.tokenizer(" Then the wind", add_special_tokens=False).input_ids
    out = _run(b, "t1", nxt, last=True, params=params)
    assert out.num_cached_tokens == kv.num_blocks * 16
    assert out.outputs[0].token_ids == _run(ref, "r", nxt, program=None, params=params).outputs[0].token_ids
    for e in (a, b, ref):
        e.kv_manager.assert_idle()


def test_simulator_migrates_a_waiting_program_off_a_loaded_replica():
    """Two simulated replicas; a router that sends lone requests to replica 0 (program turns: their home). A
    program's first turn pins its KV on 0, a flood of long lone requests loads 0; the migration policy (the one the
    Ray deployment uses) moves the pin to 1 and re-homes the program, whose next turn there hits the moved blocks."""
    from pitstop.sim.cluster import SimRequest
    from pitstop.sim.cost_models import ProfiledCostModel
    from pitstop.sim.cost_models.profiled import FEATURES
    from pitstop.sim.routers import get_router
    from pitstop.sim.routers.program_affinity import ProgramAffinityRouter
    from pitstop.sim.simulator import SimConfig, build_cluster, kv_block_bytes

    class ToZero(ProgramAffinityRouter):
        def route(self, req, replicas, now):
            home = self.home.get(req.program_id) if req.program_id else None
            return home if home is not None else 0

    linear = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))
    cfg = SimConfig(model="smollm2-135m", replicas=2, kv_cache_tokens=8192, max_model_len=2048, ttl_policy="fixed",
                    ttl_seconds=100.0, scheduling_policy="program-fcfs", migration={"load_abs_threshold": 2})
    cluster = build_cluster(cfg, cost_model=linear)
    cluster.router = ToZero()
    cluster.router.reset(2)
    base = list(range(100, 356))  # 256 tokens: 16 blocks
    reqs = [SimRequest("p0", 0.0, 256, 4, lambda: list(base), program_id="p", is_last_turn=False)]
    reqs += [SimRequest(f"lone{i}", 1.0, 64, 200, lambda i=i: [7 + i] * 64) for i in range(6)]
    reqs.append(SimRequest("p1", 3.0, 356, 4, lambda: base + list(range(500, 600)), program_id="p",
                           is_last_turn=True))
    finished = {f.request_id: f for f in cluster.run(reqs)}
    assert cluster.stats.migrations == 1 and cluster.stats.migrated_blocks == 16
    assert cluster.stats.migrated_bytes == 16 * kv_block_bytes(cfg)
    assert finished["p0"].replica == 0 and finished["p1"].replica == 1
    assert finished["p1"].num_cached_tokens == 256
    for rep in cluster.replicas:
        rep.engine.kv_manager.assert_idle()
        assert rep.engine.kv_manager.num_pinned_blocks == 0
    assert get_router("program-affinity").set_home  # the hook the cluster calls


def test_migration_policy_moves_the_largest_fitting_pin_off_the_most_loaded_replica():
    from pitstop.sim.routers.migration import MigrationPolicy, ReplicaMigrationView as V

    pol = MigrationPolicy(load_abs_threshold=2, load_rel_threshold=1.5)
    reps = [V(0, 5, 100, [("a", 10), ("b", 30), ("c", 200)]), V(1, 1, 50, [("d", 5)]), V(2, 2, 80)]
    d = pol.choose(reps)
    assert (d.program_id, d.src, d.dst, d.num_blocks) == ("b", 0, 1, 30)  # "c" does not fit in 50 free blocks
    assert pol.choose([V(0, 3, 100, [("a", 10)]), V(1, 1, 100)]) is None  # 3 - 1 is not > 2
    assert pol.choose([V(0, 9, 100, []), V(1, 0, 100)]) is None  # nothing waiting to move
    assert pol.choose([V(0, 9, 100, [("a", 10)])]) is None  # one replica
    assert pol.choose([V(0, 0, 100, [("a", 10)]), V(1, 0, 100)]) is None  # idle and balanced
