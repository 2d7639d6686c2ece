"""``pitstop bench agents``: replays through the in-process engine (paged echo executor, and a tiny random
model through the CLI), metrics consistency, prompts that grow exactly like an agent's context."""

from __future__ import annotations

import json
import math

import pytest

from fake_executor import PagedEchoExecutor
from pitstop.bench.agent_engine_replay import run_engine_backend
from pitstop.bench.agents import main, parse_combos, ratios
from pitstop.replay.agent_replay import PromptBuilder, ProgramRecord, TurnRecord
from pitstop.replay.agent_summary import kv_pressure, summarize_run
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.workloads.agent_program import AgentProgram, AgentTurn, finalize


def tiny_programs() -> list[AgentProgram]:
    return [
        AgentProgram("a", finalize([AgentTurn(40, 4, "Bash", 0.03), AgentTurn(6, 3, "Read", 0.01),
                                    AgentTurn(5, 2, "Edit", 0.02)])),
        AgentProgram("b", finalize([AgentTurn(30, 2, "Grep", 0.0), AgentTurn(9, 5)])),
        AgentProgram("c", finalize([AgentTurn(50, 3)])),
    ]


def echo_engine(num_blocks=64, block_size=4, **cfg):
    ex = PagedEchoExecutor(num_blocks, block_size)
    eng = LLMEngine(EngineConfig(block_size=block_size, **cfg), executor=ex, num_blocks=num_blocks,
                    vocab_size=1000, max_model_len=256)
    return eng, ex


@pytest.mark.parametrize("sched,ttl", [("fcfs", "none"), ("program-fcfs", "continuum"), ("plas", "fixed")])
def test_replay_three_programs_through_engine(sched, ttl):
    eng, ex = echo_engine(scheduling_policy=sched, ttl_policy=ttl, ttl_seconds=1.0)
    progs = tiny_programs()
    records, makespan = run_engine_backend(eng, progs, [0.0, 0.01, 0.02], seed=3)
    assert [r.program_id for r in records] == ["a", "b", "c"]
    for prog, rec in zip(progs, records):
        assert rec.done and len(rec.turns) == prog.num_turns
        assert rec.jct_s >= rec.tool_time_s == pytest.approx(prog.total_tool_time_s())
        for k, t in enumerate(rec.turns):
            assert t.prompt_len == prog.prompt_len(k)
            assert t.output_len == prog.turns[k].output_tokens
            assert t.arrival_s <= t.first_scheduled_s <= t.first_token_s <= t.finished_s
            if k:  # the next turn waits the tool time after the previous one finished
                assert t.arrival_s == pytest.approx(rec.turns[k - 1].finished_s + prog.turns[k - 1].tool_time_s)
    s = summarize_run(records, makespan, eng.stats(), 64 * 4)
    assert s["programs_completed"] == 3 and s["turns_completed"] == s["turns_planned"] == 6
    assert s["prompt_tokens"] == sum(p.prompt_len(k) for p in progs for k in range(p.num_turns))
    assert s["computed_prompt_tokens"] + s["cached_prompt_tokens"] >= s["prompt_tokens"]
    assert 0 < s["prefix_hit_rate"] < 1  # later turns reuse their program's context (plenty of KV here)
    assert s["jct_s"]["mean"] >= s["jct_minus_tool_time_s"]["mean"] > 0
    assert not eng.has_unfinished_requests()
    eng.scheduler.check_kv_accounting()


def test_prompts_extend_previous_prompt_and_output():
    prog = AgentProgram("x", finalize([AgentTurn(5, 2), AgentTurn(3, 1)]))
    b = PromptBuilder(prog, seed=0, vocab_size=1000)
    p0 = b.next_prompt(5)
    b.add_output([7, 8])
    p1 = b.next_prompt(3)
    assert p1[:7] == p0 + [7, 8] and len(p1) == 10
    again = PromptBuilder(prog, seed=0, vocab_size=1000).next_prompt(5)
    assert again == p0  # seeded per program
    assert PromptBuilder(prog, seed=1, vocab_size=1000).next_prompt(5) != p0


