"""The trace of one agent run: LLM turns and tool runs as spans, printed as text or written as a Chrome / Perfetto
trace (the Trace Event Format's complete ``"X"`` events; open it in https://ui.perfetto.dev or chrome://tracing).

Tracks: ``LLM`` (turns, plans, joins) and ``tools N`` (one lane per tool run in flight at once, so parallel runs
stack instead of overlapping on one track). Spec: "Trace Event Format", Google (the JSON Object Format).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["llm", "tool"]


@dataclass
class Span:
    """One span. ``start_s`` / ``end_s``: seconds since the run's start; ``args``: shown with the span."""

    kind: Kind
    name: str
    start_s: float
    end_s: float
    args: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class RunTrace:
    """Spans of one run, in the order they were added.

    Args:
        clock: seconds (monotonic); ``t0`` is the clock at construction unless given.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, t0: float | None = None) -> None:
        self.clock = clock
        self.t0 = clock() if t0 is None else t0
        self.spans: list[Span] = []

    def add(self, kind: Kind, name: str, start: float, end: float, error: str | None = None,
            **args: Any) -> Span:
        """A span from clock values ``start`` to ``end``."""
        span = Span(kind, name, start - self.t0, end - self.t0, args, error)
        self.spans.append(span)
        return span

    def lanes(self) -> list[tuple[str, Span]]:
        """Each span with its track name, tool runs packed greedily into the fewest non-overlapping lanes."""
        ends: list[float] = []
        out = []
        for s in sorted(self.spans, key=lambda s: (s.start_s, s.end_s)):
            if s.kind == "llm":
                out.append(("LLM", s))
                continue
            lane = next((i for i, e in enumerate(ends) if e <= s.start_s), len(ends))
            ends[lane:lane + 1] = [s.end_s]
            out.append((f"tools {lane + 1}", s))
        return out

    def to_chrome(self, name: str = "agent run") -> dict[str, Any]:
        """The trace as a Trace Event Format object (times in microseconds)."""
        tracks: dict[str, int] = {"LLM": 1}
        events: list[dict[str, Any]] = []
        for track, s in self.lanes():
            tid = tracks.setdefault(track, len(tracks) + 1)
            args = {**s.args, **({"error": s.error} if s.error else {})}
            events.append({"name": s.name, "cat": s.kind, "ph": "X", "pid": 1, "tid": tid,
                           "ts": round(s.start_s * 1e6, 3), "dur": round(max(s.duration_s, 0.0) * 1e6, 3),
                           "args": _jsonable(args)})
        meta = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": name}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": track}}
                 for track, tid in tracks.items()]
        meta += [{"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}}
                 for tid in tracks.values()]
        return {"traceEvents": meta + events, "displayTimeUnit": "ms"}

    def write(self, path: str | os.PathLike[str], name: str = "agent run") -> None:
        """Writes ``to_chrome`` as JSON. Raises OSError as ``open`` does."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_chrome(name), f)

    def format(self) -> str:
        """One line per span: start, duration, track, name, and its arguments or error."""
        lines = []
        for track, s in self.lanes():
            what = f"error: {s.error}" if s.error else _short(s.args)
            lines.append(f"{s.start_s:8.3f}s {s.duration_s:8.3f}s  {track:<8} {s.name}  {what}".rstrip())
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(args: dict[str, Any], limit: int = 100) -> str:
    text = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in args.items())
    return text if len(text) <= limit else text[:limit - 3] + "..."
