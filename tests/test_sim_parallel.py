"""Replicas in parallel processes (``pitstop.sim.parallel``): only for routers that read no replica state, and then
the same result as one process, to the last bit."""

from __future__ import annotations

import pytest

from pitstop.sim.parallel import partitionable, run_in_processes
from pitstop.sim.simulator import SimConfig, build_cluster, simulate
from pitstop.sim.workload import WorkloadOptions, build_sim_workload

CFG = dict(model="llama-3.1-8b", hardware="H100-SXM", replicas=3, kv_cache_tokens=40_000, max_model_len=32_768,
           record_steps=True)


def _workload(n=60):
    reqs, _ = build_sim_workload("mooncake", WorkloadOptions(num_requests=n, time_scale=0.05, length_scale=0.25),
                                 128256, 32_768)
    return reqs


def _finished(cluster):
    return [(f.request_id, f.replica, f.first_token_s, f.finish_s, f.num_cached_tokens, f.num_preemptions,
             f.token_times_s) for r in cluster.replicas for f in r.finished]


def test_processes_give_the_single_process_result_bit_for_bit():
    reqs = _workload()
    one, c1 = simulate(SimConfig(router="round-robin", **CFG), reqs)
    two, c2 = simulate(SimConfig(router="round-robin", **CFG), reqs, processes=2)
    assert one["summary"] == two["summary"] and one["replicas"] == two["replicas"]
    assert one["summary"]["completed"] == len(reqs) and sum(r["preemptions"] for r in one["replicas"]) > 0
    for k in ("events", "steps", "sim_time_s"):
        assert one["sim"][k] == two["sim"][k]
    assert len(two["sim"]["process_cpu_s"]) == 2 and "process_cpu_s" not in one["sim"]
    assert _finished(c1) == _finished(c2) and c1.assignment == c2.assignment
    assert [r.steps for r in c1.replicas] == [r.steps for r in c2.replicas]  # the trace's slices too


def test_finished_order_is_the_event_order_of_one_process():
    reqs = _workload(30)
    c1 = build_cluster(SimConfig(router="round-robin", **CFG))
    c2 = build_cluster(SimConfig(router="round-robin", **CFG))
    a, b = c1.run(reqs), run_in_processes(c2, reqs, 3)
    assert [f.request_id for f in a] == [f.request_id for f in b]


def test_only_state_independent_routers_are_partitioned():
    reqs = _workload(20)
    ll = build_cluster(SimConfig(router="least-loaded", **CFG))
    assert not partitionable(ll) and partitionable(build_cluster(SimConfig(router="round-robin", **CFG)))
    with pytest.raises(ValueError):
        run_in_processes(ll, reqs, 2)
    res, _ = simulate(SimConfig(router="least-loaded", **CFG), reqs, processes=2)  # falls back to one process
    assert res["summary"]["completed"] == len(reqs) and "process_cpu_s" not in res["sim"]
