"""The ParallelQA-like task set of ``benchmarks/agent_parallelqa.py`` (issue 16): the generator's DAGs, gold answers
against the tools, the oracle's plans and ReAct turns, and that the planner's DAG scheduling beats sequential ReAct
on a fan-out task with a zero-latency oracle (no engine, no ../shared: durations injected)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pitstop.agents.plan import PlanParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import agent_parallelqa as pqa  # noqa: E402

TASKS = pqa.generate_tasks(40, seed=3)


def test_every_shape_is_generated_with_2_to_6_calls_and_a_valid_dag() -> None:
    assert {t.kind for t in TASKS} == set(pqa.KINDS)
    for t in TASKS:
        plan = t.tasks()
        assert 2 <= len(plan) <= 6, t.plan_text
        assert [p.idx for p in plan] == list(range(1, len(plan) + 1))
        assert all(d < p.idx for p in plan for d in p.deps)
        # every call but the last feeds a later one: the answer needs all of them
        used = set().union(*(p.deps for p in plan))
        assert used == set(range(1, len(plan))), t.plan_text
        shape = pqa.dag_shape(plan)
        assert shape.independent == (not t.kind.startswith("chain") or t.kind == "chain_beside"), t.kind


def test_shapes_have_the_expected_structure() -> None:
    by_kind = {t.kind: pqa.dag_shape(t.tasks()) for t in TASKS}
    assert by_kind["fanout5"] == pqa.DagShape(6, 2, 5)
    assert by_kind["fanin2"] == pqa.DagShape(3, 2, 2)
    assert by_kind["fanin3"] == pqa.DagShape(5, 3, 3)
    assert by_kind["two_chains"] == pqa.DagShape(5, 3, 2)
    assert by_kind["chain4"] == pqa.DagShape(4, 4, 1)
    assert by_kind["chain2"] == pqa.DagShape(2, 2, 1)


def test_generation_is_deterministic_in_the_seed() -> None:
    again = pqa.generate_tasks(40, seed=3)
    assert [(t.question, t.plan_text, t.answer) for t in again] == [(t.question, t.plan_text, t.answer) for t in TASKS]
    other = pqa.generate_tasks(40, seed=4)
    assert [t.plan_text for t in other] != [t.plan_text for t in TASKS]


def test_gold_answers_equal_the_tools_results() -> None:
    for t in TASKS:
        _, results = pqa.run_pure(t)
        assert results[-1] == t.answer, (t.question, t.plan_text)


def test_oracle_plans_parse_while_streaming_and_end_at_join() -> None:
    for t in TASKS:
        parser = PlanParser(frozenset(pqa.PURE_TOOLS))
        got = []
        for i in range(0, len(t.plan_text), 5):  # fed in small pieces, as a stream
            got += parser.feed(t.plan_text[i:i + 5])
        got += parser.close()
        assert parser.joined and len(got) == len(t.plan_lines)


def test_the_tools_sleep_the_injected_durations_and_refuse_non_gold_calls() -> None:
    durations = pqa.Durations()
    tools = pqa.make_tools(durations)
    t = next(x for x in TASKS if x.kind == "fanin2")
    t.durations_s = [0.0] * len(t.plan_lines)
    durations.table = pqa.durations_table(t)
    assert len(durations.table) == 3
    with pytest.raises(Exception, match="no duration"):
        asyncio.run(tools.call("lookup", {"entity": "Avalon", "attribute": "nonsense"}))


def _run(task: pqa.QATask, mode: str, delay_s: float) -> pqa.RunRow:
    durations = pqa.Durations()
    tools = pqa.make_tools(durations)
    task.durations_s = [delay_s] * len(task.plan_lines)
    durations.table = pqa.durations_table(task)
    model = pqa.OracleChatModel(pqa.Oracle([task], tools))
    return asyncio.run(pqa.run_mode(mode, task, model, tools))


@pytest.mark.parametrize("kind", ["fanout3", "two_chains", "chain3", "chain_beside", "fanin3"])
def test_every_mode_reaches_the_gold_answer(kind: str) -> None:
    task = next(x for x in TASKS if x.kind == kind)
    for mode in pqa.MODES:
        row = _run(task, mode, 0.0)
        assert row.correct and row.error is None, (mode, row)
        assert row.tool_calls == len(task.plan_lines)
        assert row.llm_calls == (len(task.plan_lines) + 1 if mode == "react" else 2)


def test_planner_beats_sequential_react_on_a_fan_out_task() -> None:
    task = next(x for x in TASKS if x.kind == "fanout5")  # 5 independent lookups, then compare: depth 2 of 6 calls
    planner = _run(task, "planner", 0.2)
    react = _run(task, "react", 0.2)
    seq = _run(task, "planner_sequential", 0.2)
    assert planner.correct and react.correct and seq.correct
    # ideal: 0.4 s vs 1.2 s (3x); 1.5x leaves room for a slow machine
    assert react.e2e_s >= 1.5 * planner.e2e_s, (planner.e2e_s, react.e2e_s)
    assert seq.e2e_s >= 1.5 * planner.e2e_s, (planner.e2e_s, seq.e2e_s)
    assert react.tool_wall_s >= 1.5 * planner.tool_wall_s, (planner.tool_wall_s, react.tool_wall_s)
    assert planner.e2e_s >= 0.4  # the critical path's two calls did sleep


def test_summary_groups_speedups_and_structure() -> None:
    tasks = pqa.generate_tasks(4, seed=0)
    rows = [pqa.RunRow(t.id, t.kind, m, e2e, 0.0, 1, 0.0, 0.0, 1, 0, 0, 0, t.answer, True)
            for t in tasks for m, e2e in (("planner", 1.0), ("react", 2.0), ("planner_sequential", 1.5))]
    s = pqa.summarize(tasks, rows)
    assert s["speedup_planner_vs_react"]["all"]["ratio_of_means"] == pytest.approx(2.0)
    n_chains = sum(not pqa.dag_shape(t.tasks()).independent for t in tasks)
    assert s["speedup_planner_vs_react"]["chains"]["tasks"] == n_chains == 1
    assert s["target"]["met"] is True
    assert s["plans"]["independent"]["width_range"][0] >= 2


def test_a_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="GPL-2.0"):
        pqa.load_trace_durations(["all_images_haiku"], tmp_path / "absent.csv")


def test_union_of_tool_intervals() -> None:
    assert pqa.union_s([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]) == pytest.approx(3.0)
    assert pqa.union_s([]) == 0.0
