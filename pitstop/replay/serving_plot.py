"""PNG of a ``pitstop bench serve`` result: TTFT / TPOT / E2EL CDFs per server and rate, output tokens/s over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _cdf(ax, xs: list[float], label: str) -> None:
    xs = sorted(xs)
    if xs:
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label)


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (a_ttft, a_tpot), (a_e2el, a_tput) = axes
    for server, runs in result["servers"].items():
        for key, run in runs.items():
            res = [r for r in run["_results"] if r.ok]
            label = f"{server} @ {key} req/s"
            _cdf(a_ttft, [r.ttft_s * 1e3 for r in res], label)
            _cdf(a_tpot, [r.tpot_s * 1e3 for r in res if r.output_len > 1], label)
            _cdf(a_e2el, [r.e2el_s * 1e3 for r in res], label)
            times = [t for r in res for t in r.chunk_times_s]
            if times:
                n = int(max(times)) + 1
                bins = [0] * n
                for t in times:
                    bins[int(t)] += 1
                a_tput.plot(range(n), bins, label=label)
    for ax, title in ((a_ttft, "TTFT (ms)"), (a_tpot, "TPOT (ms)"), (a_e2el, "E2EL (ms)")):
        ax.set_xlabel(title)
        ax.set_ylabel("CDF")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    a_tput.set_xlabel("time (s)")
    a_tput.set_ylabel("text chunks (~output tokens) / s")
    a_tput.grid(alpha=0.3)
    a_tput.legend(fontsize=7)
    a_ttft.legend(fontsize=7)
    wl = result.get("workload", {})
    fig.suptitle(f"pitstop bench serve: {wl.get('trace')} (length scale {wl.get('length_scale', 1):.3g})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
