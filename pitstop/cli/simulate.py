"""``pitstop simulate``: a workload on N simulated replicas of pitstop's own scheduler (see ``pitstop.sim``).

One pipeline: build the cluster (``--disaggregation P:D``: prefill and decode pools, ``pitstop.sim.disagg``), its
workload (a trace, or ``--workload agents``: closed-loop agent programs, ``pitstop.sim.agents``), run it, write the
JSON (summary; with agents also ``agents``, ``bench agents``'s per-run summary, and ``programs``, per-turn records;
with disaggregation ``disaggregation``, transfer counters), a PNG and a Chrome trace; or ``--sweep`` plain runs.

Examples:
    pitstop simulate --workload mooncake --hardware H100-SXM --model llama-3.1-8b --replicas 8 \\
        --router prefix-affinity --output results/sim_mooncake.json
    pitstop simulate --workload azure-conv --num-requests 2000 --sweep rate=2,4,8,16 --output results/sweep.json
    pitstop simulate --workload azure-conv --cost-model profiled --model smollm2-135m --kv-cache-tokens 40000
    pitstop simulate --workload agents --trace tracelab --replicas 2 --router program-affinity \\
        --scheduling-policy program-fcfs --ttl-policy continuum --output results/sim_agents.json
    pitstop simulate --workload azure-conv --disaggregation 1:1 --slo ttft=2000,tpot=20 --output results/pd.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="simulate a cluster of pitstop engines (cost model + virtual clock)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from pitstop.sim.routers import ROUTERS
    from pitstop.sim.workload import WORKLOADS
    w = p.add_argument_group("workload")
    w.add_argument("--workload", choices=(*WORKLOADS, "agents"), default="azure-conv",
                   help="a request trace, or agents: multi-turn agent programs (closed loop, see the agents group)")
    w.add_argument("--trace-path", default=None, help="trace file (default: full trace or vendored sample)")
    w.add_argument("--num-requests", type=int, default=None, help="a window of this many requests (default: all)")
    w.add_argument("--start", type=int, default=0, help="first request of the window")
    w.add_argument("--request-rate", type=float, default=None,
                   help="req/s, gamma arrivals (default: the trace's own timestamps; inf: all at once)")
    w.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrivals (1 = Poisson)")
    w.add_argument("--time-scale", type=float, default=None,
                   help="multiply trace timestamps (agents: every tool time; default 1.0)")
    w.add_argument("--length-scale", type=float, default=None, help="multiply prompt and output lengths")
    w.add_argument("--random-input-len", type=int, default=1024)
    w.add_argument("--random-output-len", type=int, default=128)
    w.add_argument("--seed", type=int, default=0)
    a = p.add_argument_group("agents (--workload agents; as pitstop bench agents)")
    a.add_argument("--trace", choices=["agentcgroup", "tracelab"], default="agentcgroup",
                   help="agentcgroup: ../shared/data/traces/agentcgroup_claude_code (GPL-2.0, read at run time) or "
                        "--trace-path; tracelab: the vendored 48-session replay CSV or --trace-path")
    a.add_argument("--datasets", default="all_images_local", help="agentcgroup datasets, comma list or 'all'")
    a.add_argument("--tool-time", choices=["tool_max", "gap"], default="tool_max", help="agentcgroup tool time")
    a.add_argument("--num-programs", type=int, default=16)
    a.add_argument("--min-turns", type=int, default=4, help="draw only programs with at least this many turns")
    a.add_argument("--max-turns", type=int, default=16, help="keep at most this many turns per program")
    a.add_argument("--program-rate", type=float, default=0.5, help="program arrivals per second (Poisson)")
    a.add_argument("--token-scale", type=float, default=1.0, help="multiply every token count (default: trace scale)")
    a.add_argument("--max-tool-time", type=float, default=None, help="cap a scaled tool time (s)")
    c = p.add_argument_group("deployment")
    c.add_argument("--model", default="llama-3.1-8b", help="model config name or config.json path")
    c.add_argument("--hardware", default="H100-SXM", help="hardware spec name or YAML path")
    c.add_argument("--cost-model", choices=["roofline", "profiled"], default="roofline")
    c.add_argument("--profile", default=None, help="profiled fit JSON (default: next to the model config)")
    c.add_argument("--replicas", type=int, default=1)
    c.add_argument("--processes", type=int, default=1,
                   help="simulate replicas in this many forked processes when the router reads no replica state "
                        "(round-robin; identical results); ignored otherwise")
    c.add_argument("--tp", type=int, default=1, help="tensor-parallel devices per replica")
    c.add_argument("--router", choices=list(ROUTERS), default="round-robin")
    c.add_argument("--router-config", default=None, metavar="JSON",
                   help='the router\'s arguments as a JSON object, as pitstop serve\'s (e.g. \'{"index": "exact"}\': '
                        "match prefixes on the simulated engines' KV events)")
    c.add_argument("--migration", default=None, metavar="JSON",
                   help="move waiting programs' pinned KV from the most to the least loaded replica (Llumnix), with "
                        'these MigrationPolicy arguments, e.g. \'{"load_abs_threshold": 2}\' or \'{}\'')
    c.add_argument("--scheduling-policy", default="fcfs", help="fcfs, program-fcfs, plas, priority")
    c.add_argument("--ttl-policy", default="none", help="KV pins between program turns: none, fixed, continuum")
    c.add_argument("--ttl-seconds", type=float, default=None, help="fixed TTL / continuum upper bound (s)")
    c.add_argument("--block-size", type=int, default=16)
    c.add_argument("--max-num-seqs", type=int, default=256)
    c.add_argument("--max-num-batched-tokens", type=int, default=8192)
    c.add_argument("--max-model-len", type=int, default=None)
    c.add_argument("--kv-cache-tokens", type=int, default=None, help="KV tokens per replica (default: from memory)")
    c.add_argument("--no-prefix-caching", action="store_true")
    c.add_argument("--no-chunked-prefill", action="store_true")
    c.add_argument("--disaggregation", default=None, metavar="P:D",
                   help="prefill/decode disaggregation (DistServe): P prefill + D decode replicas (replaces "
                        "--replicas), KV sent over --kv-link-gbps")
    c.add_argument("--kv-link-gbps", type=float, default=None,
                   help="prefill->decode KV link per prefill replica, Gbit/s (default 400: one InfiniBand NDR port; "
                        "NVLink 4 is 3600)")
    c.add_argument("--speculative-config", type=_spec_json, default=None,
                   help='speculative decoding what-if as JSON: {"num_speculative_tokens": K, "acceptance_rate": a} '
                        "(a: probability that each draft is accepted given the ones before were; verify steps are "
                        "priced as K + 1 tokens per sequence)")
    o = p.add_argument_group("output")
    o.add_argument("--slo", default="ttft=2000,tpot=100", help="ms limits for goodput, e.g. ttft=2000,tpot=100")
    o.add_argument("--sweep", default=None, help="rate=1,2,4 or replicas=1,2,4,8: one run per value")
    o.add_argument("--output", default=None, help="JSON path; a PNG and a trace JSON with the same stem too")
    o.add_argument("--no-trace", action="store_true", help="do not write the Chrome trace-event JSON")
    o.add_argument("--no-itl", action="store_true", help="do not keep per-token times (saves memory; no ITL)")
    return p


def _config(args):
    from pitstop.replay.serving import parse_slo
    from pitstop.sim.simulator import SimConfig
    return SimConfig(model=args.model, hardware=args.hardware, cost_model=args.cost_model, profile=args.profile,
                     replicas=args.replicas, tp=args.tp, router=args.router,
                     router_kwargs=_json_object(args.router_config, "--router-config"),
                     migration=None if args.migration is None else _json_object(args.migration, "--migration"),
                     scheduling_policy=args.scheduling_policy, ttl_policy=args.ttl_policy,
                     ttl_seconds=args.ttl_seconds, block_size=args.block_size,
                     max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                     enable_prefix_caching=not args.no_prefix_caching,
                     enable_chunked_prefill=not args.no_chunked_prefill, max_model_len=args.max_model_len,
                     kv_cache_tokens=args.kv_cache_tokens, slo_ms=parse_slo(args.slo),
                     record_steps=not args.no_trace and args.output is not None,
                     record_token_times=not args.no_itl, speculative_config=args.speculative_config)


def _spec_json(text: str) -> dict:
    """``--speculative-config``: a JSON object, checked as ``SpeculativeConfig`` with the simulator's method."""
    import json

    from pitstop.config import SpeculativeConfig
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        SpeculativeConfig.parse(dict(value, method="simulated"))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _json_object(text: str | None, flag: str) -> dict:
    """``text`` parsed as a JSON object ({} when None). Raises ValueError naming ``flag`` otherwise."""
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{flag}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return obj


