"""Every tool call of an agent run goes through one guard: the agent's permissions first (a refusal is logged and
becomes a ``ToolError`` for the model, the same error type as a bad argument or a failed tool), then the call,
timed, then a callback with the run's record (the trace and the engine link's tool report).

``GuardedTools`` is a ``ToolRegistry`` view of another one, so the ReAct ``Agent`` and the ``Planner``'s task
fetching unit use it unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pitstop.agents.permissions import PermissionDenied, Permissions, refusal_message
from pitstop.agents.tools import Tool, ToolError, ToolRegistry

logger = logging.getLogger(__name__)


@dataclass
class ToolRun:
    """One tool call as it ran. Times are clock seconds (``GuardedTools.clock``).

    Attributes:
        output: the tool's text, or None when it failed or was refused.
        error: the message the model gets for a failure or refusal, else None.
        refused: the agent's permissions refused the call (it never ran).
    """

    name: str
    arguments: Any
    start: float
    end: float
    output: str | None = None
    error: str | None = None
    refused: bool = False

    @property
    def duration_s(self) -> float:
        return self.end - self.start


OnRun = Callable[[ToolRun], Awaitable[None]]


@dataclass
class GuardedTool(Tool):
    """``inner`` behind the guard (same name, description and parameters)."""

    inner: Tool = field(repr=False)
    guard: GuardedTools = field(repr=False)

    async def call(self, arguments: Any) -> str:
        """Checks the permission, runs the tool and reports the run.

        Raises:
            ToolError: refused (the refusal message), invalid arguments, or the tool failed.
        """
        g = self.guard
        start = g.clock()
        run = ToolRun(self.name, arguments, start, start)
        try:
            if g.permissions is not None:
                g.permissions.check_tool(self.name)
            run.output = await self.inner.call(arguments)
            return run.output
        except PermissionDenied as denied:
            run.refused, run.error = True, refusal_message(denied, logger)
            raise ToolError(run.error) from None
        except ToolError as e:
            run.error = str(e)
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a tool is the model's to hear about
            run.error = f"tool {self.name!r} failed: {type(e).__name__}: {e}"
            raise ToolError(run.error) from e
        finally:
            run.end = g.clock()
            await g.record(run)


class GuardedTools(ToolRegistry):
    """``tools`` as one agent may call them.

    Args:
        tools: every tool the agent knows.
        permissions: its allowlist (None: every tool in ``tools`` may be called).
        on_run: awaited with each finished (or refused) call's ``ToolRun``; its exceptions are logged, never
            raised into the run.
        clock: seconds, monotonic.
    """

    def __init__(self, tools: ToolRegistry, permissions: Permissions | None = None, on_run: OnRun | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.permissions, self.on_run, self.clock = permissions, on_run, clock
        self.runs: list[ToolRun] = []
        for t in tools:
            self.add(GuardedTool(t.name, t.description, t.parameters, inner=t, guard=self))

    def allowed(self) -> list[Tool]:
        """The tools the permissions allow (the ones to offer; a call to another is still refused)."""
        names = self.permissions.tools if self.permissions is not None else None
        return [t for t in self if names is None or t.name in names]

    def openai_specs(self) -> list[dict[str, Any]]:
        """The allowed tools as OpenAI ``tools`` entries (a refused tool is not offered)."""
        return [t.openai_spec() for t in self.allowed()]

    async def record(self, run: ToolRun) -> None:
        self.runs.append(run)
        if self.on_run is not None:
            try:
                await self.on_run(run)
            except Exception:  # noqa: BLE001 - a failed report must not fail the agent's run
                logger.exception("reporting tool run %r failed", run.name)


def tool_message(call_id: str, run_output: str | None, error: str | None) -> dict[str, Any]:
    """The ``tool`` message for one call: its output, or ``error: ...``."""
    content = run_output if error is None else (error if error.startswith("error:") else f"error: {error}")
    return {"role": "tool", "tool_call_id": call_id, "content": content or ""}
