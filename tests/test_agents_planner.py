"""pitstop.agents.planner and task_fetching: plan -> execute -> join with a scripted LLM (a fake async callable
that streams a fixed plan in small chunks: the runtime's control flow is under test, not a model). Tools sleep
0.3 s, so DAG vs sequential timing is asserted with wide margins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pitstop.agents.planner import Planner, PlannerResult
from pitstop.agents.planner_prompts import parse_join
from pitstop.agents.tools import ToolError, ToolRegistry, tool

SLEEP_S = 0.3


def make_tools(ran: list[str]) -> ToolRegistry:
    @tool
    async def search(query: str) -> str:
        """Searches the web.

        Args:
            query: what to look for.
        """
        ran.append(f"search:{query}")
        await asyncio.sleep(SLEEP_S)
        return f"<{query}>"

    @tool
    async def combine(items: list[str], sep: str = "+") -> str:
        """Joins texts."""
        ran.append("combine")
        await asyncio.sleep(SLEEP_S)
        return sep.join(items)

    @tool
    async def fail(reason: str) -> str:
        """Always fails."""
        ran.append("fail")
        raise RuntimeError(reason)

    return ToolRegistry([search, combine, fail])


class Script:
    """A fake LLM: each call streams the next reply of ``replies`` (the last one repeats) in ``chunk``-character
    pieces, ``delay_s`` apart; records the messages it got and when it yielded each chunk (``perf_counter``)."""

    def __init__(self, replies: list[str], chunk: int = 7, delay_s: float = 0.01) -> None:
        self.replies, self.chunk, self.delay_s = replies, chunk, delay_s
        self.calls: list[list[dict[str, str]]] = []
        self.yielded_at: list[list[float]] = []

    async def __call__(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        self.calls.append(messages)
        reply = self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]
        self.yielded_at.append([])
        for i in range(0, len(reply), self.chunk):
            await asyncio.sleep(self.delay_s)
            self.yielded_at[-1].append(time.perf_counter())
            yield reply[i:i + self.chunk]


FAN_IN = ('Thought: four searches at once, then combine.\n1. search("a")\n2. search("b")\n3. search("c")\n'
          '4. search(query="d")\n5. combine([$1, $2, "$3 and $4"], sep="|")\n6. join()\n<END_OF_PLAN>')
ANSWER = "Thought: enough.\nFinal Answer: done"


def run(planner: Planner, question: str = "q?") -> PlannerResult:
    return asyncio.run(planner.run(question))


def test_dag_runs_in_about_the_critical_path_and_substitutes_placeholders() -> None:
    ran: list[str] = []
    res = run(Planner(Script([FAN_IN], chunk=20, delay_s=0.005), make_tools(ran), joiner=Script([ANSWER])))
    assert res.outcome == "answer" and res.answer == "done" and len(res.rounds) == 1
    tasks = res.rounds[0].tasks
    assert [t.idx for t in tasks] == [1, 2, 3, 4, 5] and all(t.ok for t in tasks)
    assert tasks[4].deps == (1, 2, 3, 4)
    assert tasks[4].arguments == {"items": ["<a>", "<b>", "<c> and <d>"], "sep": "|"}
    assert tasks[4].result == "<a>|<b>|<c> and <d>"
    assert tasks[3].arguments == {"query": "d"}
    assert tasks[4].start_s >= max(t.end_s for t in tasks[:4])  # the dependent waited for all four
    span_s = max(t.end_s for t in tasks) - min(t.start_s for t in tasks)
    assert span_s < 0.6 * 5 * SLEEP_S, span_s  # the critical path is 2 x 0.3 s of the 1.5 s sum
    assert sorted(ran[:4]) == ["search:a", "search:b", "search:c", "search:d"] and ran[4] == "combine"


def test_sequential_mode_runs_one_task_at_a_time_in_index_order() -> None:
    res = run(Planner(Script([FAN_IN]), make_tools([]), joiner=Script([ANSWER]), sequential=True))
    tasks = res.rounds[0].tasks
    assert all(t.ok for t in tasks)
    for before, after in zip(tasks, tasks[1:]):
        assert after.start_s >= before.end_s
    span_s = max(t.end_s for t in tasks) - min(t.start_s for t in tasks)
    assert span_s >= 5 * SLEEP_S * 0.95, span_s
    assert tasks[4].result == "<a>|<b>|<c> and <d>"  # same results as the DAG


def test_first_task_starts_before_the_plan_has_finished_streaming() -> None:
    plan = Script([FAN_IN], chunk=5, delay_s=0.02)
    res = run(Planner(plan, make_tools([]), joiner=Script([ANSWER])))
    first_start = res.t0 + res.rounds[0].tasks[0].start_s
    assert len(plan.yielded_at[0]) > 10
    assert first_start < plan.yielded_at[0][-1]  # the last chunk read (the one with join())
    assert res.rounds[0].tasks[0].start_s < res.rounds[0].plan_end_s


def test_failed_dependency_fails_its_dependents_without_running_them() -> None:
    ran: list[str] = []
    plan = ('1. fail("boom")\n2. search("ok")\n3. combine([$1, $2])\n4. search("after $3")\n'
            '5. search("independent")\n6. join()')
    joiner = Script([ANSWER])
    res = run(Planner(Script([plan]), make_tools(ran), joiner=joiner))
    t = {r.idx: r for r in res.rounds[0].tasks}
    assert t[1].error == "tool 'fail' failed: RuntimeError: boom" and t[1].start_s is not None
    assert t[2].ok and t[5].ok
    assert t[3].error == "not run: dependency $1 failed" and t[3].start_s is None and t[3].arguments is None
    assert t[4].error == "not run: dependency $3 failed" and t[4].start_s is None
    assert "combine" not in ran and "search:after $3" not in ran and not any("after" in r for r in ran)
    joiner_input = joiner.calls[0][-1]["content"]
    assert "1. fail -> error: tool 'fail' failed: RuntimeError: boom" in joiner_input
    assert "3. combine -> error: not run: dependency $1 failed" in joiner_input


def test_invalid_arguments_are_a_task_error_for_the_joiner() -> None:
    plan = '1. search(42, "extra")\n2. combine("not a list")\n3. search(nope="x")\n4. join()'
    res = run(Planner(Script([plan]), make_tools([]), joiner=Script([ANSWER])))
    t = res.rounds[0].tasks
    assert "at most 1 positional arguments" in t[0].error
    assert "invalid arguments for tool 'combine'" in t[1].error
    assert "nope: Extra inputs are not permitted" in t[2].error


def test_replan_bound_is_respected() -> None:
    planner_llm = Script(['1. search("x")\n2. join()'])
    joiner = Script(["Thought: not enough.\nReplan: try again"])
    res = run(Planner(planner_llm, make_tools([]), joiner=joiner, max_replans=2))
    assert res.outcome == "replan_limit" and res.answer is None
    assert len(res.rounds) == 3 == len(planner_llm.calls) == len(joiner.calls)
    assert [r.decision.kind for r in res.rounds] == ["replan"] * 3
    assert "No new plan is possible now" in joiner.calls[-1][-1]["content"]
    assert "No new plan is possible now" not in joiner.calls[0][-1]["content"]
    second = planner_llm.calls[1]  # the replan sees the earlier plan, its results and the reason
    assert second[-2] == {"role": "assistant", "content": '1. search("x")\n2. join()'}
    assert "1. search -> <x>" in second[-1]["content"] and "Replan: try again" in second[-1]["content"]


def test_replan_then_answer() -> None:
    joiner = Script(["Replan: need more", ANSWER])
    res = run(Planner(Script(['1. search("x")\n2. join()']), make_tools([]), joiner=joiner, max_replans=1))
    assert res.outcome == "answer" and res.answer == "done" and len(res.rounds) == 2


def test_zero_replans_means_one_plan() -> None:
    res = run(Planner(Script(["1. join()"]), make_tools([]), joiner=Script(["Replan: x"]), max_replans=0))
    assert res.outcome == "replan_limit" and len(res.rounds) == 1 and res.rounds[0].tasks == []


def test_a_bad_plan_line_stops_the_plan_but_earlier_tasks_still_run() -> None:
    plan = '1. search("x")\n2. rm("-rf")\n3. search("y")\n4. join()'
    joiner = Script([ANSWER])
    res = run(Planner(Script([plan]), make_tools([]), joiner=joiner))
    r = res.rounds[0]
    assert [t.idx for t in r.tasks] == [1] and r.tasks[0].ok
    assert "unknown tool 'rm'" in r.plan_error
    assert "the plan stopped here: " in joiner.calls[0][-1]["content"]


def test_the_plan_stream_is_closed_at_join() -> None:
    closed: list[bool] = []

    async def llm(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        try:
            yield '1. search("x")\n2. join()\n'
            yield "chatter the planner must not wait for"
            raise AssertionError("read past join()")
        finally:
            closed.append(True)

    res = run(Planner(llm, make_tools([]), joiner=Script([ANSWER])))
    assert closed == [True] and res.rounds[0].plan_text == '1. search("x")\n2. join()\n'


def test_prompt_lists_the_tools_and_the_grammar_names_them() -> None:
    planner_llm = Script(["1. join()"])
    planner = Planner(planner_llm, make_tools([]), joiner=Script([ANSWER]))
    run(planner, "What is x?")
    system, user = planner_llm.calls[0][0]["content"], planner_llm.calls[0][1]
    assert "- search(query: string): Searches the web." in system
    assert "- combine(items: array, sep?: string): Joins texts." in system
    assert user == {"role": "user", "content": "What is x?"}
    g = planner.grammar()
    assert '"search("' in g and '"combine("' in g and '"sep="' in g


def test_planner_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_replans"):
        Planner(Script([""]), make_tools([]), max_replans=-1)


@pytest.mark.parametrize("reply, kind, text", [
    ("Thought: ok\nFinal Answer: 42", "answer", "42"),
    ("Thought: hmm\nReplan: search more", "replan", "search more"),
    ("just an answer", "answer", "just an answer"),
    ("final answer: Replan: is a word here", "answer", "Replan: is a word here"),
])
def test_parse_join(reply: str, kind: str, text: str) -> None:
    d = parse_join(reply)
    assert (d.kind, d.text) == (kind, text)


def test_a_failing_model_call_propagates_and_cancels_the_running_tasks() -> None:
    ran: list[str] = []

    async def llm(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        yield '1. search("slow")\n'
        await asyncio.sleep(0.05)
        raise ConnectionError("endpoint went away")

    async def main() -> None:
        with pytest.raises(ConnectionError, match="went away"):
            await Planner(llm, make_tools(ran)).run("q?")
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("plan-task-")] == []

    asyncio.run(main())
    assert ran == ["search:slow"]  # it started, and was cancelled with the round


def test_bind_names_positional_arguments_by_the_schema_order() -> None:
    from pitstop.agents.plan import Placeholder, Task
    from pitstop.agents.task_fetching import bind

    params = make_tools([]).get("combine").parameters
    task = Task(3, "combine", ([Placeholder(1), "x $2 $9"],), {"sep": "$1"}, frozenset({1, 2}))
    assert bind(task, params, {1: "A", 2: "B"}) == {"items": ["A", "x B $9"], "sep": "A"}
    with pytest.raises(ToolError, match="'items' given by position and by name"):
        bind(Task(1, "combine", (["a"],), {"items": ["b"]}), params, {})


def test_submit_needs_the_dependencies_first() -> None:
    from pitstop.agents.plan import Task
    from pitstop.agents.task_fetching import TaskFetchingUnit

    async def main() -> None:
        tfu = TaskFetchingUnit(make_tools([]))
        with pytest.raises(ValueError, match="before one of its dependencies"):
            tfu.submit(Task(2, "search", ("$1",), {}, frozenset({1})))
        tfu.submit(Task(1, "search", ("a",)))
        with pytest.raises(ValueError, match="submitted twice"):
            tfu.submit(Task(1, "search", ("a",)))
        assert [r.result for r in await tfu.wait()] == ["<a>"]

    asyncio.run(main())
