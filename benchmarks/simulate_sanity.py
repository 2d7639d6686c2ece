"""Sanity of the simulator against published effects (benchmark, not a test):

1. Sarathi-Serve (OSDI'24): chunked prefill (stall-free batching, chunk 2048) vs prefill-first without chunking
   (the whole prompt in one step) at the same request rates: chunking should lower TPOT tails at about equal
   throughput, and may raise TTFT.
2. Mooncake (FAST'25) / SGLang router: on Mooncake's conversation trace (real prefix sharing through hash_ids),
   prefix-affinity routing should raise the prefix-cache hit rate and lower TTFT vs round-robin.

3. DistServe (OSDI'24): prefill/decode disaggregation vs colocation with the same number of GPUs, under a tight
   TPOT SLO: disaggregation removes prefill-decode interference, so it should sustain a higher goodput (requests/s
   meeting both SLOs; DistServe: the highest rate with >= 90% SLO attainment) when prompts are long, at the cost
   of TTFT once the prefill pool saturates. Colocated replicas run chunked prefill (Sarathi-style), so this is
   against a stronger baseline than DistServe's (vLLM without chunking).

    .venv/bin/python benchmarks/simulate_sanity.py [--output results/sim_sanity.json]
    .venv/bin/python benchmarks/simulate_sanity.py --only disagg --pd-requests 300
"""

from __future__ import annotations

import argparse
import json

from pitstop.sim.disagg import build_disagg_cluster, parse_disaggregation
from pitstop.sim.simulator import SimConfig, build_cluster, effective_max_model_len, model_facts, run_cluster, simulate
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


PD_HEADER = (f"{'layout':<30} {'rate':>5} {'TTFT p50':>8} {'TTFT p99':>8} {'TPOT p50':>8} {'TPOT p90':>8} "
             f"{'TPOT p99':>8} {'SLO att':>7} {'goodput':>7}")


def _pd_run(layout: str, chunk: int, workload: str, opts: WorkloadOptions, slo: dict) -> dict:
    """One run: ``layout`` = ``"colocated N"`` or ``"P:D"`` (disaggregated), least-loaded routing."""
    if layout.startswith("colocated"):
        cfg = SimConfig(replicas=int(layout.split()[1]), router="least-loaded", max_num_batched_tokens=chunk,
                        record_steps=False, record_token_times=False, slo_ms=slo)
        reqs, _ = build_sim_workload(workload, opts, model_facts(cfg)[0], effective_max_model_len(cfg))
        res, _ = simulate(cfg, reqs)
        return res["summary"]
    p, d = parse_disaggregation(layout)
    cfg = SimConfig(replicas=p + d, router="least-loaded", max_num_batched_tokens=chunk, record_steps=False,
                    record_token_times=False, slo_ms=slo)
    reqs, _ = build_sim_workload(workload, opts, model_facts(cfg)[0], effective_max_model_len(cfg))
    cluster = build_disagg_cluster(build_cluster(cfg), p, cfg.router, {}, cfg.model)
    res, _ = run_cluster(cfg, cluster, reqs)
    return {**res["summary"], "disaggregation": cluster.dstats.as_dict()}


def disaggregation_vs_colocated(rates: list[float], n: int, gpus: int, tpot_ms: float, input_len: int,
                                output_len: int, azure_rates: list[float]) -> dict:
    """Colocated ``gpus`` replicas (chunked prefill 2048 and 512) vs disaggregated ``P:D`` with ``P + D = gpus``
    (the even split, and one more decode replica when ``gpus`` > 2), 1 x H100 each, Llama-3.1-8B; random
    prompts of ``input_len`` tokens / ``output_len`` outputs, and Azure-conv (short prompts) as a control."""
    slo = {"ttft": 2000.0, "tpot": tpot_ms}
    half = max(1, gpus // 2)
    layouts = [(f"colocated {gpus}", 2048), (f"colocated {gpus}", 512), (f"{half}:{gpus - half}", 2048)]
    if gpus > 2:
        layouts.append((f"{half - 1}:{gpus - half + 1}", 2048))
    out: dict = {"slo_ms": slo, "gpus": gpus, "runs": {}}
    cases = [("random", rates, dict(random_input_len=input_len, random_output_len=output_len)),
             ("azure-conv", azure_rates, {})]
    for workload, rlist, extra in cases:
        label = f"random {input_len} in / {output_len} out" if workload == "random" else "azure-conv"
        print(f"\n[3] disaggregation vs colocation, {label}, {gpus} x H100, Llama-3.1-8B, {n} requests, "
              f"SLO TTFT 2 s / TPOT {tpot_ms:g} ms (ms; goodput req/s)\n" + PD_HEADER)
        best: dict[str, float] = {}
        for rate in rlist:
            opts = WorkloadOptions(num_requests=n, request_rate=rate, seed=1, **extra)
            for layout, chunk in layouts:
                name = f"{layout}" + (f" (chunk {chunk})" if layout.startswith("colocated") else " (disagg)")
                s = _pd_run(layout, chunk, workload, opts, slo)
                out["runs"][f"{workload} | {name} @ {rate:g}"] = s
                if s["slo_attainment"] >= 0.9:
                    best[name] = max(best.get(name, 0.0), rate)
                print(f"{name:<30} {rate:>5g} {s['ttft_ms']['median']:>8.0f} {s['ttft_ms']['p99']:>8.0f} "
                      f"{s['tpot_ms']['median']:>8.1f} {s['tpot_ms']['p90']:>8.1f} {s['tpot_ms']['p99']:>8.1f} "
                      f"{s['slo_attainment']:>7.3f} {s['goodput']:>7.2f}", flush=True)
        print("highest rate with >= 90% SLO attainment: "
              + ", ".join(f"{k}: {best.get(k, 0.0):g}" for k in dict.fromkeys(
                  f"{l}" + (f" (chunk {c})" if l.startswith("colocated") else " (disagg)") for l, c in layouts)))
        out[f"max_rate_90pct_{workload}"] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="4,8,12")
    p.add_argument("--num-requests", type=int, default=1500)
    p.add_argument("--mooncake-requests", type=int, default=2000)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--time-scale", type=float, default=0.5)
    p.add_argument("--pd-rates", default="4,6,8,10,12", help="[3] request rates of the long-prompt workload")
    p.add_argument("--pd-azure-rates", default="8,16", help="[3] request rates of the Azure-conv control")
    p.add_argument("--pd-requests", type=int, default=300)
    p.add_argument("--pd-gpus", type=int, default=2, help="[3] GPUs (replicas) in every layout")
    p.add_argument("--pd-tpot-ms", type=float, default=15.0, help="[3] TPOT SLO (ms)")
    p.add_argument("--pd-input-len", type=int, default=4096)
    p.add_argument("--pd-output-len", type=int, default=256)
    p.add_argument("--only", choices=["chunked", "routers", "disagg"], default=None, help="run one experiment")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    res = {}
    if a.only in (None, "chunked"):
        res["chunked_vs_prefill_first"] = chunked_vs_prefill_first([float(x) for x in a.rates.split(",")],
                                                                   a.num_requests)
    if a.only in (None, "routers"):
        res["routers_mooncake"] = routers_on_mooncake(a.mooncake_requests, a.replicas, a.time_scale)
    if a.only in (None, "disagg"):
        res["disaggregation"] = disaggregation_vs_colocated(
            [float(x) for x in a.pd_rates.split(",")], a.pd_requests, a.pd_gpus, a.pd_tpot_ms, a.pd_input_len,
            a.pd_output_len, [float(x) for x in a.pd_azure_rates.split(",")])
    if a.output:
        with open(a.output, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
