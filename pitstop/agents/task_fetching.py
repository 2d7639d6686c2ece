"""LLMCompiler's task fetching unit: runs a plan's tasks as their lines arrive, each as soon as the tasks it
depends on are done, with their ``$N`` placeholders replaced by those results.

Source: Kim et al., "An LLM Compiler for Parallel Function Calling", ICML 2024 (arXiv 2312.04511), section 3
(task fetching unit and executor). pitstop's own code on asyncio: one asyncio task per plan task, waiting on its
dependencies' asyncio tasks; ``sequential`` chains every task after the previous one instead (the
one-call-at-a-time baseline, for comparison).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pitstop.agents.plan import Placeholder, Task
from pitstop.agents.tools import ToolError, ToolRegistry

_DOLLAR = re.compile(r"\$(\d+)")


@dataclass
class TaskRecord:
    """What happened to one task. Times are seconds since the run's start (``PlannerResult.t0``).

    Attributes:
        arguments: the keyword arguments the tool got (placeholders substituted); None if it never ran.
        start_s, end_s: when the tool call started and ended; ``start_s`` is None for a task that never ran
            (a dependency failed, its arguments did not fit, or it was cancelled); ``end_s`` is then when that
            was decided.
        result: the tool's text, or None when it failed.
        error: why it failed (the ``ToolError`` message, another exception's type and message, or
            ``dependency $N failed``), or None.
    """

    idx: int
    tool: str
    deps: tuple[int, ...]
    arguments: dict[str, Any] | None = None
    start_s: float | None = None
    end_s: float | None = None
    result: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None

    @property
    def duration_s(self) -> float | None:
        """The tool call's wall time (seconds); None if it never ran."""
        return None if self.start_s is None or self.end_s is None else self.end_s - self.start_s


def substitute(value: Any, results: dict[int, str]) -> Any:
    """``value`` with each bare ``Placeholder`` replaced by its task's result, and ``$N`` inside strings too
    (where N is in ``results``; other ``$...`` text stays), through lists, tuples and dicts."""
    if isinstance(value, Placeholder):
        return results[value.idx]
    if isinstance(value, str):
        return _DOLLAR.sub(lambda m: results.get(int(m.group(1)), m.group(0)), value)
    if isinstance(value, list):
        return [substitute(v, results) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, results) for v in value)
    if isinstance(value, dict):
        return {substitute(k, results): substitute(v, results) for k, v in value.items()}
    return value


def bind(task: Task, parameters: dict[str, Any], results: dict[int, str]) -> dict[str, Any]:
    """The task's keyword arguments: positional arguments take the tool's parameter names in the order of its
    schema's ``properties``; placeholders are substituted.

    Raises:
        ToolError: more positional arguments than parameters, or one given both by position and by name.
    """
    names = list(parameters.get("properties", {}))
    if len(task.args) > len(names):
        raise ToolError(f"tool {task.tool!r} takes at most {len(names)} positional arguments "
                        f"({', '.join(names)}), {len(task.args)} given")
    kwargs = dict(zip(names, task.args))
    if twice := sorted(set(kwargs) & set(task.kwargs)):
        raise ToolError(f"tool {task.tool!r}: argument {twice[0]!r} given by position and by name")
    kwargs.update(task.kwargs)
    return {k: substitute(v, {d: results[d] for d in task.deps}) for k, v in kwargs.items()}


class TaskFetchingUnit:
    """Runs tasks as they are submitted (call ``submit`` inside the event loop), each once its dependencies are
    done; ``wait`` returns every record once all are.

    Args:
        tools: where the tasks' tools are looked up.
        sequential: run one task at a time in index order (each waits for the previous one), not a DAG.
        clock: seconds (monotonic); records are relative to ``t0``.
        t0: the clock value record times count from (default: now).
    """

    def __init__(self, tools: ToolRegistry, *, sequential: bool = False,
                 clock: Callable[[], float] = time.perf_counter, t0: float | None = None) -> None:
        self.tools = tools
        self.sequential = sequential
        self.clock = clock
        self.t0 = clock() if t0 is None else t0
        self.records: dict[int, TaskRecord] = {}
        self._running: dict[int, asyncio.Task[None]] = {}

    def _now(self) -> float:
        return self.clock() - self.t0

    def submit(self, task: Task) -> None:
        """Schedules ``task``; its dependencies must have been submitted before it.

        Raises:
            ValueError: the task's index was submitted already, or a dependency was not.
        """
        if task.idx in self._running or any(d not in self._running for d in task.deps):
            raise ValueError(f"task {task.idx}: submitted twice, or before one of its dependencies {task.deps}")
        waits = [self._running[d] for d in sorted(task.deps)]
        if self.sequential and self._running:
            waits.append(self._running[max(self._running)])
        self.records[task.idx] = TaskRecord(task.idx, task.tool, tuple(sorted(task.deps)))
        self._running[task.idx] = asyncio.create_task(self._run(task, waits), name=f"plan-task-{task.idx}")

    async def _run(self, task: Task, waits: list[asyncio.Task[None]]) -> None:
        rec = self.records[task.idx]
        if waits:
            await asyncio.wait(waits)
        failed = [d for d in rec.deps if not self.records[d].ok]
        if failed:
            rec.error, rec.end_s = f"not run: dependency ${failed[0]} failed", self._now()
            return
        results = {d: self.records[d].result for d in rec.deps}
        try:
            tool = self.tools.get(task.tool)
            rec.arguments = bind(task, tool.parameters, results)  # type: ignore[arg-type]
        except ToolError as e:
            rec.error, rec.end_s = str(e), self._now()
            return
        rec.start_s = self._now()
        try:
            rec.result = await tool.call(rec.arguments)
        except ToolError as e:
            rec.error = str(e)
        except Exception as e:  # noqa: BLE001 - any tool failure is reported, dependents do not run
            rec.error = f"{type(e).__name__}: {e}"
        finally:
            rec.end_s = self._now()

    async def wait(self) -> list[TaskRecord]:
        """Every submitted task's record, in index order, once all have finished."""
        if self._running:
            await asyncio.wait(list(self._running.values()))
        return [self.records[i] for i in sorted(self.records)]

    async def cancel(self) -> None:
        """Cancels the tasks still running (their records get ``error='cancelled'``) and waits for them."""
        pending = [t for t in self._running.values() if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
        for rec in self.records.values():
            if rec.end_s is None:
                rec.error, rec.end_s = "cancelled", self._now()
