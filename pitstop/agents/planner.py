"""An LLMCompiler-style planner: the model writes a plan of tool calls (``pitstop.agents.plan``), the task fetching
unit runs them as a DAG while the plan still streams (``pitstop.agents.task_fetching``), and a joiner (another
model call) answers from the results or asks for a new plan, at most ``max_replans`` times.

Source: Kim et al., "An LLM Compiler for Parallel Function Calling", ICML 2024 (arXiv 2312.04511): planner,
task fetching unit, executor, joiner and dynamic replanning. pitstop's own code.

The model is an async callable ``llm(messages) -> AsyncIterator[str]`` of text deltas (OpenAI-style messages), so
pitstop's engine, an OpenAI endpoint or a script plugs in. ``Planner.grammar()`` is the Lark grammar that keeps a
plan in format, for an ``llm`` that can constrain its output (llguidance).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from pitstop.agents.plan import PlanError, PlanParser, plan_grammar
from pitstop.agents.planner_prompts import (JoinDecision, Message, joiner_messages, parse_join, planner_messages,
                                            results_text)
from pitstop.agents.task_fetching import TaskFetchingUnit, TaskRecord
from pitstop.agents.tools import ToolRegistry

LLM = Callable[[list[Message]], AsyncIterator[str]]
"""A model call: messages -> its reply as text deltas."""


@dataclass
class RoundRecord:
    """One plan -> execute -> join round. Times are seconds since the run's start (``PlannerResult.t0``).

    Attributes:
        plan_start_s, plan_end_s: the planner call's start, and when its last consumed chunk arrived (the stream
            is closed at ``join()`` / ``<END_OF_PLAN>``).
        plan_error: why parsing stopped early (a ``PlanError`` message): the tasks before it still ran.
        tasks_end_s: when the last task finished.
        join_start_s, join_end_s: the joiner call.
    """

    plan_text: str = ""
    plan_start_s: float = 0.0
    plan_end_s: float = 0.0
    plan_error: str | None = None
    tasks: list[TaskRecord] = field(default_factory=list)
    tasks_end_s: float = 0.0
    join_text: str = ""
    join_start_s: float = 0.0
    join_end_s: float = 0.0
    decision: JoinDecision | None = None


@dataclass
class PlannerResult:
    """The run's outcome: ``answer`` (the joiner's final answer in ``answer``) or ``replan_limit`` (the joiner
    still asked for a new plan after ``max_replans`` replans; ``answer`` is None). ``t0``: the clock value
    (seconds) every record's times count from; ``total_s``: the run's wall time (seconds)."""

    outcome: Literal["answer", "replan_limit"]
    answer: str | None
    rounds: list[RoundRecord]
    t0: float
    total_s: float


class Planner:
    """Plan -> execute -> join, replanning at most ``max_replans`` times.

    Args:
        llm: the planner's model call.
        tools: the tools a plan may call (names must be Python identifiers for the plan syntax).
        joiner: the joiner's model call (default ``llm``).
        max_replans: new plans allowed after the first (so at most ``max_replans + 1`` plans).
        sequential: run each plan's tasks one at a time in index order (the baseline), not as a DAG.
        clock: seconds (monotonic), for the records.

    Raises:
        ValueError: ``max_replans`` < 0, or a tool name that is not a Python identifier.
    """

    def __init__(self, llm: LLM, tools: ToolRegistry, *, joiner: LLM | None = None, max_replans: int = 2,
                 sequential: bool = False, clock: Callable[[], float] = time.perf_counter) -> None:
        if max_replans < 0:
            raise ValueError(f"max_replans must be >= 0, got {max_replans}")
        if bad := [n for n in tools.names() if not n.isidentifier()]:
            raise ValueError(f"tool name {bad[0]!r} cannot be called in a plan (not a Python identifier)")
        self.llm, self.joiner = llm, joiner or llm
        self.tools, self.max_replans, self.sequential, self.clock = tools, max_replans, sequential, clock

    def grammar(self) -> str:
        """The Lark grammar (llguidance) of a plan over these tools; ``plan_grammar``'s errors."""
        return plan_grammar({t.name: list(t.parameters.get("properties", {})) for t in self.tools})

    async def run(self, question: str) -> PlannerResult:
        """Answers ``question``; model and tool failures inside a round become records, not exceptions
        (an exception raised by ``llm`` / ``joiner`` itself propagates, after the round's tasks are cancelled)."""
        t0 = self.clock()
        history: list[Message] = []
        rounds: list[RoundRecord] = []
        for n in range(self.max_replans + 1):
            rec = await self._round(planner_messages(question, list(self.tools), history), t0)
            decision = await self._join(rec, question, last_round=n == self.max_replans, t0=t0)
            rounds.append(rec)
            if decision.kind == "answer":
                return PlannerResult("answer", decision.text, rounds, t0, self.clock() - t0)
            history += [{"role": "assistant", "content": rec.plan_text},
                        {"role": "user", "content": f"Results:\n{results_text(rec.tasks, rec.plan_error)}\n\n"
                                                    f"Replan: {decision.text}\nWrite a new plan, numbered "
                                                    f"from 1; earlier results are not $N any more."}]
        return PlannerResult("replan_limit", None, rounds, t0, self.clock() - t0)

    async def _round(self, messages: list[Message], t0: float) -> RoundRecord:
        rec = RoundRecord(plan_start_s=self.clock() - t0)
        tfu = TaskFetchingUnit(self.tools, sequential=self.sequential, clock=self.clock, t0=t0)
        parser = PlanParser(frozenset(self.tools.names()))
        try:
            rec.plan_text = await self._stream_plan(messages, parser, tfu, rec)
            rec.plan_end_s = self.clock() - t0
            self._feed(parser, None, tfu, rec)
            rec.tasks = await tfu.wait()
        finally:
            await tfu.cancel()
        rec.tasks_end_s = self.clock() - t0
        return rec

    async def _stream_plan(self, messages: list[Message], parser: PlanParser, tfu: TaskFetchingUnit,
                           rec: RoundRecord) -> str:
        """Reads the plan, submitting each task as its line completes; stops reading once the plan is done."""
        text: list[str] = []
        stream = self.llm(messages)
        try:
            async for chunk in stream:
                text.append(chunk)
                self._feed(parser, chunk, tfu, rec)
                if parser.done:
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return "".join(text)

    @staticmethod
    def _feed(parser: PlanParser, chunk: str | None, tfu: TaskFetchingUnit, rec: RoundRecord) -> None:
        """``chunk`` into the parser (None: the plan ended), its complete tasks into the fetching unit."""
        if parser.done and chunk is not None:
            return
        try:
            for task in parser.feed(chunk) if chunk is not None else parser.close():
                tfu.submit(task)
        except PlanError as e:
            rec.plan_error = str(e)

    async def _join(self, rec: RoundRecord, question: str, last_round: bool, t0: float) -> JoinDecision:
        rec.join_start_s = self.clock() - t0
        msgs = joiner_messages(question, rec.plan_text, results_text(rec.tasks, rec.plan_error), last_round)
        rec.join_text = "".join([chunk async for chunk in self.joiner(msgs)])
        rec.join_end_s = self.clock() - t0
        rec.decision = parse_join(rec.join_text)
        return rec.decision
