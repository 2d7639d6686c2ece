"""Agent programs: the sequence of LLM calls (turns) of one agent, with tool calls between them.

A ``Program`` records what program-aware policies need: its first arrival (program-level FCFS,
Continuum), attained service (least attained service, Autellix), the KV blocks pinned between
turns and their expiry, and counters of what pinning saved or cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProgramStats:
    """Counters of one program (also summed engine-wide).

    Attributes:
        turns: LLM calls seen.
        pins: times its KV was pinned after a non-final turn.
        pin_hits: next turns that found their pinned KV.
        pin_expiries: pins that ran out their TTL before the next turn.
        pin_releases: pins released early under memory pressure.
        reused_tokens: prompt tokens served from the prefix cache.
        reprefilled_tokens: tokens of an earlier turn's context computed again.
        tool_reports: tool runs the client reported (``POST /v1/programs/{id}/tool_result``).
    """

    turns: int = 0
    pins: int = 0
    pin_hits: int = 0
    pin_expiries: int = 0
    pin_releases: int = 0
    reused_tokens: int = 0
    reprefilled_tokens: int = 0
    tool_reports: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


MAX_TOOL_DURATIONS = 64
"""Reported tool runs a program keeps for its stats (a bound: a long program does not grow without end)."""


@dataclass(eq=False)
class Program:
    """One agent program.

    Attributes:
        program_id: the client's id (``program_id`` or Continuum's ``job_id``).
        first_arrival: seconds (engine clock) of its first turn.
        attained_service: tokens computed for it so far (prefill + decode).
        pinned: KV blocks it holds between turns (one reference each); ``pin_expiry`` in seconds.
        pin_tool: the tool its pin waits for. ``last_turn_end`` / ``last_tool``: the latest turn's end.
        last_context_len: tokens (prompt + output) of its latest finished turn.
        tool_reported: a tool result was reported for the current gap (no inference from arrival).
        gap_tool_s: the longest tool run reported in the current gap (seconds).
        turn_waiting: its next turn has arrived and waits for admission while its pin holds: the pin
            no longer expires (the tool is done; only admission is pending) and is released last.
        last_active: seconds (engine clock) of its latest arrival, turn end or tool report (idle timeout).
        ended: the client ended it while a turn was running: that turn pins nothing and the program is
            dropped when its last running turn ends.
        tool_durations: the latest reported tool runs, ``(tool name, seconds)``, oldest first (at most
            ``MAX_TOOL_DURATIONS``).
    """

    program_id: str
    first_arrival: float
    attained_service: int = 0
    active: int = 0
    pinned: list[Any] = field(default_factory=list)
    pin_created: float = 0.0
    pin_expiry: float = 0.0
    pin_tool: str = "unknown"
    pin_tokens: int = 0
    last_turn_end: float | None = None
    last_tool: str | None = None
    last_context_len: int = 0
    tool_reported: bool = False
    gap_tool_s: float = 0.0
    turn_waiting: bool = False
    last_active: float = 0.0
    ended: bool = False
    tool_durations: list[tuple[str, float]] = field(default_factory=list)
    stats: ProgramStats = field(default_factory=ProgramStats)

    @property
    def has_pin(self) -> bool:
        return bool(self.pinned)
