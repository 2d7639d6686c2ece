"""Ray Serve's own overhead (issue 17): one engine replica served by Ray (``pitstop serve --replicas 1
--ray-address local``: HTTP proxy -> ingress deployment -> replica deployment) vs the single-process server
(``pitstop serve --replicas 1``), same engine flags, same load (``pitstop bench serve --trace azure-conv`` at fixed
rates). Each server runs under ``taskset -c 0`` (Ray's processes inherit it), the load generator under
``taskset -c 1``.

    flock /work/bench.lock python benchmarks/ray_overhead.py --output benchmarks/ray/overhead.json

See benchmarks/README.md, "Replica routers on Ray Serve (issue 17)".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_routers import MODEL, PY, log, start_server, stop_server  # noqa: E402

SERVERS = [("single-process", []), ("ray", ["--ray-address", "local"])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--logdir", default="/tmp")
    p.add_argument("--rates", default="1,2")
    p.add_argument("--num-requests", type=int, default=60)
    p.add_argument("--length-scale", type=float, default=0.2)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-memory", default="512MiB")
    a = p.parse_args(argv)
    engine = ["--model", MODEL, "--dtype", "float32", "--num-threads", "1", "--kv-cache-memory", a.kv_cache_memory,
              "--max-model-len", str(a.max_model_len), "--replicas", "1"]
    out: dict = {"engine_flags": engine, "servers": {}}
    for name, extra in SERVERS:
        proc, url = start_server(engine + extra, Path(a.logdir) / f"serve_overhead_{name}.log", cpus="0")
        save = Path(a.logdir) / f"overhead_{name}.json"
        cmd = ["taskset", "-c", "1", PY, "-m", "pitstop.cli.main", "bench", "serve", "--base-url", url,
               "--model", MODEL, "--trace", "azure-conv", "--num-requests", str(a.num_requests),
               "--length-scale", str(a.length_scale), "--rates", a.rates, "--max-model-len", str(a.max_model_len),
               "--slo", "ttft=2000,tpot=250", "--save-result", str(save)]
        try:
            log("load: " + " ".join(cmd))
            t = time.time()
            subprocess.run(cmd, check=True)
            log(f"{name}: {time.time() - t:.0f} s")
        finally:
            stop_server(proc)
        res = json.loads(save.read_text())
        runs = res["servers"]["pitstop"]
        out["workload"] = res["workload"]
        out["load_command"] = " ".join(cmd[:8] + ["URL"] + cmd[9:-2])
        out["servers"][name] = {"server_command": "taskset -c 0 pitstop serve " + " ".join(engine + extra),
                                "runs": {k: v["summary"] for k, v in runs.items()}}
        Path(a.output).write_text(json.dumps(out, indent=1, default=str))
    print("| server | rate (req/s) | completed | TTFT mean / p50 / p90 (ms) | TPOT mean / p50 / p90 (ms) | "
          "E2EL p50 (ms) | out tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name, srv in out["servers"].items():
        for rate, s in srv["runs"].items():
            t, q = s["ttft_ms"], s["tpot_ms"]
            print(f"| {name} | {rate} | {s['completed']}/{s['completed'] + s['failed']} | {t['mean']:.0f} / "
                  f"{t['median']:.0f} / {t['p90']:.0f} | {q['mean']:.1f} / {q['median']:.1f} / {q['p90']:.1f} | "
                  f"{s['e2el_ms']['median']:.0f} | {s['output_throughput']:.1f} |")
    single, ray = out["servers"].get("single-process"), out["servers"].get("ray")
    if single and ray:
        out["overhead"] = {}
        for rate in single["runs"]:
            if rate in ray["runs"]:
                a_, b_ = single["runs"][rate], ray["runs"][rate]
                out["overhead"][rate] = {f"{m}.{q}_ms": b_[m][q] - a_[m][q] for m in ("ttft_ms", "tpot_ms", "e2el_ms")
                                         for q in ("mean", "median", "p90")}
                print(f"rate {rate}: Ray - single: " + ", ".join(f"{k} {v:+.1f}" for k, v in out["overhead"][rate].items()))
        Path(a.output).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
