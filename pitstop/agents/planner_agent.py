"""The LLMCompiler-style ``Planner`` (``pitstop.agents.planner``) run as an agent program on a ``ChatModel``: the
plan is decoded under the plan grammar where the engine supports it (pitstop), every planner and joiner call
carries the program's hints, each tool run is reported, the run is traced, and the program ends with the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pitstop.agents.chat_model import ChatModel, Message
from pitstop.agents.engine_link import EngineLink
from pitstop.agents.permissions import Permissions
from pitstop.agents.planner import Planner, PlannerResult
from pitstop.agents.tool_guard import GuardedTools, ToolRun
from pitstop.agents.tools import ToolRegistry
from pitstop.agents.trace import RunTrace


@dataclass
class PlannerRun:
    """A planner run: ``result`` (None when a model call failed: ``error`` says why), the trace, the tool runs,
    the program and its counters just before it ended (None where the engine does not track programs)."""

    result: PlannerResult | None
    trace: RunTrace
    tool_runs: list[ToolRun]
    program_id: str
    program_stats: dict[str, Any] | None
    total_s: float
    error: str | None = None

    @property
    def answer(self) -> str | None:
        return self.result.answer if self.result is not None else None


@dataclass
class PlannerAgent:
    """Plan -> run the DAG -> join, as one program.

    Attributes:
        model, tools, permissions: as for ``Agent``.
        max_replans: new plans after the first (>= 0).
        sequential: run each plan's tasks one at a time (the baseline).
        constrain: decode plans under the plan grammar (where the engine supports structured outputs).
    """

    model: ChatModel
    tools: ToolRegistry
    permissions: Permissions | None = None
    max_replans: int = 2
    sequential: bool = False
    constrain: bool = True
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)

    async def run(self, question: str, *, program_id: str | None = None) -> PlannerRun:
        """Answers ``question``; the program ends with the run, whatever its outcome."""
        trace = RunTrace(self.clock)
        link = EngineLink(self.model, program_id)
        guarded = GuardedTools(self.tools, self.permissions, on_run=link.tool_observer(trace), clock=self.clock)

        def plan_llm(messages: list[Message]) -> AsyncIterator[str]:  # under the plan grammar where supported
            grammar = planner.grammar() if self.constrain and link.linked else None
            return self.model.stream(messages, program=link.hints(), grammar=grammar)

        def join_llm(messages: list[Message]) -> AsyncIterator[str]:
            return self.model.stream(messages, program=link.hints())

        planner = Planner(plan_llm, ToolRegistry(guarded.allowed()), joiner=join_llm, max_replans=self.max_replans,
                          sequential=self.sequential, clock=self.clock)
        result, error = None, None
        try:
            await link.start()
            result = await planner.run(question)
            _trace_rounds(trace, result)
        except Exception as e:  # noqa: BLE001 - a failed model call is the run's error
            error = f"{type(e).__name__}: {e}"
        finally:
            stats = await asyncio.shield(link.end())
        return PlannerRun(result, trace, guarded.runs, link.program_id, stats, self.clock() - trace.t0, error)


def _trace_rounds(trace: RunTrace, result: PlannerResult) -> None:
    """The plan and join calls of each round as LLM spans (the records count from ``result.t0``)."""
    for n, r in enumerate(result.rounds, 1):
        trace.add("llm", f"plan {n}", result.t0 + r.plan_start_s, result.t0 + r.plan_end_s,
                  tasks=len(r.tasks), error=r.plan_error)
        trace.add("llm", f"join {n}", result.t0 + r.join_start_s, result.t0 + r.join_end_s,
                  decision=r.decision.kind if r.decision else None)
