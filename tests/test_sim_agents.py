"""Agent programs in the cluster simulator (``pitstop simulate --workload agents``, ``pitstop.sim.agents``): the
closed loop (next turn = previous finish + tool time, prompt = previous prompt + its output + new tokens), the
same replay as ``pitstop bench agents --backend sim``, program-affinity routing, JCT, the per-program trace tracks,
and agents on a disaggregated cluster. Synthetic programs and the vendored TraceLab sample only."""

from __future__ import annotations

import json

import pytest

from pitstop.bench.agent_engine_replay import run_engine_backend
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.executor.simulated_runner import SimulatedRunner
from pitstop.sim.agents import AgentDriver, agent_summary, prefix_keys
from pitstop.clock import VirtualClock
from pitstop.sim.cluster import Cluster, Replica
from pitstop.sim.cost_models import ProfiledCostModel
from pitstop.sim.cost_models.profiled import FEATURES
from pitstop.sim.disagg import build_disagg_cluster
from pitstop.sim.routers import get_router
from pitstop.sim.simulator import SimConfig, build_cluster, run_cluster
from pitstop.sim.trace_events import program_events
from pitstop.workloads.agent_program import AgentProgram, AgentTurn, finalize

LINEAR = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))
CFG = SimConfig(model="smollm2-135m", replicas=2, router="program-affinity", kv_cache_tokens=4096,
                max_model_len=1024, max_num_batched_tokens=256)


def programs() -> list[AgentProgram]:
    return [
        AgentProgram("a", finalize([AgentTurn(80, 4, "Bash", 0.03), AgentTurn(20, 3, "Read", 0.5),
                                    AgentTurn(17, 2, "Edit", 0.02)])),
        AgentProgram("b", finalize([AgentTurn(130, 2, "Grep", 0.0), AgentTurn(40, 5)])),
        AgentProgram("c", finalize([AgentTurn(50, 3)])),
        AgentProgram("d", finalize([AgentTurn(64, 6, "Bash", 0.2), AgentTurn(33, 2, "Bash", 0.1),
                                    AgentTurn(9, 2)])),
    ]


ARRIVALS = [0.0, 0.01, 0.02, 0.5]


def test_closed_loop_turns_on_a_cluster():
    cluster = build_cluster(CFG, cost_model=LINEAR)
    progs = programs()
    driver = AgentDriver(cluster, progs, ARRIVALS, seed=3, vocab_size=1000)
    first = driver.first_requests()
    assert [r.request_id for r in first] == ["a:0", "b:0", "c:0", "d:0"]
    res, finished = run_cluster(CFG, cluster, first, driver.num_turns_planned)
    assert len(finished) == driver.num_turns_planned == 9
    for prog, rec in zip(progs, driver.records):
        assert rec.done and len(rec.turns) == prog.num_turns
        homes = {cluster.assignment[f"{prog.program_id}:{k}"] for k in range(prog.num_turns)}
        assert len(homes) == 1  # program-affinity: every turn on the first turn's replica
        for k, t in enumerate(rec.turns):
            assert t.prompt_len == prog.prompt_len(k) and t.output_len == prog.turns[k].output_tokens
            assert t.arrival_s <= t.first_scheduled_s <= t.first_token_s <= t.finished_s
            if k:
                assert t.arrival_s == pytest.approx(rec.turns[k - 1].finished_s + prog.turns[k - 1].tool_time_s)
                assert t.cached_tokens > 0  # the previous turn's context was reused on the same replica
    # JCT in the simulator's summary = the replay's program JCTs
    jcts = sorted(r.jct_s for r in driver.records)
    s = res["summary"]
    assert s["num_programs"] == 4 and s["jct_s"]["mean"] == pytest.approx(sum(jcts) / 4)
    assert s["jct_s"]["p99"] <= max(jcts) + 1e-9 and s["jct_s"]["median"] >= min(jcts)
    a = agent_summary(driver, cluster)
    assert a["programs_completed"] == 4 and a["jct_s"]["mean"] == pytest.approx(s["jct_s"]["mean"])
    assert 0 < a["prefix_hit_rate"] < 1
    for rep in cluster.replicas:
        rep.engine.kv_manager.assert_idle()  # programs ended: no pins left


