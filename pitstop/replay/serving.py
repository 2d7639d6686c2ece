"""Serving metrics shared by ``pitstop bench serve`` and the simulator: per-request results, arrivals, SLO summary.

Metrics as vLLM's ``benchmarks/benchmark_serving.py`` defines them: TTFT = first token (text chunk) minus send
time; TPOT = (E2EL - TTFT) / (output tokens - 1); ITL = gaps between tokens; E2EL = last token minus send time
(all ms in reports); goodput = completed requests meeting every SLO per second. Arrivals: trace times, or a gamma
process with mean rate ``request_rate`` and shape ``burstiness`` (1.0 = Poisson), as vLLM's ``--burstiness``.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

from pitstop.workloads.lengths import percentile


@dataclass
class RequestResult:
    """What one request measured (seconds, relative to the run's start for ``start_s``)."""

    ok: bool
    start_s: float = 0.0
    prompt_len: int = 0
    output_len: int = 0
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    chunk_times_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_s(self) -> float:
        return (self.e2el_s - self.ttft_s) / (self.output_len - 1) if self.output_len > 1 else 0.0


def gamma_arrivals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Arrival times (s) with gamma inter-arrival gaps: mean ``1/rate``, shape ``burstiness``."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


def parse_slo(text: str | None) -> dict[str, float]:
    """``"ttft=2000,tpot=200,e2el=20000"`` (ms) -> ``{"ttft": 2000.0, ...}``."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            if k.strip() not in ("ttft", "tpot", "e2el"):
                raise ValueError(f"--slo: unknown metric {k!r} (use ttft, tpot, e2el)")
            out[k.strip()] = float(v)
    return out


def meets_slo(r: RequestResult, slo: dict[str, float]) -> bool:
    vals = {"ttft": r.ttft_s * 1e3, "tpot": r.tpot_s * 1e3, "e2el": r.e2el_s * 1e3}
    return r.ok and all(vals[k] <= v for k, v in slo.items())


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {"mean": sum(xs) / len(xs), "median": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99)}


def summarize(results: list[RequestResult], wall_s: float, slo: dict[str, float]) -> dict:
    """vLLM-style summary: counts, throughputs (per s), latency stats in ms, goodput and SLO attainment."""
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_len for r in done)
    in_tokens = sum(r.prompt_len for r in done)
    good = [r for r in done if meets_slo(r, slo)]
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": wall_s,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(done) / wall_s, "input_throughput": in_tokens / wall_s,
        "output_throughput": out_tokens / wall_s, "total_token_throughput": (in_tokens + out_tokens) / wall_s,
        "goodput": len(good) / wall_s if slo else None,
        "slo_attainment": len(good) / len(results) if slo and results else None,
        "ttft_ms": _stats([r.ttft_s * 1e3 for r in done]),
        "tpot_ms": _stats([r.tpot_s * 1e3 for r in done if r.output_len > 1]),
        "itl_ms": _stats([x * 1e3 for r in done for x in r.itl_s]),
        "e2el_ms": _stats([r.e2el_s * 1e3 for r in done]),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def results_json(results: list[RequestResult]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k not in ("itl_s", "chunk_times_s")} | {"tpot_s": r.tpot_s}
            for r in results]
