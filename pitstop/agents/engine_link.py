"""What an agent run tells the engine: one program per run, its hints on every LLM call, each tool run's duration
(the TTL policy learns from it, Continuum), and the program's end when the run finishes or fails (its pinned KV
is released at once, not at the TTL). The user sets none of it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pitstop.agents.chat_model import ChatModel, ProgramHints
from pitstop.agents.tool_guard import OnRun, ToolRun
from pitstop.agents.trace import RunTrace

logger = logging.getLogger(__name__)


def new_program_id(prefix: str = "agent") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class EngineLink:
    """The program of one run on ``model``.

    Args:
        model: the run's model.
        program_id: the program's id (default: a fresh random one).
    """

    def __init__(self, model: ChatModel, program_id: str | None = None) -> None:
        self.model = model
        self.program_id = program_id or new_program_id()
        self.linked = False
        self.reported: list[tuple[str, float]] = []
        self.stats: dict[str, Any] | None = None

    async def start(self) -> None:
        """Finds out whether the model's engine tracks programs (errors from the endpoint propagate)."""
        self.linked = await self.model.links_programs()

    def hints(self, is_last_turn: bool = False, tool_name: str | None = None) -> ProgramHints:
        return ProgramHints(self.program_id, is_last_turn, tool_name)

    async def tool_done(self, run: ToolRun) -> None:
        """Reports a tool run that ran (a refused call ran nothing and is not reported)."""
        if self.linked and not run.refused:
            await self.model.report_tool(self.program_id, run.name, run.duration_s)
            self.reported.append((run.name, run.duration_s))

    def tool_observer(self, trace: RunTrace) -> OnRun:
        """``GuardedTools``' ``on_run`` for a run: each tool run goes into ``trace`` as a span, then to the
        engine (``tool_done``)."""
        async def on_run(run: ToolRun) -> None:
            trace.add("tool", run.name, run.start, run.end, error=run.error, arguments=run.arguments)
            await self.tool_done(run)
        return on_run

    async def end(self) -> dict[str, Any] | None:
        """Ends the program; its counters just before (``stats``), or None. Never raises: a failed end is logged
        (the engine's idle timeout ends the program anyway)."""
        if not self.linked:
            return None
        try:
            self.stats = await self.model.end_program(self.program_id)
        except Exception:  # noqa: BLE001 - the run's own outcome matters more than its goodbye
            logger.exception("ending program %s failed", self.program_id)
        return self.stats
