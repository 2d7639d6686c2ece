"""The ``pitstop simulate`` runs that ``pitstop.sim.simulator.simulate`` cannot build: ``--workload agents``
(closed-loop agent programs, ``pitstop.sim.agents``) and ``--disaggregation P:D`` (prefill/decode pools,
``pitstop.sim.disagg``), alone or together. Same outputs as a plain run (JSON with the same summary keys, PNG,
Chrome trace), plus ``agents`` (``pitstop bench agents``'s per-run summary), ``programs`` (per-turn records) and
``disaggregation`` (transfer counters)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def program_args(args: argparse.Namespace, max_model_len: int) -> argparse.Namespace:
    """The namespace ``pitstop.bench.agents.load_programs`` reads, from ``pitstop simulate``'s options
    (``--time-scale`` scales tool times, 1.0 when not given; programs are clipped to the engine's context)."""
    return argparse.Namespace(
        trace=args.trace, trace_path=args.trace_path, datasets=args.datasets, tool_time=args.tool_time,
        num_programs=args.num_programs, seed=args.seed, min_turns=args.min_turns, max_turns=args.max_turns,
        token_scale=args.token_scale, time_scale=1.0 if args.time_scale is None else args.time_scale,
        max_tool_time=args.max_tool_time, max_model_len=max_model_len, program_rate=args.program_rate)


def _jct_line(s: dict) -> str:
    j = s.get("jct_s")
    if not j:
        return ""
    return (f"JCT mean/p50/p90/p99 {j['mean']:.2f}/{j['median']:.2f}/{j['p90']:.2f}/{j['p99']:.2f} s over "
            f"{s['num_programs']} programs")


def run_extended(args: argparse.Namespace, cfg) -> int:
    from pitstop.cli.simulate import _line, _options, save_run
    from pitstop.sim.simulator import build_cluster, effective_max_model_len, model_facts, run_cluster
    from pitstop.sim.workload import build_sim_workload

    num_prefill = None
    if args.disaggregation:
        from pitstop.sim.disagg import parse_disaggregation
        num_prefill, num_decode = parse_disaggregation(args.disaggregation)
        cfg = replace(cfg, replicas=num_prefill + num_decode)
    vocab = model_facts(cfg)[0]
    mml = effective_max_model_len(cfg)
    cluster = build_cluster(cfg)
    if num_prefill is not None:
        from pitstop.sim.disagg import build_disagg_cluster
        cluster = build_disagg_cluster(cluster, num_prefill, cfg.router, cfg.router_kwargs, cfg.model,
                                       args.kv_link_gbps)
    driver = None
    if args.workload == "agents":
        from pitstop.bench.agents import load_programs
        from pitstop.sim.agents import AgentDriver
        from pitstop.workloads.agent_program import poisson_program_arrivals
        programs, info = load_programs(program_args(args, mml))
        arrivals = poisson_program_arrivals(len(programs), args.program_rate, args.seed)
        driver = AgentDriver(cluster, programs, arrivals, args.seed, vocab)
        reqs, num_sent = driver.first_requests(), driver.num_turns_planned
    else:
        reqs, info = build_sim_workload(args.workload, _options(args), vocab, mml)
        num_sent = len(reqs)
    print(f"workload: {json.dumps(info)}", flush=True)
    res, finished = run_cluster(cfg, cluster, reqs, num_sent)
    res["workload"] = info
    redact = driver is not None and args.trace == "agentcgroup"  # GPL-2.0 trace: no per-turn trace values out
    if driver is not None:
        from pitstop.bench.agents import records_json
        from pitstop.sim.agents import agent_summary
        res["agents"] = agent_summary(driver, cluster)
        res["programs"] = records_json(driver.records, redact=redact)
    if num_prefill is not None:
        res["disaggregation"] = cluster.dstats.as_dict()
    print(_line(res), flush=True)
    if driver is not None:
        a = res["agents"]
        print(f"{_jct_line(res['summary'])}; {a['programs_completed']}/{a['programs_total']} programs, "
              f"re-prefilled {a['reprefilled_tokens']} tok, prefix hit {a['prefix_hit_rate']:.3f}", flush=True)
    if num_prefill is not None:
        d = res["disaggregation"]
        print(f"disaggregation {args.disaggregation}: {d['transfers']} KV transfers, "
              f"{d['transfer_bytes'] / 1e9:.2f} GB, mean {d['transfer_s_mean'] * 1e3:.2f} ms at {d['link_gbps']:g} "
              f"Gb/s, decode-side recomputed prompt tokens {d['decode_recomputed_prompt_tokens']}", flush=True)
    if args.output:
        save_run(Path(args.output), res, finished, info, cluster.replicas, trace=not args.no_trace,
                 program_records=driver.records if driver else None, redact_programs=redact)
    return 0
