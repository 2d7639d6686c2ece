"""Sanity of the simulator against published effects (benchmark, not a test):

1. Sarathi-Serve (OSDI'24): chunked prefill (stall-free batching, chunk 2048) vs prefill-first without chunking
   (the whole prompt in one step) at the same request rates: chunking should lower TPOT tails at about equal
   throughput, and may raise TTFT.
2. Mooncake (FAST'25) / SGLang router: on Mooncake's conversation trace (real prefix sharing through hash_ids),
   prefix-affinity routing should raise the prefix-cache hit rate and lower TTFT vs round-robin.

Prefill/decode disaggregation (DistServe) is not simulated yet.

    .venv/bin/python benchmarks/simulate_sanity.py [--output results/sim_sanity.json]
"""

from __future__ import annotations

import argparse
import json

from pitstop.sim.simulator import SimConfig, effective_max_model_len, model_facts, simulate
from pitstop.sim.workload import WorkloadOptions, build_sim_workload


def _row(label: str, s: dict) -> str:
    return (f"{label:<34} {s['output_throughput']:>9.0f} {s['ttft_ms']['median']:>8.0f} {s['ttft_ms']['p99']:>8.0f} "
            f"{s['tpot_ms']['median']:>7.1f} {s['tpot_ms']['p99']:>7.1f} {s['prefix_cache_hit_rate']:>6.3f}")


HEADER = f"{'run':<34} {'out tok/s':>9} {'TTFT p50':>8} {'TTFT p99':>8} {'TPOT p50':>7} {'TPOT p99':>7} {'hit':>6}"


def chunked_vs_prefill_first(rates: list[float], n: int) -> dict:
    out = {}
    print("\n[1] chunked prefill vs prefill-first, azure-conv, 1 x H100, Llama-3.1-8B (ms)\n" + HEADER)
    for rate in rates:
        for label, chunked, budget in (("prefill-first (no chunking)", False, 16384), ("chunked 2048", True, 2048)):
            cfg = SimConfig(max_model_len=16384, enable_chunked_prefill=chunked, max_num_batched_tokens=budget,
                            record_steps=False)
            reqs, _ = build_sim_workload("azure-conv", WorkloadOptions(num_requests=n, request_rate=rate, seed=1),
                                         model_facts(cfg)[0], effective_max_model_len(cfg))
            res, _ = simulate(cfg, reqs)
            out[f"{label} @ {rate}"] = res["summary"]
            print(_row(f"{label} @ {rate:g} req/s", res["summary"]))
    return out


def routers_on_mooncake(n: int, replicas: int, time_scale: float) -> dict:
    out = {}
    print(f"\n[2] routers, Mooncake first {n} requests x time scale {time_scale}, {replicas} x H100, Llama-3.1-8B (ms)\n"
          + HEADER)
    for router in ("round-robin", "least-loaded", "prefix-affinity", "two-choice"):
        cfg = SimConfig(replicas=replicas, router=router, record_steps=False, record_token_times=False)
        reqs, _ = build_sim_workload("mooncake", WorkloadOptions(num_requests=n, time_scale=time_scale),
                                     model_facts(cfg)[0], effective_max_model_len(cfg))
        res, _ = simulate(cfg, reqs)
        out[router] = res["summary"]
        print(_row(router, res["summary"]) + f"   ({res['sim']['wall_s']:.0f} s wall)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="4,8,12")
    p.add_argument("--num-requests", type=int, default=1500)
    p.add_argument("--mooncake-requests", type=int, default=2000)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--time-scale", type=float, default=0.5)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    res = {"chunked_vs_prefill_first": chunked_vs_prefill_first([float(x) for x in a.rates.split(",")],
                                                                a.num_requests),
           "routers_mooncake": routers_on_mooncake(a.mooncake_requests, a.replicas, a.time_scale)}
    if a.output:
        with open(a.output, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
