"""PNG of a ``pitstop bench agents`` result: JCT CDF per policy, and a timeline of a few programs per
policy (queued / LLM / tool phases of every turn). Works on the saved JSON too:
``python -m pitstop.bench.agents_plot result.json`` rewrites ``result.png``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASE_COLORS = {"queued": "tab:red", "LLM": "tab:blue", "tool": "tab:green"}


def plot(result: dict, path: Path, timeline_programs: int = 6) -> None:
    """``result["runs"][name]["programs"]``: the per-program dicts of ``records_json``."""
    runs = result["runs"]
    n = len(runs)
    fig, axes = plt.subplots(1 + n, 1, figsize=(12, 3.2 * (1 + n)), squeeze=False)
    ax = axes[0][0]
    for name, run in runs.items():
        progs = run["programs"]
        jcts = sorted(p["jct_s"] for p in progs if p["jct_s"] is not None)
        if jcts:  # the denominator is every program: unfinished ones never reach the curve
            ax.plot(jcts, [(i + 1) / len(progs) for i in range(len(jcts))], drawstyle="steps-post",
                    label=f"{name} ({len(jcts)}/{len(progs)} finished)")
    ax.set_xlabel("program JCT (s)")
    ax.set_ylabel("CDF (all programs)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    wl = result.get("workload", {})
    sc = wl.get("scale", {})
    ax.set_title(f"pitstop bench agents: {wl.get('trace')}, {wl.get('summary', {}).get('num_programs')} programs, "
                 f"{wl.get('program_rate_per_s')} programs/s, token scale {sc.get('token_scale')}, "
                 f"time scale {sc.get('time_scale')}", fontsize=9)
    xmax = max((t["finished_s"] for run in runs.values() for p in run["programs"][:timeline_programs]
                for t in p["turns"] if t["finished_s"] is not None), default=1.0)
    for row, (name, run) in enumerate(runs.items(), start=1):
        ax = axes[row][0]
        progs = run["programs"][:timeline_programs]
        for y, p in enumerate(progs):
            for phase, segs in _phases(p["turns"]).items():
                ax.broken_barh(segs, (y - 0.4, 0.8), facecolors=PHASE_COLORS[phase], linewidth=0)
        ax.set_yticks(range(len(progs)))
        ax.set_yticklabels([p["program_id"][-28:] for p in progs], fontsize=7)
        ax.set_xlabel("time (s)")
        ax.set_xlim(0, xmax * 1.02)
        ax.set_title(f"{name}: first {len(progs)} programs (red queued, blue LLM, green tool)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _phases(turns: list[dict]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"queued": [], "LLM": [], "tool": []}
    for k, t in enumerate(turns):
        if t["finished_s"] is None:
            continue
        sched = t["first_scheduled_s"] if t["first_scheduled_s"] is not None else t["arrival_s"]
        out["queued"].append((t["arrival_s"], max(0.0, sched - t["arrival_s"])))
        out["LLM"].append((sched, max(0.0, t["finished_s"] - sched)))
        if k + 1 < len(turns):
            out["tool"].append((t["finished_s"], max(0.0, turns[k + 1]["arrival_s"] - t["finished_s"])))
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1])
    plot(json.loads(src.read_text()), src.with_suffix(".png"))
