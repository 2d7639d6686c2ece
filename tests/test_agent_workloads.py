"""Agent-program workloads: the agentcgroup and TraceLab loaders, scaling and clipping (no model needed)."""

from __future__ import annotations

import csv
import json

import pytest

from pitstop.workloads.agent_program import (
    AgentProgram, AgentTurn, finalize, poisson_program_arrivals, sample_programs, scale_programs, summarize_programs,
)
from pitstop.workloads.agentcgroup import agentcgroup_path, load_agentcgroup, output_rules
from pitstop.workloads.tracelab import TRACELAB_ROUNDS, load_tracelab, tracelab_path

LLM_COLS = ["dataset", "task", "attempt", "call_idx", "message_id", "model", "is_sidechain", "t_request_s",
            "t_response_s", "llm_latency_s", "prompt_tokens", "uncached_input_tokens", "cache_creation_tokens",
            "cache_read_tokens", "output_tokens", "output_chars", "n_tool_calls", "tool_names", "tool_time_max_s",
            "tool_time_sum_s", "gap_to_next_request_s"]


def _write_synthetic(folder):
    """A made-up two-session trace in the agentcgroup column layout (no upstream data)."""
    rows = [
        # dataset, task, attempt, idx, side, t_req, t_resp, prompt, out_tokens, out_chars, tools, tool_max, gap
        ("all_images_local", "a", "attempt_1", 0, 0, 0.0, 1.0, 1000, 50, 200, "Bash|Read", 2.5, 2.5),
        ("all_images_local", "a", "attempt_1", 1, 0, 3.5, 4.0, 1100, 20, 80, "Task", 30.0, 0.05),
        ("all_images_local", "a", "attempt_1", 2, 1, 4.05, 5.0, 500, 10, 40, "Grep", 0.1, 0.1),  # sub-agent
        ("all_images_local", "a", "attempt_1", 3, 0, 34.0, 35.0, 1110, 30, 120, "", 0.0, ""),  # shrunk context
        ("all_images_haiku", "b", "attempt_1", 1, 0, 2.0, 3.0, 2300, 2, 400, "Edit", 0.03, 0.03),
        ("all_images_haiku", "b", "attempt_1", 0, 0, 0.0, 1.0, 2000, 2, 800, "Read", 1.0, 1.0),
        ("all_images_haiku", "b", "attempt_1", 2, 0, 3.1, 4.0, 0, 0, 100, "", 0.0, ""),  # <synthetic> error row
    ]
    with open(folder / "llm_calls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LLM_COLS)
        for ds, task, att, idx, side, tq, tr, prompt, out, chars, tools, tmax, gap in rows:
            w.writerow([ds, task, att, idx, f"m{idx}", "x", side, tq, tr, tr - tq, prompt, 0, 0, 0, out, chars,
                        len(tools.split("|")) if tools else 0, tools, tmax, tmax, gap])
    with open(folder / "tool_calls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "task", "attempt", "tool_call_id", "tool", "t_start_s", "duration_s", "source"])
        w.writerow(["all_images_local", "a", "attempt_1", "t1", "Bash", 1.0, 1.0, "x"])
        w.writerow(["all_images_local", "a", "attempt_1", "t2", "Read", 1.0, 2.5, "x"])


def test_agentcgroup_parser_on_synthetic_csv(tmp_path):
    _write_synthetic(tmp_path)
    progs = {p.program_id: p for p in load_agentcgroup(tmp_path)}
    a = progs["all_images_local/a/attempt_1"]
    assert [t.new_input_tokens for t in a.turns] == [1000, 50, 1]  # 1100-1000-50; 1110-1100-20 < 1 -> 1
    assert [t.output_tokens for t in a.turns] == [50, 20, 30]  # local: output_tokens as given
    assert [t.tool_name for t in a.turns] == ["Read", "Task", None]  # longest in tool_calls.csv; last: none
    assert [t.tool_time_s for t in a.turns] == [2.5, 30.0, 0.0]  # tool_time_max_s (Task covers the sub-agent)
    b = progs["all_images_haiku/b/attempt_1"]  # sorted by call_idx, synthetic row dropped
    assert [t.output_tokens for t in b.turns] == [200, 100]  # haiku: output_chars / 4
    assert [t.new_input_tokens for t in b.turns] == [2000, 100]
    assert b.prompt_len(1) == 2300
    gap = {p.program_id: p for p in load_agentcgroup(tmp_path / "llm_calls.csv", tool_time="gap")}
    assert gap["all_images_local/a/attempt_1"].turns[1].tool_time_s == pytest.approx(30.0)  # 34.0 - 4.0
    only = load_agentcgroup(tmp_path, datasets=("all_images_haiku",))
    assert [p.program_id for p in only] == ["all_images_haiku/b/attempt_1"]


def test_placeholder_outputs_are_found_from_the_rows_not_the_dataset_name(tmp_path):
    """A dataset the loader has never heard of, with Claude-API placeholder output_tokens: chars / 4 is used,
    and the rule with its reason travels with each program (bench agents puts it in the workload summary)."""
    _write_synthetic(tmp_path)
    text = (tmp_path / "llm_calls.csv").read_text()
    (tmp_path / "llm_calls.csv").write_text(text.replace("all_images_haiku", "claude_api_2027")
                                            .replace("all_images_local", "glm_local_2027"))
    progs = {p.program_id: p for p in load_agentcgroup(tmp_path)}
    api = progs["claude_api_2027/b/attempt_1"]
    assert [t.output_tokens for t in api.turns] == [200, 100]  # output_chars / 4, as for all_images_haiku
    rule = api.meta["output_rule"]
    assert rule["rule"] == "output_chars/4" and rule["median_chars_per_token"] == 300.0
    assert "placeholder" in rule["reason"]
    local = progs["glm_local_2027/a/attempt_1"]
    assert [t.output_tokens for t in local.turns] == [50, 20, 30]
    assert local.meta["output_rule"]["rule"] == "output_tokens"
    assert output_rules([{"dataset": "x", "output_chars": "", "output_tokens": "1"}])["x"].rule == "output_tokens"


def test_renamed_copy_of_the_real_trace_gives_the_same_workload(tmp_path):
    try:
        path = agentcgroup_path()
    except FileNotFoundError:
        pytest.skip("agentcgroup trace (GPL-2.0, not vendored) not present")
    renamed = tmp_path / "llm_calls.csv"  # a temporary copy, deleted with tmp_path (never in the repository)
    renamed.write_text(path.read_text().replace("all_images_haiku", "run_a").replace("all_images_local", "run_b"))
    (tmp_path / "tool_calls.csv").write_text(path.with_name("tool_calls.csv").read_text()
                                             .replace("all_images_haiku", "run_a").replace("all_images_local", "run_b"))
    orig, copy = load_agentcgroup(path), load_agentcgroup(tmp_path)
    assert summarize_programs(copy) == summarize_programs(orig)
    assert {p.meta["output_rule"]["rule"] for p in copy if p.meta["dataset"] == "run_a"} == {"output_chars/4"}
    assert {p.meta["output_rule"]["rule"] for p in copy if p.meta["dataset"] == "run_b"} == {"output_tokens"}


def test_agentcgroup_real_trace_if_present():
    try:
        path = agentcgroup_path()
    except FileNotFoundError:
        pytest.skip("agentcgroup trace (GPL-2.0, not vendored) not present")
    progs = load_agentcgroup(path)
    assert len(progs) == 166
    assert sum(p.num_turns for p in progs) > 6000
    assert all(p.turns[-1].tool_time_s == 0 and p.turns[-1].tool_name is None for p in progs)
    assert all(t.new_input_tokens >= 1 and t.output_tokens >= 1 for p in progs for t in p.turns)


def test_tracelab_vendored_csv_and_jsonl():
    progs = load_tracelab()
    assert len(progs) == 48 and sum(p.num_turns for p in progs) == 303
    rows = list(csv.DictReader(open(tracelab_path())))
    first = [r for r in rows if r["session_id"] == rows[0]["session_id"]]
    p0 = progs[0]
    assert p0.turns[0].new_input_tokens == int(first[0]["prefix_len"]) + int(first[0]["input_len"])
    assert p0.turns[1].new_input_tokens == int(first[1]["input_len"])
    assert p0.turns[0].tool_time_s == pytest.approx(float(first[0]["tool_wait_after_ms"]) / 1000)
    # cumulative-consistent example: prefix_len of round k == previous prompt + output
    assert p0.prompt_len(1) - p0.turns[1].new_input_tokens == int(first[1]["prefix_len"])
    rounds = load_tracelab(tracelab_path(TRACELAB_ROUNDS))
    assert len(rounds) == 2 and sum(p.num_turns for p in rounds) == 19
    recs = [json.loads(x) for x in open(tracelab_path(TRACELAB_ROUNDS))]
    claude = [r for r in recs if r["session_id"] == rounds[0].program_id.split("/", 1)[1]]
    assert rounds[0].turns[0].new_input_tokens == claude[0]["input_tokens_total"]
    assert rounds[0].turns[0].tool_name == "WebSearch"  # the longer of Bash / WebSearch
    assert rounds[0].turns[0].tool_time_s == pytest.approx(19.291)


def test_scale_and_clip_to_context():
    turns = finalize([AgentTurn(1000, 100, "Bash", 10.0), AgentTurn(200, 100, "Read", 1.0),
                      AgentTurn(400, 100, "Bash", 2.0), AgentTurn(500, 100, "Edit", 3.0)])
    prog = AgentProgram("p", turns)
    assert prog.prompt_len(2) == 1000 + 100 + 200 + 100 + 400
    scaled, info = scale_programs([prog], token_scale=0.1, time_scale=0.5, max_model_len=200)
    s = scaled[0]
    assert [t.new_input_tokens for t in s.turns] == [100, 20, 40]  # turn 3 (ctx 200 + 60 > 200) cut
    assert [t.tool_time_s for t in s.turns] == [5.0, 0.5, 0.0]  # last kept turn is final: no tool
    assert s.turns[-1].tool_name is None
    assert info.turns_cut_by_context == 1 and info.programs_cut_by_context == 1 and info.turns_out == 3
    assert s.context_len() <= 200
    capped, info2 = scale_programs([prog], 0.1, 0.5, 10_000, max_turns=2, max_tool_time_s=1.0)
    assert capped[0].num_turns == 2 and info2.turns_cut_by_max_turns == 2
    assert capped[0].turns[0].tool_time_s == 1.0
    big, info3 = scale_programs([prog], 1.0, 1.0, 512)  # first turn alone does not fit: clipped
    assert info3.first_turns_clipped == 1 and big[0].context_len() <= 512
    assert summarize_programs(scaled)["num_turns"] == 3


def test_sampling_and_arrivals_are_seeded():
    progs = [AgentProgram(f"p{i}", finalize([AgentTurn(10, 2), AgentTurn(3, 2)])) for i in range(10)]
    assert [p.program_id for p in sample_programs(progs, 4, seed=1)] == \
        [p.program_id for p in sample_programs(progs, 4, seed=1)]
    assert len({p.program_id for p in sample_programs(progs, 15, seed=0)}) == 15  # with replacement, ids unique
    a = poisson_program_arrivals(50, 2.0, seed=3)
    assert a == poisson_program_arrivals(50, 2.0, seed=3) and a[0] == 0.0
    assert all(x < y for x, y in zip(a, a[1:]))
    assert 10 < a[-1] < 50  # mean gap 0.5 s