def _options(args, rate=None):
    from pitstop.sim.workload import WorkloadOptions
    return WorkloadOptions(num_requests=args.num_requests, start=args.start,
                           request_rate=rate if rate is not None else args.request_rate,
                           burstiness=args.burstiness, time_scale=args.time_scale, length_scale=args.length_scale,
                           random_input_len=args.random_input_len, random_output_len=args.random_output_len,
                           seed=args.seed, trace_path=args.trace_path)


def _line(res: dict) -> str:
    s, sim = res["summary"], res["sim"]
    return (f"{s['completed']} done, {s['request_throughput']:.2f} req/s, {s['output_throughput']:.0f} out tok/s, "
            f"TTFT p50/p90 {s['ttft_ms']['median']:.0f}/{s['ttft_ms']['p90']:.0f} ms, "
            f"TPOT p50/p90 {s['tpot_ms']['median']:.1f}/{s['tpot_ms']['p90']:.1f} ms, "
            f"E2EL p50 {s['e2el_ms']['median']:.0f} ms, goodput {s['goodput'] or 0:.2f} req/s, "
            f"prefix hit {s['prefix_cache_hit_rate']:.2f} | {sim['events']} events in {sim['wall_s']:.1f} s wall "
            f"({sim['events_per_s']:.0f} events/s, {sim['sim_time_s']:.0f} s simulated)")


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


