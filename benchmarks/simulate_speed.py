"""Speed of the simulator: the full Mooncake conversation trace (12,031 requests, one hour) on N simulated
replicas (default 8 x H100-SXM, Llama-3.1-8B, roofline cost model). Prints wall time, simulated events/s and
steps/s, and with --cprofile the Python functions that dominate (engine vs simulator).

    .venv/bin/python benchmarks/simulate_speed.py [--router prefix-affinity] [--num-requests N] [--cprofile]
        [--processes P]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

from pitstop.sim.simulator import SimConfig, effective_max_model_len, model_facts, simulate
from pitstop.sim.workload import WorkloadOptions, build_sim_workload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--router", default="round-robin")
    p.add_argument("--hardware", default="H100-SXM")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--num-requests", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--processes", type=int, default=1,
                   help="simulate groups of replicas in N forked processes (round-robin only; identical results)")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    cfg = SimConfig(model=args.model, hardware=args.hardware, replicas=args.replicas, router=args.router,
                    block_size=args.block_size, record_steps=False, record_token_times=False)
    t, c0 = time.perf_counter(), time.process_time()
    reqs, info = build_sim_workload("mooncake", WorkloadOptions(num_requests=args.num_requests),
                                    model_facts(cfg)[0], effective_max_model_len(cfg))
    prof = cProfile.Profile() if args.cprofile else None
    if prof:
        prof.enable()
    c1 = time.process_time()
    res, _ = simulate(cfg, reqs, processes=args.processes)
    if prof:
        prof.disable()
    s, sim = res["summary"], res["sim"]
    # CPU seconds of this process (+ its simulation processes with --processes): robust to other load on the cores
    sim["cpu_s"] = time.process_time() - c1 + sum(sim.get("process_cpu_s", []))
    sim["events_per_cpu_s"] = sim["events"] / sim["cpu_s"]
    load_s = c1 - c0
    print(json.dumps({"workload": info, "load_s": load_s, "sim": sim}, indent=1))
    print(f"{s['completed']} requests, simulated {sim['sim_time_s']:.0f} s in {sim['wall_s']:.1f} s wall, "
          f"{sim['cpu_s']:.1f} CPU s "
          f"({sim['events_per_s']:.0f} events/s, {sim['steps_per_s']:.0f} steps/s); TTFT p50 "
          f"{s['ttft_ms']['median']:.0f} ms, TPOT p50 {s['tpot_ms']['median']:.1f} ms, prefix hit "
          f"{s['prefix_cache_hit_rate']:.3f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(res, workload=info, load_s=load_s), f, indent=1, default=str)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
