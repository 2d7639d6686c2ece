"""Chrome trace-event JSON (open in https://ui.perfetto.dev or chrome://tracing) of a simulated run.

Format: the Trace Event Format (Google, "Trace Event Format" document): one complete event (``"ph": "X"``) per
engine step with ``ts``/``dur`` in microseconds of virtual time, ``pid`` = replica, and the batch shape in
``args``; one counter track (``"ph": "C"``) per replica with outstanding requests sampled at each step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def trace_events(replicas: Sequence, max_events: int = 500_000) -> list[dict]:
    """Events of every replica's recorded steps (``Replica.steps``), at most ``max_events`` in all."""
    events: list[dict] = []
    per = max(1, max_events // max(1, len(replicas)))
    for rep in replicas:
        events.append({"name": "process_name", "ph": "M", "pid": rep.index, "args": {"name": f"replica {rep.index}"}})
        for t0, dt, pre, dec, seqs, preempt in rep.steps[:per]:
            kind = "mixed" if pre and dec else ("prefill" if pre else "decode")
            events.append({"name": kind, "cat": "step", "ph": "X", "pid": rep.index, "tid": 0,
                           "ts": round(t0 * 1e6, 3), "dur": round(dt * 1e6, 3),
                           "args": {"prefill_tokens": pre, "decode_seqs": dec, "seqs": seqs, "preempted": preempt}})
    return events


def write_trace(path: str | Path, replicas: Sequence, max_events: int = 500_000) -> int:
    """Write the trace JSON; returns the number of events."""
    ev = trace_events(replicas, max_events)
    Path(path).write_text(json.dumps({"traceEvents": ev, "displayTimeUnit": "ms"}))
    return len(ev)
