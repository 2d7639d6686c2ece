"""The soak traffic's max rate: ``benchmarks/soak.py``'s mix at rising rates, a fresh server each, short runs.

A rate is sustained when the TTFT p50 of the requests sent in the run stays within ``--ttft-slo`` seconds (the
queue does not build up); the max rate is the highest sustained one. The long soak then runs at about 80% of it.
Writes a JSON list, one row per rate: offered rate, 2xx responses per second, TTFT p50/p99 (s), the most waiting
requests sampled, sustained or not.

Usage: ``.venv/bin/python benchmarks/soak_max_rate.py [--rates 1 1.5 2 2.5 3] [--minutes 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402  (the soak run's traffic and server, unchanged)


def measure(rate: float, minutes: float, out_dir: Path, slo_s: float) -> dict:
    args = soak.parse_args(["--minutes", str(minutes), "--rate", str(rate), "--window-minutes", str(minutes),
                            "--idle-timeout", "5", "--memory-every", "1000",
                            "--output", str(out_dir / f"rate_{rate:g}.json")])
    res = asyncio.run(soak.main_async(args))
    ttfts = sorted(v for _, v in res["ttfts"])
    p50 = statistics.median(ttfts) if ttfts else float("inf")
    return {"rate": rate, "ok_per_s": res["statuses"].get("2xx", 0) / (minutes * 60), "ttft_p50_s": p50,
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("inf"),
            "max_waiting": max(s["num_waiting"] for s in res["series"]), "num_5xx": res["num_5xx"],
            "sustained": p50 <= slo_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT p50 (s) a sustained rate keeps")
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "soak" / "max_rate.json"))
    args = p.parse_args(argv)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for rate in args.rates:
        rows.append(measure(rate, args.minutes, Path(tempfile.gettempdir()), args.ttft_slo))
        print(json.dumps(rows[-1]), flush=True)
        if not rows[-1]["sustained"]:
            break
    sustained = [r["rate"] for r in rows if r["sustained"]]
    summary = {"rows": rows, "ttft_slo_s": args.ttft_slo, "max_rate": max(sustained) if sustained else None}
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({"max_rate": summary["max_rate"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