def test_summary_reprefill_and_kv_pressure_by_hand():
    rec = ProgramRecord("p", 0.0, 2, turns=[
        TurnRecord(0, 100, 100, 10, output_len=10, arrival_s=0.0, first_scheduled_s=0.5, first_token_s=1.0,
                   finished_s=2.0, cached_tokens=0, computed_prompt_tokens=100, tool_time_s=1.0),
        TurnRecord(1, 130, 20, 5, output_len=5, arrival_s=3.0, first_scheduled_s=3.0, first_token_s=3.5,
                   finished_s=4.0, cached_tokens=64, computed_prompt_tokens=66),
    ])
    s = summarize_run([rec], 4.0, {"pin_hits": 1, "num_running": 0}, capacity_tokens=100)
    assert s["jct_s"]["mean"] == 4.0 and s["jct_minus_tool_time_s"]["mean"] == 3.0
    assert s["reprefilled_tokens"] == 46  # 66 computed - 20 new (turn 0: its whole prompt is new)
    assert s["prefix_hit_rate"] == pytest.approx(64 / 230)
    assert s["queue_delay_s"]["mean"] == pytest.approx(0.25) and s["pin_stats"] == {"pin_hits": 1}
    kv = kv_pressure([rec], 100, 4.0)
    assert kv["peak_live_context_tokens"] == 135
    assert kv["mean_live_context_tokens"] == pytest.approx((110 * 3 + 135 * 1) / 4)
    r = ratios({"base": {"summary": s}, "other": {"summary": {**s, "jct_s": {**s["jct_s"], "mean": 2.0},
                                                             "reprefilled_tokens": 23}}})
    assert r["other"]["jct_mean_speedup"] == 2.0 and r["other"]["reprefilled_tokens_reduction"] == 2.0
    assert parse_combos("fcfs+none, plas+continuum,priority") == [("fcfs", "none"), ("plas", "continuum"),
                                                                   ("priority", "none")]


def test_timeout_aborts_and_balances():
    eng, _ = echo_engine()
    progs = [AgentProgram("slow", finalize([AgentTurn(20, 2, "Bash", 5.0), AgentTurn(5, 2)]))]
    records, _ = run_engine_backend(eng, progs, [0.0], timeout_s=0.2)
    assert not records[0].done and records[0].jct_s is None
    assert summarize_run(records, 0.2)["programs_completed"] == 0
    eng.scheduler.check_kv_accounting()


