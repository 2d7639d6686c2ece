"""Chrome trace-event JSON (open in https://ui.perfetto.dev or chrome://tracing) of a simulated run.

Format: the Trace Event Format (Google, "Trace Event Format" document): one complete event (``"ph": "X"``) per
engine step with ``ts``/``dur`` in microseconds of virtual time, ``pid`` = replica, and the batch shape in
``args``; one counter track (``"ph": "C"``) per replica with outstanding requests sampled at each step.
With agent programs (``program_records``), one more process, "programs", holds one track (``tid``) per program
whose slices are the program's phases: ``queued`` (turn sent, not yet scheduled), ``LLM`` (first scheduled to
finished; with disaggregation this includes the KV transfer and the decode replica's queue) and ``tool`` (the
tool run before the next turn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def trace_events(replicas: Sequence, max_events: int = 500_000, program_records: Sequence | None = None,
                 redact_programs: bool = False) -> list[dict]:
    """Events of every replica's recorded steps (``Replica.steps``), at most ``max_events`` in all, then the
    phases of ``program_records`` (``pitstop.replay.agent_replay.ProgramRecord``) if given (``redact_programs``:
    see ``program_events``)."""
    events: list[dict] = []
    per = max(1, max_events // max(1, len(replicas)))
    for rep in replicas:
        name = getattr(rep, "name", None) or f"replica {rep.index}"
        events.append({"name": "process_name", "ph": "M", "pid": rep.index, "args": {"name": name}})
        for t0, dt, pre, dec, seqs, preempt in rep.steps[:per]:
            kind = "mixed" if pre and dec else ("prefill" if pre else "decode")
            events.append({"name": kind, "cat": "step", "ph": "X", "pid": rep.index, "tid": 0,
                           "ts": round(t0 * 1e6, 3), "dur": round(dt * 1e6, 3),
                           "args": {"prefill_tokens": pre, "decode_seqs": dec, "seqs": seqs, "preempted": preempt}})
    if program_records:
        events.extend(program_events(program_records, pid=len(replicas), redact=redact_programs))
    return events


def _slice(name: str, pid: int, tid: int, t0: float, t1: float, args: dict) -> dict:
    return {"name": name, "cat": "program", "ph": "X", "pid": pid, "tid": tid, "ts": round(t0 * 1e6, 3),
            "dur": round(max(0.0, t1 - t0) * 1e6, 3), "args": args}


def program_events(records: Sequence, pid: int, redact: bool = False) -> list[dict]:
    """One track per program (process ``pid``, thread = program index) with a ``queued``, an ``LLM`` and (but for
    the last turn, and when it took time) a ``tool`` slice per finished turn; times are the records' seconds.
    ``redact`` (the GPL-2.0 AgentCgroup trace): tracks are named ``program-<i>`` and slices carry no values taken
    from the trace (token counts, tool names), as ``pitstop.bench.agents.records_json`` does."""
    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": "programs"}}]
    for tid, rec in enumerate(records):
        label = f"program-{tid}" if redact else rec.program_id
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
        for t in rec.turns:
            if t.finished_s is None:
                continue
            sched = t.first_scheduled_s if t.first_scheduled_s is not None else t.arrival_s
            args = {"turn": t.turn} if redact else {"turn": t.turn, "prompt_tokens": t.prompt_len,
                                                    "output_tokens": t.output_len}
            if sched > t.arrival_s:
                events.append(_slice("queued", pid, tid, t.arrival_s, sched, args))
            events.append(_slice("LLM", pid, tid, sched, t.finished_s,
                                 {**args, "cached_tokens": t.cached_tokens, "preemptions": t.preemptions}))
            if t.turn < rec.num_turns_planned - 1 and t.tool_time_s > 0:
                events.append(_slice("tool", pid, tid, t.finished_s, t.finished_s + t.tool_time_s,
                                     {"turn": t.turn} if redact else {"turn": t.turn, "tool": t.tool_name}))
    return events


def write_trace(path: str | Path, replicas: Sequence, max_events: int = 500_000,
                program_records: Sequence | None = None, redact_programs: bool = False) -> int:
    """Write the trace JSON; returns the number of events."""
    ev = trace_events(replicas, max_events, program_records, redact_programs)
    Path(path).write_text(json.dumps({"traceEvents": ev, "displayTimeUnit": "ms"}))
    return len(ev)
