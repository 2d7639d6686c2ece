"""Loader for the Claude Code SWE-bench sessions of AgentCgroup (yunwei37/agentcgroup @ 5af9e7b8).

The trace is **GPL-2.0**: it is read from its path at run time and no part of it is copied into this
repository (no sample is vendored). Default location: ``<repo>/../shared/data/traces/agentcgroup_claude_code/``
(``llm_calls.csv`` + ``tool_calls.csv``), or pass ``path`` (a folder, or the ``llm_calls.csv`` file).

One session (``dataset, task, attempt``) is one agent program; ``call_idx`` orders its LLM calls. How a
program's turns are derived (see ``benchmarks/README.md``, "Agent programs"):

- Only the main chain is kept (``is_sidechain == 0``). Sub-agent calls (the ``Task`` tool) are part of the
  ``Task`` tool's duration as the main program sees it. Rows with ``prompt_tokens == 0`` (3 ``<synthetic>``
  error rows) are skipped.
- Turn 0's new tokens = ``prompt_tokens`` of the first call (system prompt + tool schemas + task).
  Turn ``k``'s new tokens = ``prompt_tokens[k] - prompt_tokens[k-1] - output[k-1]``, clipped to >= 1 (the
  context occasionally shrinks upstream, e.g. after compaction: 33 of 6,542 consecutive pairs).
- Output tokens: decided per dataset from its rows (``output_rules``), never by its name. Where the median
  of ``output_chars / output_tokens`` is above ``MAX_CHARS_PER_TOKEN`` (no tokenizer writes that many
  characters per token: ``output_tokens`` is a streaming placeholder, as in the Claude API rows of
  ``all_images_haiku``: median 65 chars per "token", ``output_tokens`` 1-2), ``output_chars / 4``;
  otherwise ``output_tokens`` as given (``all_images_local``, GLM 4.7 flash: median 3.9).
- Tool time after call ``k``: ``tool_time_max_s`` (the longest of the tool calls the response issued; they
  run in parallel). On the main chain it equals the gap to the next main-chain request
  (``t_request[k+1] - t_response[k]``) within 6 ms for 99% of pairs, and for a ``Task`` call it covers the
  whole sub-agent run. ``gap_to_next_request_s`` is *not* used: it points to the next row, which after a
  ``Task`` call is the sub-agent's first call (e.g. 0.06 s instead of 108 s). Negative values are clipped to 0.
- Tool name after call ``k``: of the tools the response issued (``tool_names``), the one that ran longest in
  ``tool_calls.csv`` (started within 1 s of the response); else the first listed; else ``"unknown"``
  (a response without tool calls: the agent answered or the user spoke).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pitstop.workloads.agent_program import AgentProgram, AgentTurn, finalize
from pitstop.workloads.lengths import traces_dir_candidates

AGENTCGROUP_DIR = "agentcgroup_claude_code"
LLM_CALLS = "llm_calls.csv"
TOOL_CALLS = "tool_calls.csv"
CHARS_PER_TOKEN = 4.0
MAX_CHARS_PER_TOKEN = 12.0
"""Above this median of output characters per reported output token, ``output_tokens`` is a placeholder
(real tokenizers average 3-5 characters per token on English and code)."""


@dataclass(frozen=True)
class OutputRule:
    """How one dataset's output tokens are read: ``rule`` is ``output_tokens`` or ``output_chars/4``;
    ``median_chars_per_token`` over its ``rows`` with output characters (None: no such row); ``reason`` in
    words (for the workload summary)."""

    dataset: str
    rule: str
    median_chars_per_token: float | None
    rows: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def output_rules(rows: list[dict]) -> dict[str, OutputRule]:
    """The output-token rule of each dataset in ``rows`` (``llm_calls.csv`` rows), from the rows themselves."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        chars = _f(row.get("output_chars"))
        if chars > 0:
            ratios[row["dataset"]].append(chars / max(_f(row.get("output_tokens")), 1.0))
    rules = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        xs = ratios.get(ds, [])
        med = statistics.median(xs) if xs else None
        if med is not None and med > MAX_CHARS_PER_TOKEN:
            rules[ds] = OutputRule(ds, "output_chars/4", med, len(xs),
                                   f"median {med:.1f} output chars per reported token > {MAX_CHARS_PER_TOKEN:g}: "
                                   f"output_tokens is a placeholder")
        else:
            why = "no output_chars to check" if med is None else \
                f"median {med:.1f} output chars per token <= {MAX_CHARS_PER_TOKEN:g}: plausible"
            rules[ds] = OutputRule(ds, "output_tokens", med, len(xs), why)
    return rules


def agentcgroup_path(path: str | Path | None = None) -> Path:
    """The ``llm_calls.csv`` to read: ``path`` (file or folder) or the shared copy next to the repo.

    Raises:
        FileNotFoundError: not found (the trace is never vendored: it is GPL-2.0).
    """
    if path is not None:
        p = Path(path)
        p = p / LLM_CALLS if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"agentcgroup trace: {p} not found")
        return p
    folder = traces_dir_candidates(AGENTCGROUP_DIR)[0]
    p = folder / LLM_CALLS
    if not p.is_file():
        raise FileNotFoundError(f"agentcgroup trace not found at {p} (GPL-2.0, not vendored): pass --trace-path")
    return p