def run(args: argparse.Namespace) -> int:
    """One run (a trace, or agent programs closed-loop; colocated or ``--disaggregation P:D``), or a ``--sweep``."""
    from pitstop.sim.simulator import build_cluster, effective_max_model_len, model_facts, run_cluster
    from pitstop.sim.workload import build_sim_workload

    cfg = _config(args)
    if args.sweep:
        if args.disaggregation or args.workload == "agents":
            raise ValueError("--sweep is not supported with --workload agents or --disaggregation (one run each)")
        return _sweep(args, cfg)
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
    res, finished = run_cluster(cfg, cluster, reqs, num_sent, processes=args.processes)
    res["workload"] = info
    redact = driver is not None and args.trace == "agentcgroup"  # GPL-2.0 trace: no per-turn trace values out
    if driver is not None:
        from pitstop.replay.agent_summary import records_json
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


def _sweep(args: argparse.Namespace, cfg) -> int:
    """``--sweep rate=...`` or ``replicas=...``: one plain run per value, a JSON of all and a PNG."""
    from pitstop.sim.simulator import effective_max_model_len, model_facts, simulate
    from pitstop.sim.workload import build_sim_workload

    vocab = model_facts(cfg)[0]
    mml = effective_max_model_len(cfg)
    out = Path(args.output) if args.output else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    key, _, values = args.sweep.partition("=")
    if key not in ("rate", "replicas") or not values:
        raise ValueError("--sweep takes rate=V1,V2,... or replicas=N1,N2,...")
    points = []
    for v in values.split(","):
        run_cfg, rate = cfg, None
        if key == "rate":
            rate = float(v)
        else:
            run_cfg = replace(cfg, replicas=int(v))
        run_cfg = replace(run_cfg, record_steps=False)
        reqs, info = build_sim_workload(args.workload, _options(args, rate), vocab, mml)
        res, _ = simulate(run_cfg, reqs)
        res["workload"] = info
        point = {**res, ("request_rate" if key == "rate" else "num_replicas"): rate if key == "rate" else int(v)}
        points.append(point)
        print(f"[{key}={v}] {_line(res)}", flush=True)
    if out:
        from pitstop.sim.plot import plot_sweep
        xkey = "request_rate" if key == "rate" else "num_replicas"
        out.write_text(json.dumps({"sweep": key, "points": points}, indent=1, default=_json))
        plot_sweep(points, xkey, out.with_suffix(".png"))
        print(f"saved {out} and {out.with_suffix('.png')}")
    return 0


def save_run(out: Path, res: dict, finished: list, info: dict, replicas: list, trace: bool = True,
             program_records: list | None = None, redact_programs: bool = False) -> None:
    """Write a run's JSON (``out``), its PNG (latency CDFs, next to it) and, with ``trace``, its Chrome
    trace-event JSON (``<stem>.trace.json``: replica steps, and program phases when ``program_records``)."""
    from pitstop.sim.metrics import to_results
    from pitstop.sim.plot import plot_run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=_json))
    plot_run(to_results(finished, min((f.arrival_s for f in finished), default=0.0)), info, out.with_suffix(".png"))
    saved = [str(out), str(out.with_suffix(".png"))]
    if trace:
        from pitstop.sim.trace_events import write_trace
        tpath = out.with_name(out.stem + ".trace.json")
        write_trace(tpath, replicas, program_records=program_records, redact_programs=redact_programs)
        saved.append(str(tpath))
    print("saved " + ", ".join(saved))


def _json(x):
    """``json.dumps`` fallback: anything it cannot encode is written as its ``str``."""
    return str(x)
