"""Request-length samples: the ``RequestSpec`` record and helpers to draw, scale and re-time them.

A workload is a list of ``RequestSpec`` (arrival time in seconds, prompt length and output length in
tokens). Loaders for real traces live in ``azure.py`` and ``sharegpt.py``; this module holds what is
common: sampling, scaling lengths to fit a model's context, scaling time, and synthetic workloads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload.

    Attributes:
        arrival_s: arrival time in seconds from the start of the trace (0.0 for traces without times).
        input_len: prompt length in tokens (>= 1).
        output_len: number of tokens to generate (>= 1).
    """

    arrival_s: float
    input_len: int
    output_len: int

    @property
    def total_len(self) -> int:
        """Prompt plus output length, in tokens."""
        return self.input_len + self.output_len


def traces_dir_candidates(name: str) -> list[Path]:
    """Folders where trace ``name`` (e.g. ``"azure2023"``) may live, in order of preference.

    First the full upstream copy at ``<repo>/../shared/data/traces/<name>`` (present in the development
    checkout), then the small sample vendored in the package at ``pitstop/data/traces/<name>``.
    """
    pkg = Path(__file__).resolve().parents[1]
    repo = pkg.parent
    return [repo.parent / "shared" / "data" / "traces" / name, pkg / "data" / "traces" / name]


def default_trace_path(name: str, filename: str) -> Path:
    """Path of ``filename`` in trace folder ``name``: the full file if present, else the vendored sample."""
    for folder in traces_dir_candidates(name):
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(f"trace file {name}/{filename} not found in {traces_dir_candidates(name)}")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def length_scale_factor(specs: Sequence[RequestSpec], max_model_len: int, headroom: float = 0.9,
                        q: float = 99.0) -> float:
    """One factor that shrinks a workload's lengths to fit a context of ``max_model_len`` tokens.

    factor = ``max_model_len * headroom / p{q}(input_len + output_len)``, capped at 1.0 (lengths are never
    stretched). With the defaults, 99% of the requests fit in 90% of the context after scaling; the rest are
    clipped by ``scale_lengths``.
    """
    p = percentile([s.total_len for s in specs], q)
    return min(1.0, max_model_len * headroom / p) if p > 0 else 1.0


def scale_lengths(specs: Sequence[RequestSpec], max_model_len: int,
                  factor: float | None = None) -> tuple[list[RequestSpec], float]:
    """Multiply every prompt and output length by one factor so requests fit ``max_model_len`` tokens.

    Args:
        specs: the workload.
        max_model_len: the model's context, in tokens (prompt + output must fit).
        factor: the factor to use; None computes it with ``length_scale_factor`` (p99-based, <= 1.0).

    Returns:
        (scaled specs, factor). Each length is rounded, at least 1 token; the prompt is clipped to
        ``max_model_len - 1`` and the output to what is left of the context. Arrival times are kept.
    """
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    if factor is None:
        factor = length_scale_factor(specs, max_model_len)
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    out = []
    for s in specs:
        inp = min(max(1, round(s.input_len * factor)), max_model_len - 1)
        outp = min(max(1, round(s.output_len * factor)), max_model_len - inp)
        out.append(replace(s, input_len=inp, output_len=outp))
    return out, factor


def scale_time(specs: Sequence[RequestSpec], factor: float) -> list[RequestSpec]:
    """Multiply arrival times by ``factor`` (< 1 compresses the trace: a higher request rate)."""
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return [replace(s, arrival_s=s.arrival_s * factor) for s in specs]


def scale_time_to_rate(specs: Sequence[RequestSpec], rate_rps: float) -> tuple[list[RequestSpec], float]:
    """Re-time a trace to a mean rate of ``rate_rps`` requests/s; returns (specs, time factor used)."""
    span = max(s.arrival_s for s in specs) - min(s.arrival_s for s in specs) if specs else 0.0
    if len(specs) < 2 or span <= 0:
        raise ValueError("need at least two requests with distinct arrival times to rescale the rate")
    current = (len(specs) - 1) / span
    factor = current / rate_rps
    return scale_time(specs, factor), factor


def rebase_time(specs: Sequence[RequestSpec]) -> list[RequestSpec]:
    """Shift arrival times so the first request arrives at 0.0 s (order kept)."""
    if not specs:
        return []
    t0 = min(s.arrival_s for s in specs)
    return [replace(s, arrival_s=s.arrival_s - t0) for s in specs]


def poisson_arrivals(specs: Sequence[RequestSpec], rate_rps: float, seed: int = 0) -> list[RequestSpec]:
    """Give requests Poisson arrivals (exponential gaps, mean ``1/rate_rps`` s) in their current order."""
    if rate_rps <= 0:
        raise ValueError(f"rate_rps must be > 0, got {rate_rps}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for s in specs:
        out.append(replace(s, arrival_s=t))
        t += rng.expovariate(rate_rps)
    return out


def sample_specs(specs: Sequence[RequestSpec], n: int, seed: int = 0,
                 contiguous: bool = False) -> list[RequestSpec]:
    """Draw ``n`` requests with a seeded RNG.

    ``contiguous=False``: a random sample without replacement (with replacement if ``n > len(specs)``),
    sorted by arrival time. ``contiguous=True``: a window of ``n`` consecutive requests starting at a random
    offset (keeps the trace's burstiness; for serving replays), rebased to start at 0 s.
    """
    if n < 1 or not specs:
        raise ValueError(f"need n >= 1 and a non-empty workload, got n={n}, {len(specs)} specs")
    rng = random.Random(seed)
    if contiguous and n <= len(specs):
        start = rng.randrange(len(specs) - n + 1)
        return rebase_time(specs[start:start + n])
    if n <= len(specs):
        picked = rng.sample(list(specs), n)
    else:
        picked = [rng.choice(specs) for _ in range(n)]
    return sorted(picked, key=lambda s: s.arrival_s)


def random_specs(n: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                 seed: int = 0) -> list[RequestSpec]:
    """Synthetic workload: lengths uniform in ``[len * (1 - range_ratio), len * (1 + range_ratio)]``.

    Same convention as vLLM's ``random`` dataset; all arrivals at 0.0 s.
    """
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    rng = random.Random(seed)

    def draw(mean: int) -> int:
        lo, hi = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
        return rng.randint(lo, hi)

    return [RequestSpec(0.0, draw(input_len), draw(output_len)) for _ in range(n)]


def summarize(specs: Sequence[RequestSpec]) -> dict[str, float]:
    """Counts and percentiles (tokens) of a workload, for reports."""
    ins = [s.input_len for s in specs]
    outs = [s.output_len for s in specs]
    return {
        "num_requests": len(specs),
        "input_tokens_total": sum(ins),
        "output_tokens_total": sum(outs),
        "input_p50": percentile(ins, 50), "input_p90": percentile(ins, 90), "input_max": max(ins),
        "output_p50": percentile(outs, 50), "output_p90": percentile(outs, 90), "output_max": max(outs),
    }