def _f(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default


def tool_call_durations(path: str | Path | None = None) -> list[tuple[str, str, float]]:
    """``(dataset, tool, duration_s)`` of every row of ``tool_calls.csv``, in file order (seconds). ``path``: as
    ``agentcgroup_path`` (the trace's folder or its ``llm_calls.csv``; default the shared copy).

    Raises:
        FileNotFoundError: the trace or its ``tool_calls.csv`` is not there (GPL-2.0: never vendored).
    """
    tools = agentcgroup_path(path).with_name(TOOL_CALLS)
    if not tools.is_file():
        raise FileNotFoundError(f"agentcgroup trace: {tools} not found")
    with open(tools, newline="") as f:
        return [(row["dataset"], row["tool"], _f(row["duration_s"])) for row in csv.DictReader(f)]


def _load_tool_calls(path: Path) -> dict[tuple[str, str, str], list[tuple[float, str, float]]]:
    out: dict[tuple[str, str, str], list[tuple[float, str, float]]] = defaultdict(list)
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["dataset"], row["task"], row["attempt"])
            out[key].append((_f(row["t_start_s"]), row["tool"], _f(row["duration_s"])))
    return out


def _tool_name(names_field: str, t_response: float, tools: list[tuple[float, str, float]]) -> str:
    names = [n for n in (names_field or "").split("|") if n]
    if not names:
        return "unknown"
    cands = [(d, n) for t, n, d in tools if n in names and abs(t - t_response) <= 1.0]
    return max(cands)[1] if cands else names[0]


def output_tokens_of(row: dict, rule: OutputRule) -> int:
    """Output tokens of one ``llm_calls.csv`` row under its dataset's ``rule`` (>= 1)."""
    if rule.rule == "output_chars/4":
        return max(1, round(_f(row["output_chars"]) / CHARS_PER_TOKEN))
    return max(1, int(_f(row["output_tokens"])))


def load_agentcgroup(path: str | Path | None = None, datasets: tuple[str, ...] | None = None,
                     tool_time: str = "tool_max") -> list[AgentProgram]:
    """Read the sessions as ``AgentProgram``s at trace scale (tokens, seconds), in file order. Each program's
    ``meta`` has its ``dataset`` and that dataset's ``output_rule`` (``OutputRule.as_dict``).

    Args:
        path: ``llm_calls.csv`` or its folder (``tool_calls.csv`` next to it is optional: tool names then
            come from ``tool_names`` alone).
        datasets: keep only these ``dataset`` values (``all_images_haiku``, ``all_images_local``); None: all.
        tool_time: ``"tool_max"`` (``tool_time_max_s``, default) or ``"gap"`` (main-chain request gap
            ``t_request[k+1] - t_response[k]``).
    """
    if tool_time not in ("tool_max", "gap"):
        raise ValueError(f"tool_time must be 'tool_max' or 'gap', got {tool_time!r}")
    llm_path = agentcgroup_path(path)
    tools = _load_tool_calls(llm_path.with_name(TOOL_CALLS))
    sessions: dict[tuple[str, str, str], list[dict]] = {}
    kept: list[dict] = []
    with open(llm_path, newline="") as f:
        for row in csv.DictReader(f):
            if datasets is not None and row["dataset"] not in datasets:
                continue
            if row.get("is_sidechain", "0") not in ("0", "", "False", "false"):
                continue
            if _f(row["prompt_tokens"]) <= 0:
                continue
            sessions.setdefault((row["dataset"], row["task"], row["attempt"]), []).append(row)
            kept.append(row)
    rules = output_rules(kept)
    programs = []
    for key, rows in sessions.items():
        rows.sort(key=lambda r: int(r["call_idx"]))
        turns: list[AgentTurn] = []
        prev_prompt = prev_out = 0
        for k, row in enumerate(rows):
            prompt = int(_f(row["prompt_tokens"]))
            out = output_tokens_of(row, rules[key[0]])
            new = prompt if k == 0 else max(1, prompt - prev_prompt - prev_out)
            if tool_time == "gap" and k + 1 < len(rows):
                t = _f(rows[k + 1]["t_request_s"]) - _f(row["t_response_s"])
            else:
                t = _f(row["tool_time_max_s"])
            name = _tool_name(row.get("tool_names", ""), _f(row["t_response_s"]), tools.get(key, []))
            turns.append(AgentTurn(new, out, name, max(0.0, t)))
            prev_prompt, prev_out = prompt, out
        programs.append(AgentProgram(f"{key[0]}/{key[1]}/{key[2]}", finalize(turns), source="agentcgroup",
                                     meta={"dataset": key[0], "output_rule": rules[key[0]].as_dict()}))
    return programs