def test_cli_compare_with_tiny_model(tmp_path):
    from model_fixtures import make_tiny_model

    model = make_tiny_model(tmp_path, "llama")
    out = tmp_path / "agents.json"
    rc = main(["--model", str(model), "--dtype", "float32", "--trace", "tracelab", "--num-programs", "3",
               "--min-turns", "2", "--max-turns", "3", "--token-scale", "0.02", "--time-scale", "0.05",
               "--program-rate", "20", "--max-model-len", "128", "--kv-cache-memory", "1MiB",
               "--compare", "fcfs+none,program-fcfs+continuum", "--output-json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"fcfs+none", "program-fcfs+continuum"}
    for run in res["runs"].values():
        s = run["summary"]
        assert s["programs_completed"] == 3 and s["turns_completed"] == s["turns_planned"]
        assert all(p["jct_s"] >= p["tool_time_s"] for p in run["programs"])
    assert math.isfinite(res["ratios"]["program-fcfs+continuum"]["jct_mean_speedup"])
    assert out.with_suffix(".png").stat().st_size > 0
    assert res["workload"]["scale"]["token_scale"] == 0.02


@pytest.mark.timeout(240)
def test_http_replay_against_live_server(tmp_path_factory, smollm2_dir):
    from transformers import AutoTokenizer

    from pitstop.bench.agent_http_replay import run_http_backend
    from server_helpers import API_KEY, shared_server

    server = shared_server(tmp_path_factory.mktemp("server"))
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    progs = [AgentProgram("http-a", finalize([AgentTurn(40, 3, "Bash", 0.05), AgentTurn(8, 3, "Read", 0.0),
                                              AgentTurn(6, 2)])),
             AgentProgram("http-b", finalize([AgentTurn(35, 2, "Grep", 0.02), AgentTurn(5, 2)]))]
    records, wall, info = run_http_backend(server.base_url, "SmolLM2-135M-Instruct", progs, [0.0, 0.05],
                                           len(tok), seed=0, tokenizer=tok, api_key=API_KEY)
    s = summarize_run(records, wall)
    assert s["programs_completed"] == 2 and s["turns_completed"] == 5, s["errors"]
    assert all(r.jct_s >= r.tool_time_s for r in records)
    assert all(t.output_len == p.turns[t.turn].output_tokens for p, r in zip(progs, records) for t in r.turns)
    later = [t for r in records for t in r.turns if t.turn > 0]
    assert all(t.cached_tokens >= 32 for t in later)  # the previous turn's full blocks are reused
    assert info["turns_with_server_token_ids"] + info["turns_retokenized"] == 5
    server.assert_kv_balanced()


def test_cli_sim_backend_compare(tmp_path):
    """The virtual-clock backend (simulator step times, no model): same workload for every combo."""
    out = tmp_path / "sim.json"
    rc = main(["--backend", "sim", "--trace", "tracelab", "--num-programs", "6", "--max-turns", "4",
               "--token-scale", "0.1", "--time-scale", "0.5", "--program-rate", "2", "--max-model-len", "1024",
               "--kv-cache-memory", "32MiB", "--dtype", "bfloat16", "--compare", "fcfs+none,program-fcfs+continuum,plas+fixed",
               "--ttl-seconds", "2", "--output-json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    plans = {name: [(p["program_id"], [(t["prompt_len"], t["new_tokens"]) for t in p["turns"]])
                    for p in run["programs"]] for name, run in res["runs"].items()}
    assert len({json.dumps(v) for v in plans.values()}) == 1  # identical workload in every run
    for run in res["runs"].values():
        s = run["summary"]
        assert s["programs_completed"] == 6 and s["turns_completed"] == s["turns_planned"]
        assert s["kv"]["kv_capacity_tokens"] > 0
    assert set(res["ratios"]) == {"program-fcfs+continuum", "plas+fixed"}


def test_cli_sim_backend_with_speculation(tmp_path):
    """--speculative-config reaches the engine (here the simulator's acceptance model) and its counters the JSON."""
    out = tmp_path / "spec.json"
    rc = main(["--backend", "sim", "--trace", "tracelab", "--num-programs", "3", "--max-turns", "3",
               "--token-scale", "0.1", "--time-scale", "0.5", "--program-rate", "2", "--max-model-len", "1024",
               "--kv-cache-memory", "32MiB", "--dtype", "bfloat16", "--output-json", str(out), "--quiet",
               "--speculative-config", '{"method": "simulated", "acceptance_rate": 0.6, "draft_budget": "none"}'])
    assert rc == 0
    (run,) = json.loads(out.read_text())["runs"].values()
    spec = run["summary"]["spec_decode"]
    assert spec["spec_num_verifies"] > 0 and 0 < spec["spec_num_accepted_tokens"] < spec["spec_num_draft_tokens"]
    with pytest.raises(SystemExit):
        main(["--backend", "sim", "--speculative-config", '{"method": "nope"}'])


def test_records_of_the_gpl_trace_are_redacted():
    from pitstop.replay.agent_summary import TRACE_DERIVED_TURN_FIELDS, records_json

    rec = ProgramRecord("all_images_local/task/attempt_1", 0.0, 1, turns=[
        TurnRecord(0, 100, 100, 10, output_len=10, tool_name="Bash", arrival_s=0.0, first_scheduled_s=0.1,
                   first_token_s=0.2, finished_s=0.5, computed_prompt_tokens=100)], stats={"pin_tool": "Bash"})
    red = records_json([rec], redact=True)[0]
    assert red["program_id"] == "program-0" and red["tool_time_s"] is None and "pin_tool" not in red["stats"]
    assert not set(TRACE_DERIVED_TURN_FIELDS) & set(red["turns"][0]) and red["turns"][0]["finished_s"] == 0.5
    assert records_json([rec])[0]["turns"][0]["prompt_len"] == 100


@pytest.mark.parametrize("dtype,kv,ok", [("float32", "64MiB", False), ("bfloat16", "64MiB", True),
                                         ("float32", "128MiB", True)])
def test_simulated_kv_is_sized_by_dtype_and_checked_like_the_real_engine(dtype, kv, ok):
    """The simulator's KV capacity is the real engine's for the same flags (dtype included), and the same flags
    fail the same way (issue 20: float32 + 64MiB held 2,912 simulated tokens, the bf16 figure)."""
    from pitstop.bench.agents import build_parser, build_sim_engine
    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine

    args = build_parser().parse_args(["--backend", "sim", "--dtype", dtype, "--kv-cache-memory", kv,
                                      "--max-model-len", "2048"])
    cfg = EngineConfig(model=args.model, dtype=dtype, kv_cache_memory=kv, max_model_len=2048, num_threads=1)
    if ok:
        sim, _ = build_sim_engine(args, "fcfs", "none")
        real = build_engine(cfg)
        assert sim.kv_manager.num_blocks == real.kv_manager.num_blocks
        return
    with pytest.raises(ValueError) as real_err:
        build_engine(cfg)
    with pytest.raises(ValueError) as sim_err:
        build_sim_engine(args, "fcfs", "none")
    assert str(sim_err.value) == str(real_err.value)
    assert "holds 1456 tokens" in str(sim_err.value)
