"""Metrics of a simulated run, with the serving benchmark's definitions and names.

Finished requests are converted to ``pitstop.replay.serving.RequestResult`` and summarised by the same
``summarize`` that ``pitstop bench serve`` uses (vLLM's benchmark_serving definitions: TTFT, TPOT =
(E2EL - TTFT) / (output tokens - 1), ITL = gaps between tokens, E2EL, goodput, SLO attainment), so simulated and
measured JSON have identical keys. Program completion time (JCT) is added for workloads with programs.
"""

from __future__ import annotations

from pitstop.replay.serving import RequestResult, summarize
from pitstop.sim.cluster import FinishedRequest
from pitstop.workloads.lengths import percentile


def to_results(finished: list[FinishedRequest], t0: float = 0.0) -> list[RequestResult]:
    out = []
    for f in finished:
        times = f.token_times_s
        itl = [b - a for a, b in zip(times, times[1:])]
        out.append(RequestResult(ok=True, start_s=f.arrival_s - t0, prompt_len=f.prompt_len, output_len=f.output_len,
                                 ttft_s=f.first_token_s - f.arrival_s, e2el_s=f.finish_s - f.arrival_s, itl_s=itl,
                                 chunk_times_s=[t - t0 for t in times]))
    return out


def summarize_sim(finished: list[FinishedRequest], slo: dict[str, float], num_sent: int | None = None) -> dict:
    """The serving benchmark's summary over the simulated span (first arrival to last finish), plus cache and
    preemption counts and JCT per program when programs are present."""
    if not finished:
        return {"completed": 0}
    t0 = min(f.arrival_s for f in finished)
    t1 = max(f.finish_s for f in finished)
    results = to_results(finished, t0)
    if num_sent is not None and num_sent > len(results):
        results += [RequestResult(ok=False, error="not finished")] * (num_sent - len(results))
    s = summarize(results, max(t1 - t0, 1e-9), slo)
    prompt = sum(f.prompt_len for f in finished)
    s["prefix_cache_hit_rate"] = sum(f.num_cached_tokens for f in finished) / prompt if prompt else 0.0
    s["num_preemptions"] = sum(f.num_preemptions for f in finished)
    programs: dict[str, list[FinishedRequest]] = {}
    for f in finished:
        if f.program_id is not None:
            programs.setdefault(f.program_id, []).append(f)
    if programs:
        jct = [max(x.finish_s for x in fs) - min(x.arrival_s for x in fs) for fs in programs.values()]
        s["jct_s"] = {"mean": sum(jct) / len(jct), "median": percentile(jct, 50), "p90": percentile(jct, 90),
                      "p99": percentile(jct, 99)}
        s["num_programs"] = len(jct)
    return s
