"""``pitstop bench agents``'s command line: replay multi-turn agent programs and measure job completion time (JCT).

Each program (an agent session from a trace, ``pitstop/workloads/agent_program.py``) starts at a Poisson
arrival (``--program-rate``, seeded). Turn ``k``'s prompt = turn ``k-1``'s prompt + its generated tokens +
the turn's new tokens (random ids, seeded per program), so the prefix reuse between turns is what a real
agent produces. After each non-final turn the program sleeps the (scaled) tool time, then sends the next
turn. Backends:

- ``--backend engine`` (``agent_engine_replay``): in-process ``LLMEngine``; one loop steps the engine and releases timed events
  (program starts, tool completions) whose time has come. Request arrival times are the event times, so
  time the engine spends inside a step counts as queueing, as it would in a server.
- ``--backend http --base-url URL`` (``agent_http_replay``): any OpenAI-compatible ``/v1/completions`` (streamed, prompt as token
  ids), sending ``program_id`` / ``is_last_turn`` / ``tool_name`` and Continuum's ``job_id`` /
  ``is_last_step``; tool results are reported to ``POST /v1/programs/{id}/tool_result`` and programs ended
  with ``DELETE /v1/programs/{id}`` (errors there are ignored, so other servers work too).

``--compare fcfs+none,program-fcfs+continuum`` runs each ``scheduling_policy+ttl_policy`` combination on the
same seeded workload, a fresh engine each, and prints ratios against the first; the summary of a run is
``pitstop.replay.agent_summary``'s. See ``benchmarks/README.md`` ("Agent programs") for the metrics, the defaults
and why.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pitstop.bench.agent_engine_replay import call_optional, run_engine_backend
from pitstop.config import speculative_config_arg
from pitstop.bench.agent_http_replay import run_http_backend
from pitstop.replay.agent_replay import token_range
from pitstop.replay.agent_summary import records_json, step_summary, summarize_run
from pitstop.workloads.agent_program import (
    AgentProgram, poisson_program_arrivals, sample_programs, scale_programs, summarize_programs,
)


# ---- engines ----------------------------------------------------------------------------------------
def parse_combos(text: str) -> list[tuple[str, str]]:
    """``"fcfs+none,program-fcfs+continuum"`` -> ``[("fcfs", "none"), ("program-fcfs", "continuum")]``."""
    combos = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        sched, _, ttl = part.partition("+")
        combos.append((sched.strip(), (ttl or "none").strip()))
    if not combos:
        raise ValueError("--compare: give at least one scheduling+ttl combination")
    return combos


def _engine_kwargs(args: argparse.Namespace, scheduling_policy: str, ttl_policy: str) -> dict[str, Any]:
    """``EngineConfig`` fields shared by the real and the simulated engine of one policy combination."""
    kw: dict[str, Any] = dict(model=args.model, kv_cache_memory=kv_memory(args), block_size=args.block_size,
                              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                              max_num_batched_tokens=args.max_num_batched_tokens, seed=args.seed,
                              skip_tokenizer_init=True, scheduling_policy=scheduling_policy, ttl_policy=ttl_policy)
    if args.ttl_seconds is not None:
        kw["ttl_seconds"] = args.ttl_seconds
    if getattr(args, "speculative_config", None) is not None:
        kw["speculative_config"] = args.speculative_config
    return kw


def build_engine(args: argparse.Namespace, scheduling_policy: str, ttl_policy: str):
    """A fresh ``LLMEngine`` for one policy combination (token ids only: no tokenizer)."""
    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine

    return build_engine(EngineConfig(**_engine_kwargs(args, scheduling_policy, ttl_policy), dtype=args.dtype,
                                  num_threads=args.num_threads))


def build_sim_engine(args: argparse.Namespace, scheduling_policy: str, ttl_policy: str, cost_model=None):
    """An ``LLMEngine`` on a virtual clock whose steps take the time the simulator's cost model predicts
    (``cost_model``, default the one ``--cost-model``/``--hardware`` name, ``pitstop.sim``); no model is loaded. KV blocks from
    ``--kv-cache-memory`` and the model config's KV bytes per token in ``--dtype`` (``auto``: the dtype the real
    engine would choose on this CPU), by the real engine's computation, so the same flags give the same capacity
    and the same errors. Returns (engine, clock)."""
    from pitstop.config import DTYPE_BYTES, EngineConfig, SpeculativeConfig, kv_cache_num_blocks
    from pitstop.engine.llm_engine import LLMEngine
    from pitstop.executor.acceptance import AcceptanceModel
    from pitstop.executor.simulated_runner import SimulatedRunner
    from pitstop.clock import VirtualClock
    from pitstop.sim.cost_models import build_cost_model
    from pitstop.sim.model_configs import load_model_config, load_model_shape

    vocab_size = load_model_config(args.model).get("vocab_size", 32000)
    bytes_per_token = load_model_shape(args.model).kv_bytes_per_token(DTYPE_BYTES[concrete_dtype(args.dtype)])
    num_blocks = kv_cache_num_blocks(kv_memory(args), bytes_per_token, args.block_size)
    clock = VirtualClock()
    cost = cost_model or build_cost_model(args.cost_model, args.model, args.hardware,
                                          profile=getattr(args, "profile", None))
    runner = SimulatedRunner(cost, clock, vocab_size=vocab_size)
    spec = SpeculativeConfig.parse(getattr(args, "speculative_config", None))
    if spec is not None:  # the simulated verifies accept drafts by the configured rate
        runner.acceptance = AcceptanceModel(spec.acceptance_rate, seed=args.seed)
    engine = LLMEngine(EngineConfig(**_engine_kwargs(args, scheduling_policy, ttl_policy)), executor=runner,
                       clock=clock, num_blocks=int(num_blocks), vocab_size=vocab_size, max_model_len=args.max_model_len)
    return engine, clock


def kv_memory(args: argparse.Namespace) -> str | int:
    """``--kv-cache-memory``, or its dtype-dependent default."""
    return args.kv_cache_memory or default_kv_cache_memory(args.dtype)


def default_kv_cache_memory(dtype: str) -> str:
    """64 MiB per 2 bytes of the KV dtype (``dtype`` resolved as the engine would): the same token capacity
    (2,912 tokens of SmolLM2-135M) in bf16 and float32."""
    from pitstop.config import DTYPE_BYTES
    return f"{32 * DTYPE_BYTES[concrete_dtype(dtype)]}MiB"


def concrete_dtype(dtype: str) -> str:
    """``dtype`` with ``auto`` resolved as the real engine resolves it on this CPU (``choose_kernels``)."""
    if dtype != "auto":
        return dtype
    from pitstop.model.cpu_features import choose_kernels
    return choose_kernels(dtype).dtype


def engine_stats(engine) -> dict:
    s = call_optional(engine, "stats")
    return dict(s) if isinstance(s, dict) else {}


def warm_up(engine) -> None:
    """One short request so first-step allocations do not land in the measured run."""
    from pitstop.sampling_params import SamplingParams

    lo, hi = token_range(engine.vocab_size or 32000)
    rng = random.Random(-1)
    engine.add_request("warmup", None, SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0),
                       prompt_token_ids=[rng.randint(lo, hi) for _ in range(64)])
    while engine.has_unfinished_requests():
        engine.step()


# ---- workload ---------------------------------------------------------------------------------------
def load_programs(args: argparse.Namespace) -> tuple[list[AgentProgram], dict]:
    """Load the trace, sample ``--num-programs``, scale and clip; returns (programs, workload info)."""
    if args.trace == "agentcgroup":
        from pitstop.workloads.agentcgroup import load_agentcgroup
        datasets = None if args.datasets in (None, "", "all") else tuple(args.datasets.split(","))
        raw = load_agentcgroup(args.trace_path, datasets=datasets, tool_time=args.tool_time)
    else:
        from pitstop.workloads.tracelab import load_tracelab
        raw = load_tracelab(args.trace_path)
    picked = sample_programs(raw, args.num_programs, args.seed, min_turns=args.min_turns)
    progs, info = scale_programs(picked, args.token_scale, args.time_scale, args.max_model_len,
                                 args.max_turns, args.max_tool_time)
    wl = {"trace": args.trace, "trace_path": str(args.trace_path) if args.trace_path else None,
          "programs_in_trace": len(raw), "scale": info.as_dict(), "summary": summarize_programs(progs),
          "output_rules": {p.meta["dataset"]: p.meta["output_rule"] for p in raw if "output_rule" in p.meta},
          "program_rate_per_s": args.program_rate, "arrivals": "Poisson (seeded)", "seed": args.seed}
    return progs, wl


# ---- CLI ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pitstop bench agents", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["engine", "http", "sim"], default="engine",
                   help="engine: in-process engine, real model; http: a server at --base-url; sim: the engine "
                        "scheduler on a virtual clock with the simulator's step-time model (no model, seconds)")
    p.add_argument("--cost-model", default="roofline", help="--backend sim: roofline or profiled")
    p.add_argument("--profile", default=None, help="--backend sim --cost-model profiled: the fit JSON of "
                   "`pitstop profile` (default: the model's shipped one)")
    p.add_argument("--hardware", default="CPU-this-machine", help="--backend sim: hardware name or YAML")
    p.add_argument("--base-url", default=None, help="server for --backend http (e.g. http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--served-model-name", default=None, help="model field sent over HTTP (default: --model)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 where this CPU computes it natively, float32 elsewhere")
    p.add_argument("--trace", choices=["agentcgroup", "tracelab"], default="agentcgroup")
    p.add_argument("--trace-path", default=None,
                   help="agentcgroup: folder or llm_calls.csv (default ../shared/data/traces/agentcgroup_claude_code);"
                        " tracelab: replay CSV or round-trace JSONL (default: vendored 48-session example)")
    p.add_argument("--datasets", default="all_images_local",
                   help="agentcgroup datasets to draw from: all_images_local, all_images_haiku, or 'all'")
    p.add_argument("--tool-time", choices=["tool_max", "gap"], default="tool_max",
                   help="agentcgroup tool time: tool_time_max_s (default) or the main-chain request gap")
    p.add_argument("--num-programs", type=int, default=16)
    p.add_argument("--min-turns", type=int, default=4, help="draw only programs with at least this many turns")
    p.add_argument("--max-turns", type=int, default=16, help="keep at most this many turns per program")
    p.add_argument("--program-rate", type=float, default=0.5, help="program arrivals per second (Poisson)")
    p.add_argument("--token-scale", type=float, default=0.03, help="multiply every token count")
    p.add_argument("--time-scale", type=float, default=0.15, help="multiply every tool time")
    p.add_argument("--max-tool-time", type=float, default=20.0, help="cap a scaled tool time (s)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-memory", default=None,
                   help="KV cache of the in-process or simulated engine (default: 64MiB in bf16, 128MiB in float32: "
                        "2,912 tokens of SmolLM2-135M either way, so the pressure is the same on every CPU)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--scheduling-policy", default="fcfs")
    p.add_argument("--ttl-policy", default="none")
    p.add_argument("--ttl-seconds", type=float, default=None, help="TTL of --ttl-policy fixed")
    p.add_argument("--speculative-config", type=speculative_config_arg, default=None,
                   help='speculative decoding of the engine (JSON, vLLM\'s flag), e.g. \'{"method": "ngram"}\'; '
                        'with --backend sim: \'{"method": "simulated", "acceptance_rate": 0.6}\'')
    p.add_argument("--compare", default=None,
                   help="comma list of scheduling+ttl combos run on the same workload, e.g. "
                        "fcfs+none,program-fcfs+continuum,plas+continuum (ratios vs the first)")
    p.add_argument("--no-report-tool-results", action="store_true",
                   help="do not tell the engine/server how long each tool ran")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="abort a run after this many seconds")
    p.add_argument("--timeline-programs", type=int, default=6, help="programs drawn in the PNG timeline")
    p.add_argument("--output-json", default=None, help="results JSON (a PNG with the same stem is written too)")
    p.add_argument("--quiet", action="store_true")
    return p


def _line(name: str, s: dict) -> str:
    j, q, t = s["jct_s"], s["queue_delay_s"], s["ttft_s"]
    pins = s.get("pin_stats") or {}
    pin_txt = " ".join(f"{k}={pins[k]}" for k in ("pin_hits", "pin_expiries", "pin_releases") if k in pins)
    return (f"{name:<28} {s['programs_completed']:>3}/{s['programs_total']:<3} JCT mean {j['mean']:7.2f}s "
            f"p50 {j['median']:7.2f} p90 {j['p90']:7.2f} p99 {j['p99']:7.2f} | TTFT p50 {t['median']:.3f}s "
            f"p90 {t['p90']:.3f} | queue p90 {q['p90']:.3f}s | reprefilled {s['reprefilled_tokens']} tok | "
            f"hit {s['prefix_hit_rate']:.3f} | preempt {s['preemptions']} | {s['makespan_s']:.0f}s {pin_txt}")


def ratios(runs: dict[str, dict]) -> dict[str, dict]:
    """For every run after the first: baseline / run for JCT (mean, p90, p99) and re-prefilled tokens
    (> 1 = this run is better), and run / baseline for the prefix-hit rate."""
    names = list(runs)
    base = runs[names[0]]["summary"]
    out = {}
    for name in names[1:]:
        s = runs[name]["summary"]

        def div(a, b):
            return a / b if b else (math.inf if a else math.nan)

        out[name] = {
            "jct_mean_speedup": div(base["jct_s"]["mean"], s["jct_s"]["mean"]),
            "jct_median_speedup": div(base["jct_s"]["median"], s["jct_s"]["median"]),
            "jct_p90_speedup": div(base["jct_s"]["p90"], s["jct_s"]["p90"]),
            "jct_p99_speedup": div(base["jct_s"]["p99"], s["jct_s"]["p99"]),
            "reprefilled_tokens_reduction": div(base["reprefilled_tokens"], s["reprefilled_tokens"]),
            "jct_mean_speedup_censored": div(base["jct_censored_lower_bound_s"]["mean"],
                                             s["jct_censored_lower_bound_s"]["mean"]),
            "all_programs_completed": (base["programs_completed"] == base["programs_total"]
                                       and s["programs_completed"] == s["programs_total"]),
            "ttft_mean_speedup": div(base["ttft_s"]["mean"], s["ttft_s"]["mean"]),
            "prefix_hit_rate_ratio": div(s["prefix_hit_rate"], base["prefix_hit_rate"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.kv_cache_memory = kv_memory(args)  # recorded in the result
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    programs, workload = load_programs(args)
    arrivals = poisson_program_arrivals(len(programs), args.program_rate, args.seed)
    print(f"workload: {json.dumps(workload)}", flush=True)
    result: dict[str, Any] = {"args": vars(args), "workload": workload, "runs": {}}
    combos = parse_combos(args.compare) if args.compare else [(args.scheduling_policy, args.ttl_policy)]
    if args.backend == "http":
        if args.base_url is None:
            raise ValueError("--backend http needs --base-url")
        if args.compare:
            raise ValueError("--compare needs --backend engine (a server's policies are set when it starts)")
        tokenizer, vocab = _client_tokenizer(args.model)
        records, wall, info = run_http_backend(args.base_url, args.served_model_name or args.model, programs,
                                               arrivals, vocab, args.seed, tokenizer, args.api_key,
                                               not args.no_report_tool_results, args.timeout)
        summary = summarize_run(records, wall)
        summary["output_ids"] = info
        result["runs"]["http"] = {"summary": summary,
                                  "programs": records_json(records, redact=args.trace == "agentcgroup")}
        print(_line("http", summary), flush=True)
    else:
        for sched, ttl in combos:
            name = f"{sched}+{ttl}"
            if args.backend == "sim":
                engine, vclock = build_sim_engine(args, sched, ttl)
                sleep: Callable[[float], None] = vclock.advance
            else:
                engine, sleep = build_engine(args, sched, ttl), time.sleep
                warm_up(engine)
            cap = engine.kv_manager.num_blocks * engine.kv_manager.block_size
            log(f"[{name}] KV capacity {cap} tokens; replaying {len(programs)} programs")
            records, wall = run_engine_backend(engine, programs, arrivals, args.seed,
                                               not args.no_report_tool_results, args.timeout, sleep=sleep,
                                               progress=log)
            summary = summarize_run(records, wall, engine_stats(engine), cap)
            summary["engine_steps"] = step_summary(engine.step_history)
            result["runs"][name] = {"summary": summary,
                                    "programs": records_json(records, redact=args.trace == "agentcgroup")}
            print(_line(name, summary), flush=True)
            engine.check_kv_invariants()
            del engine
        if len(result["runs"]) > 1:
            result["ratios"] = ratios(result["runs"])
            first = next(iter(result["runs"]))
            for name, r in result["ratios"].items():
                print(f"{name} vs {first}: JCT mean x{r['jct_mean_speedup']:.2f}, p90 x{r['jct_p90_speedup']:.2f}, "
                      f"p99 x{r['jct_p99_speedup']:.2f}, re-prefilled tokens /{r['reprefilled_tokens_reduction']:.2f}, "
                      f"TTFT mean x{r['ttft_mean_speedup']:.2f}"
                      + ("" if r["all_programs_completed"] else
                         f" (NOT all programs completed: JCT only over completed ones; counting unfinished "
                         f"ones at makespan - start, JCT mean x{r['jct_mean_speedup_censored']:.2f})"), flush=True)
    if args.output_json:
        path = Path(args.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        from pitstop.bench.agents_plot import plot
        plot(result, path.with_suffix(".png"), args.timeline_programs)
        path.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {path} and {path.with_suffix('.png')}", flush=True)
    return 0


def _client_tokenizer(model: str) -> tuple[Any, int]:
    try:
        from transformers import AutoTokenizer

        from pitstop.model.resolve import resolve_model
        tok = AutoTokenizer.from_pretrained(str(resolve_model(model)))
        return tok, len(tok)
    except Exception:  # noqa: BLE001 - any model the client cannot resolve: fall back to a generic vocab
        return None, 32000


if __name__ == "__main__":
    sys.exit(main())
