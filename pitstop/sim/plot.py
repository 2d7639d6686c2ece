"""PNGs of simulated runs: one run (the serving benchmark's CDF panels, reused) and a sweep (throughput vs
latency)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(results: list, workload: dict, path: Path, label: str = "simulated") -> None:
    """TTFT / TPOT / E2EL CDFs and tokens/s over time, via ``pitstop.replay.serving_plot.plot``."""
    from pitstop.replay.serving_plot import plot
    wl = dict(workload, trace=f"{workload.get('workload')} (simulated)")
    plot({"servers": {label: {"trace": {"_results": results}}}, "workload": wl}, Path(path))


def plot_sweep(points: list[dict], key: str, path: Path) -> None:
    """Latency percentiles and throughput against the swept ``key`` (``request_rate`` or ``replicas``)."""
    xs = [p[key] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for metric, style in (("ttft_ms", "-o"), ("tpot_ms", "-s"), ("e2el_ms", "-^")):
        for q, alpha in (("median", 1.0), ("p90", 0.5)):
            a.plot(xs, [p["summary"][metric][q] for p in points], style, alpha=alpha, label=f"{metric[:-3]} {q}")
    a.set_xlabel(key)
    a.set_ylabel("ms")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    b.plot(xs, [p["summary"]["output_throughput"] for p in points], "-o", label="output tok/s")
    b2 = b.twinx()
    b2.plot(xs, [p["summary"]["slo_attainment"] or 0 for p in points], "--", color="gray", label="SLO attainment")
    b2.set_ylim(0, 1.05)
    b2.set_ylabel("SLO attainment")
    b.set_xlabel(key)
    b.set_ylabel("output tokens/s")
    b.grid(alpha=0.3)
    b.legend(loc="upper left", fontsize=7)
    fig.suptitle("pitstop simulate: sweep over " + key)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
