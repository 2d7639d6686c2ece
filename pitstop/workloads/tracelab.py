"""Loader for TraceLab coding-agent round traces (uw-syfi/TraceLab @ 0b8a262b), dataset CC-BY-4.0.

Two formats, one ``AgentProgram`` per session:

- Replay CSV (``session_runner``'s input): ``session_id`` (or ``id``), ``round_idx``, ``prefix_len``,
  ``input_len``, ``output_len``, ``tool_wait_after_ms``, optional ``arrival_time`` (ms). ``input_len`` is the
  number of new tokens of the round (round 0: ``prefix_len + input_len``); the tool time after a round is
  ``tool_wait_after_ms``. The session's ``arrival_time`` is kept in ``meta["arrival_s"]``.
- Round-trace JSONL (``example_sessions/*/round_trace.jsonl``): ``session_id``, ``round_index``,
  ``input_tokens_total``, ``output_tokens``, ``tools[]`` (``tool_name``, ``tool_wall_latency_ms``). New tokens
  of round ``k`` = ``input_tokens_total[k] - input_tokens_total[k-1] - output_tokens[k-1]`` clipped to >= 1
  (round 0: the whole prompt); tool time after a round = the longest ``tool_wall_latency_ms`` of its tools
  (the tools of one response run in parallel) and the tool name is that tool's; a round without tools has
  tool time 0 and tool ``"unknown"`` (a user message follows; its think time is not in the trace).

The package vendors the 19-round sanitized example and two replay CSVs (``pitstop/data/traces/tracelab``,
attribution there); the default file is the 48-session replay example.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pitstop.workloads.agent_program import AgentProgram, AgentTurn, finalize
from pitstop.workloads.lengths import default_trace_path

TRACELAB_DIR = "tracelab"
TRACELAB_DEFAULT = "replay_examples_multi_session_large.csv"
TRACELAB_ROUNDS = "example_sessions_sanitized_round_trace.jsonl"


def tracelab_path(name: str = TRACELAB_DEFAULT) -> Path:
    return default_trace_path(TRACELAB_DIR, name)


def load_tracelab(path: str | Path | None = None) -> list[AgentProgram]:
    """Read a TraceLab replay CSV or round-trace JSONL (by suffix) as programs at trace scale."""
    path = Path(path) if path is not None else tracelab_path()
    if path.suffix == ".jsonl":
        return _load_rounds_jsonl(path)
    return _load_replay_csv(path)


def _load_replay_csv(path: Path) -> list[AgentProgram]:
    sessions: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            sid = row.get("session_id", row.get("id"))
            if sid is None:
                raise ValueError(f"{path}: needs a session_id (or id) column")
            sessions.setdefault(sid, []).append(row)
    programs = []
    for sid, rows in sessions.items():
        rows.sort(key=lambda r: int(r["round_idx"]))
        turns = []
        for k, r in enumerate(rows):
            new = int(r["input_len"]) + (int(r.get("prefix_len") or 0) if k == 0 else 0)
            turns.append(AgentTurn(max(1, new), max(1, int(r["output_len"])), "unknown",
                                   max(0.0, float(r.get("tool_wait_after_ms") or 0) / 1000.0)))
        arrival = float(rows[0].get("arrival_time") or 0) / 1000.0
        programs.append(AgentProgram(f"tracelab/{sid}", finalize(turns), source="tracelab",
                                     meta={"arrival_s": arrival}))
    return programs


def _load_rounds_jsonl(path: Path) -> list[AgentProgram]:
    sessions: dict[str, list[dict]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                sessions.setdefault(str(row["session_id"]), []).append(row)
    programs = []
    for sid, rows in sessions.items():
        rows.sort(key=lambda r: int(r["round_index"]))
        turns = []
        prev_in = prev_out = 0
        for k, r in enumerate(rows):
            total = int(r.get("input_tokens_total") or 0)
            out = max(1, int(r.get("output_tokens") or 1))
            new = total if k == 0 else max(1, total - prev_in - prev_out)
            tools = [(float(t.get("tool_wall_latency_ms") or 0.0), t.get("tool_name") or "unknown")
                     for t in r.get("tools") or []]
            ms, name = max(tools) if tools else (0.0, "unknown")
            turns.append(AgentTurn(max(1, new), out, name, ms / 1000.0))
            prev_in, prev_out = total, out
        programs.append(AgentProgram(f"tracelab/{sid}", finalize(turns), source="tracelab",
                                     meta={"provider": rows[0].get("provider")}))
    return programs