def test_same_replay_as_bench_agents_sim_backend():
    """One replica in the cluster = ``pitstop bench agents``'s virtual-clock engine backend: same per-turn times."""
    econf = EngineConfig(block_size=16, max_num_batched_tokens=256, max_model_len=1024, skip_tokenizer_init=True)
    clk = VirtualClock()
    eng = LLMEngine(econf, executor=SimulatedRunner(LINEAR, clk, vocab_size=1000), clock=clk, num_blocks=128,
                    vocab_size=1000, max_model_len=1024)
    bench_records, _ = run_engine_backend(eng, programs(), ARRIVALS, seed=3, sleep=clk.advance)

    cluster = Cluster(1, get_router("round-robin"),
                      lambda i, c: Replica(i, econf, LINEAR, c, 128, 1000, 1024))
    driver = AgentDriver(cluster, programs(), ARRIVALS, seed=3, vocab_size=1000)
    cluster.run(driver.first_requests())
    for b, s in zip(bench_records, driver.records):
        assert [t.prompt_len for t in b.turns] == [t.prompt_len for t in s.turns]
        assert [t.cached_tokens for t in b.turns] == [t.cached_tokens for t in s.turns]
        assert [t.finished_s for t in s.turns] == pytest.approx([t.finished_s for t in b.turns], abs=1e-6)
        assert s.jct_s == pytest.approx(b.jct_s, abs=1e-6)


def test_agents_on_a_disaggregated_cluster():
    base = build_cluster(CFG, cost_model=LINEAR)
    cluster = build_disagg_cluster(base, 1, CFG.router, {}, CFG.model, 400.0)
    progs = programs()
    driver = AgentDriver(cluster, progs, ARRIVALS, seed=3, vocab_size=1000)
    res, finished = run_cluster(CFG, cluster, driver.first_requests(), driver.num_turns_planned)
    assert res["summary"]["completed"] == 9 and all(r.done for r in driver.records)
    for prog, rec in zip(progs, driver.records):
        for k, t in enumerate(rec.turns):  # exactly the planned tokens, first one from the prefill pool
            assert t.prompt_len == prog.prompt_len(k) and t.output_len == prog.turns[k].output_tokens
    pre, dec = cluster.prefill[0], cluster.decode[0]
    assert len(pre.finished) == 9 and all(f.output_len == 1 for f in pre.finished)
    assert sum(f.output_len for f in dec.finished) == sum(t.output_tokens - 1 for p in progs for t in p.turns)
    for rep in cluster.replicas:
        rep.scheduler.check_kv_accounting()
        rep.engine.kv_manager.assert_idle()


def test_prefix_keys_chain_and_program_trace_tracks():
    p = list(range(1200))
    k = prefix_keys(p, 512)
    assert len(k) == 2 and prefix_keys(p[:1024] + [7] * 50, 512) == k and prefix_keys([9] + p[1:], 512)[0] != k[0]
    cluster = build_cluster(CFG, cost_model=LINEAR)
    driver = AgentDriver(cluster, programs(), ARRIVALS, seed=3, vocab_size=1000)
    cluster.run(driver.first_requests())
    ev = program_events(driver.records, pid=2)
    slices = [e for e in ev if e["ph"] == "X"]
    assert {e["tid"] for e in slices} == {0, 1, 2, 3}  # one track per program
    assert sum(e["name"] == "LLM" for e in slices) == 9
    assert sum(e["name"] == "tool" for e in slices) == 4  # non-final turns with a tool time > 0
    rec = driver.records[0]
    tool = [e for e in slices if e["tid"] == 0 and e["name"] == "tool" and e["args"]["turn"] == 1][0]
    assert tool["dur"] == pytest.approx(0.5e6) and tool["ts"] == pytest.approx(rec.turns[1].finished_s * 1e6)
    red = program_events(driver.records, pid=2, redact=True)
    assert all("prompt_tokens" not in e.get("args", {}) and "tool" not in e.get("args", {}) for e in red)
    assert [e["args"]["name"] for e in red if e["name"] == "thread_name"][:2] == ["program-0", "program-1"]


def test_cli_agents_tracelab(tmp_path):
    from pitstop.cli.main import main
    out = tmp_path / "agents.json"
    assert main(["simulate", "--workload", "agents", "--trace", "tracelab", "--num-programs", "4", "--max-turns", "3",
                 "--program-rate", "2", "--replicas", "2", "--router", "program-affinity",
                 "--scheduling-policy", "program-fcfs", "--ttl-policy", "continuum", "--model", "llama-3.1-8b",
                 "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert set(s["jct_s"]) == {"mean", "median", "p90", "p99"} and s["num_programs"] == 4
    assert s["completed"] == res["agents"]["turns_completed"] == res["workload"]["summary"]["num_turns"]
    assert res["agents"]["programs_completed"] == 4 and "ttft_ms" in s and "tpot_ms" in s
    assert res["programs"][0]["program_id"].startswith("tracelab/")  # CC-BY trace: not redacted
    trace = json.loads((tmp_path / "agents.trace.json").read_text())["traceEvents"]
    prog_pid = [e["pid"] for e in trace if e["name"] == "process_name" and e["args"]["name"] == "programs"]
    assert prog_pid == [2]
    names = {e["name"] for e in trace if e["ph"] == "X" and e["pid"] == 2}
    assert {"LLM", "tool"} <= names <= {"LLM", "tool", "queued"}
