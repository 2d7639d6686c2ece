"""Summarises an agent-program replay, for ``pitstop bench agents`` and the simulator alike.

The summary: JCT, per-turn TTFT and queueing, re-prefill, prefix hits, pins, KV pressure; and the per-program
JSON records.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Sequence

from pitstop.replay.agent_replay import ProgramRecord
from pitstop.workloads.lengths import percentile


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan, "p99": math.nan, "count": 0}
    return {"mean": sum(xs) / len(xs), "median": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99), "count": len(xs)}


def kv_pressure(records: Sequence[ProgramRecord], capacity_tokens: int | None, makespan_s: float) -> dict:
    """Working set of live programs vs the KV cache: at each time a started, unfinished program holds the
    context of its latest turn (prompt + output). Reports the time-weighted mean and the peak, in tokens
    and as a multiple of the KV capacity."""
    deltas: list[tuple[float, int]] = []
    for rec in records:
        prev = 0
        for k, t in enumerate(rec.turns):
            start = rec.start_s if k == 0 else t.arrival_s
            size = t.prompt_len + (t.output_len or t.max_tokens)
            deltas.append((start, size - prev))
            prev = size
        end = rec.turns[-1].finished_s if rec.turns and rec.turns[-1].finished_s is not None else makespan_s
        deltas.append((end, -prev))
    deltas.sort()
    live = peak = 0
    area = 0.0
    last_t = 0.0
    for t, d in deltas:
        area += live * max(0.0, t - last_t)
        last_t = max(last_t, t)
        live += d
        peak = max(peak, live)
    mean = area / makespan_s if makespan_s > 0 else 0.0
    out = {"mean_live_context_tokens": mean, "peak_live_context_tokens": peak, "kv_capacity_tokens": capacity_tokens}
    if capacity_tokens:
        out["mean_working_set_over_capacity"] = mean / capacity_tokens
        out["peak_working_set_over_capacity"] = peak / capacity_tokens
    return out


def summarize_run(records: Sequence[ProgramRecord], makespan_s: float, engine_stats: dict | None = None,
                  capacity_tokens: int | None = None) -> dict:
    """JCT, per-turn TTFT / queueing, re-prefill, prefix hits, pins, throughput, KV pressure."""
    done = [r for r in records if r.done]
    turns = [t for r in records for t in r.turns if t.ok and t.finished_s is not None]
    later = [t for t in turns if t.turn > 0]
    prompt_tokens = sum(t.prompt_len for t in turns)
    cached = sum(t.cached_tokens for t in turns)
    out_tokens = sum(t.output_len for t in turns)
    jcts = [r.jct_s for r in done]
    pins = {k: v for k, v in (engine_stats or {}).items()
            if any(s in k for s in ("pin", "reuse", "reprefill", "expir", "release"))}
    return {
        "programs_total": len(records), "programs_completed": len(done),
        "turns_completed": len(turns), "turns_planned": sum(r.num_turns_planned for r in records),
        "makespan_s": makespan_s,
        "jct_s": _stats(jcts),
        # programs cut off by --timeout count with JCT >= makespan - start: a lower bound of the true JCTs
        "jct_censored_lower_bound_s": _stats(jcts + [makespan_s - r.start_s for r in records if not r.done]),
        "jct_minus_tool_time_s": _stats([r.jct_s - r.tool_time_s for r in done]),
        "ttft_s": _stats([t.ttft_s for t in turns if t.ttft_s is not None]),
        "ttft_later_turns_s": _stats([t.ttft_s for t in later if t.ttft_s is not None]),
        "queue_delay_s": _stats([t.queue_s for t in turns if t.queue_s is not None]),
        "prompt_tokens": prompt_tokens, "new_tokens": sum(t.new_tokens for t in turns),
        "computed_prompt_tokens": sum(t.computed_prompt_tokens for t in turns),
        "reprefilled_tokens": sum(t.reprefilled_tokens for t in turns),
        "cached_prompt_tokens": cached,
        "prefix_hit_rate": cached / prompt_tokens if prompt_tokens else math.nan,
        "prefix_hit_rate_later_turns": (sum(t.cached_tokens for t in later) / sum(t.prompt_len for t in later)
                                        if later else math.nan),
        "preemptions": sum(t.preemptions for t in turns),
        "output_tokens": out_tokens,
        "output_throughput_tok_s": out_tokens / makespan_s if makespan_s > 0 else math.nan,
        "turn_throughput_per_s": len(turns) / makespan_s if makespan_s > 0 else math.nan,
        "program_throughput_per_min": 60 * len(done) / makespan_s if makespan_s > 0 else math.nan,
        "pin_stats": pins,
        "spec_decode": {k: v for k, v in (engine_stats or {}).items() if k.startswith("spec_")},
        "kv": kv_pressure(records, capacity_tokens, makespan_s),
        "errors": sorted({t.error for r in records for t in r.turns if not t.ok})[:5],
    }


def step_summary(history) -> dict:
    """Engine steps of a run: count, busy seconds, prefill / decode tokens, step time percentiles."""
    times = [h.step_time_s for h in history]
    return {"steps": len(history), "busy_s": sum(times),
            "prefill_tokens": sum(h.num_prefill_tokens for h in history),
            "decode_tokens": sum(h.num_decode_tokens for h in history),
            "step_s": _stats(times), "seqs_per_step": _stats([float(h.num_seqs) for h in history])}


TRACE_DERIVED_TURN_FIELDS = ("prompt_len", "new_tokens", "max_tokens", "output_len", "tool_name", "tool_time_s")


def records_json(records: Sequence[ProgramRecord], redact: bool = False) -> list[dict]:
    """Per-program records for the JSON. ``redact`` (used for the GPL-2.0 agentcgroup trace, which must not be
    copied into results that may be committed): program ids become ``program-<i>`` and the per-turn values derived
    from the trace (lengths, tool names and times) are left out; only measured times and counters stay."""
    out = []
    for i, r in enumerate(records):
        turns = [asdict(t) for t in r.turns]
        if redact:
            turns = [{k: v for k, v in t.items() if k not in TRACE_DERIVED_TURN_FIELDS} for t in turns]
        out.append({"program_id": f"program-{i}" if redact else r.program_id, "start_s": r.start_s,
                    "jct_s": r.jct_s, "tool_time_s": None if redact else r.tool_time_s,
                    "stats": {k: v for k, v in r.stats.items() if k != "pin_tool"} if redact else r.stats,
                    "turns": turns})
    return out
