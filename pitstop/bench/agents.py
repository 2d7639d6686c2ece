"""``pitstop bench agents``: replay multi-turn agent programs and measure job completion time (JCT).

Each program (an agent session from a trace, ``pitstop/workloads/agent_program.py``) starts at a Poisson
arrival (``--program-rate``, seeded). Turn ``k``'s prompt = turn ``k-1``'s prompt + its generated tokens +
the turn's new tokens (random ids, seeded per program), so the prefix reuse between turns is what a real
agent produces. After each non-final turn the program sleeps the (scaled) tool time, then sends the next
turn. Backends:

- ``--backend engine``: in-process ``LLMEngine``; one loop steps the engine and releases timed events
  (program starts, tool completions) whose time has come. Request arrival times are the event times, so
  time the engine spends inside a step counts as queueing, as it would in a server.
- ``--backend http --base-url URL``: any OpenAI-compatible ``/v1/completions`` (streamed, prompt as token
  ids), sending ``program_id`` / ``is_last_turn`` / ``tool_name`` and Continuum's ``job_id`` /
  ``is_last_step``; tool results are reported to ``POST /v1/programs/{id}/tool_result`` and programs ended
  with ``DELETE /v1/programs/{id}`` (errors there are ignored, so other servers work too).

``--compare fcfs+none,program-fcfs+continuum`` runs each ``scheduling_policy+ttl_policy`` combination on the
same seeded workload, a fresh engine each, and prints ratios against the first. See ``benchmarks/README.md``
("Agent programs") for the metrics, the defaults and why.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

from pitstop.bench.agent_replay import (  # noqa: F401 - re-exported: tests and the plot import them from here
    ProgramRecord, ProgramReplay, PromptBuilder, TurnRecord, token_range,
)
from pitstop.bench.serve_client import StreamError, sse_json
from pitstop.workloads.agent_program import (
    AgentProgram, poisson_program_arrivals, sample_programs, scale_programs, summarize_programs,
)
from pitstop.workloads.lengths import percentile

PIN_STAT_KEYS = ("pin_hits", "pin_expiries", "pin_releases", "reused_tokens", "reprefilled_tokens")


# ---- in-process engine backend ----------------------------------------------------------------------
def _call_optional(obj: Any, name: str, *args: Any) -> Any:
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except (KeyError, ValueError):
        return None


def _add_turn(engine, rid: str, prompt: list[int], max_tokens: int, arrival: float, program_id: str,
              last: bool, tool_name: str | None) -> None:
    from pitstop.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    kw: dict[str, Any] = dict(prompt_token_ids=prompt, arrival_time=arrival, program_id=program_id,
                              is_last_turn=last)
    try:
        engine.add_request(rid, None, params, tool_name=tool_name, **kw)
    except TypeError:  # an engine without the tool_name hint
        engine.add_request(rid, None, params, **kw)


def run_engine_backend(engine, programs: Sequence[AgentProgram], arrivals: Sequence[float], seed: int = 0,
                       report_tool_results: bool = True, timeout_s: float | None = None,
                       sleep: Callable[[float], None] = time.sleep,
                       progress: Callable[[str], None] | None = None) -> tuple[list[ProgramRecord], float]:
    """Replay ``programs`` (program ``i`` starts at ``arrivals[i]`` s) on an ``LLMEngine``.

    Returns (records, makespan in s). Requests still running at ``timeout_s`` are aborted (their programs
    are reported as unfinished). Times are the engine's clock (``engine.clock``) minus the start.
    """
    clock = engine.clock
    t0 = clock()
    replay = ProgramReplay(programs, arrivals, seed, engine.vocab_size or 32000)
    records = replay.records
    events: list[tuple[float, int, int, int]] = []  # (abs time, seq, program index, turn)
    seq = 0
    for at, i, k in replay.first_turns():
        heapq.heappush(events, (t0 + at, seq, i, k))
        seq += 1
    inflight: dict[str, tuple[int, int]] = {}
    try:
        while events or inflight:
            now = clock()
            if timeout_s is not None and now - t0 > timeout_s:
                break
            while events and events[0][0] <= now:
                at, _, i, k = heapq.heappop(events)
                tq = replay.start_turn(i, k, at - t0)
                if tq.prev_tool is not None and report_tool_results:
                    _call_optional(engine, "report_tool_result", tq.program_id, *tq.prev_tool)
                _add_turn(engine, tq.request_id, tq.prompt, tq.max_tokens, at, tq.program_id, tq.is_last_turn,
                          tq.tool_name)
                inflight[tq.request_id] = (i, k)
            if engine.has_unfinished_requests():
                steps_before = len(engine.step_history)
                outs = engine.step()
                if not outs and len(engine.step_history) == steps_before:
                    # nothing could run (e.g. waiting for pinned KV to expire): let time pass, a virtual
                    # clock included, instead of spinning
                    sleep(0.001)
                for out in outs:
                    if not out.finished or out.request_id not in inflight:
                        continue
                    i, k = inflight.pop(out.request_id)
                    prog, rec, m = programs[i], records[i], out.metrics
                    fin = m.finished_time if m.finished_time is not None else clock()
                    nxt = replay.finish_turn(
                        i, k, list(out.outputs[0].token_ids), fin - t0,
                        ok=out.outputs[0].finish_reason in ("length", "stop"),
                        first_scheduled_s=None if m.first_scheduled_time is None else m.first_scheduled_time - t0,
                        first_token_s=None if m.first_token_time is None else m.first_token_time - t0,
                        cached_tokens=m.num_cached_tokens, computed_prompt_tokens=m.num_computed_prompt_tokens,
                        preemptions=m.num_preemptions)
                    stats = _call_optional(engine, "program_stats", prog.program_id)
                    if isinstance(stats, dict):  # None once the engine has ended the program
                        rec.stats = dict(stats)
                    if nxt is not None:
                        heapq.heappush(events, (t0 + nxt, seq, i, k + 1))
                        seq += 1
                    else:
                        _call_optional(engine, "end_program", prog.program_id)
                        if progress:
                            progress(f"{replay.num_done}/{len(programs)} programs done "
                                     f"(t={clock() - t0:.0f}s)")
            elif events:
                sleep(max(0.0, min(events[0][0] - clock(), 0.05)))
    finally:
        if inflight:
            engine.abort_request(list(inflight))
            while engine.has_unfinished_requests():
                engine.step()
            for i, k in inflight.values():
                records[i].turns[k].ok = False
                records[i].turns[k].error = "aborted (timeout)"
        for p in programs:
            _call_optional(engine, "end_program", p.program_id)
    return records, clock() - t0


# ---- HTTP backend -------------------------------------------------------------------------------------
async def _http_turn(client, url: str, model: str, prompt: list[int], max_tokens: int, program_id: str,
                     last: bool, tool_name: str | None, t0: float, tr: TurnRecord) -> tuple[list[int] | None, str]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True,
            "program_id": program_id, "is_last_turn": last, "job_id": program_id, "is_last_step": last}
    if tool_name is not None and not last:
        body["tool_name"] = tool_name
    text, ids, got_ids = [], [], False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            async for msg in sse_json(r):
                usage = msg.get("usage")
                if usage:
                    tr.output_len = usage.get("completion_tokens") or tr.output_len
                    details = usage.get("prompt_tokens_details") or {}
                    tr.cached_tokens = int(details.get("cached_tokens") or 0)
                for ch in msg.get("choices") or []:
                    if ch.get("token_ids"):
                        ids.extend(ch["token_ids"])
                        got_ids = True
                    if ch.get("text"):
                        if tr.first_token_s is None:
                            tr.first_token_s = time.perf_counter() - t0
                        text.append(ch["text"])
    except StreamError as e:  # non-200 or an error event
        tr.ok, tr.error = False, str(e)
        return None, ""
    except (httpx.HTTPError, OSError, ValueError) as e:  # transport, protocol and JSON errors
        tr.ok, tr.error = False, repr(e)[:200]
        return None, ""
    tr.finished_s = time.perf_counter() - t0
    if tr.first_token_s is None:
        tr.first_token_s = tr.finished_s
    tr.computed_prompt_tokens = tr.prompt_len - tr.cached_tokens  # the server's view; recomputes not visible
    return (ids if got_ids else None), "".join(text)


def run_http_backend(base_url: str, model: str, programs: Sequence[AgentProgram], arrivals: Sequence[float],
                     vocab_size: int, seed: int = 0, tokenizer: Any = None, api_key: str | None = None,
                     report_tool_results: bool = True, timeout_s: float = 3600.0
                     ) -> tuple[list[ProgramRecord], float, dict]:
    """Replay over HTTP. Output ids carried to the next turn: the server's ``token_ids`` if it returns them
    (vLLM ``return_token_ids``), else the output text re-encoded with ``tokenizer``, else random ids of the
    reported length (then the output part of the context is not reused; counted in ``info``)."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    info = {"turns_with_server_token_ids": 0, "turns_retokenized": 0, "turns_random_output_ids": 0}

    async def main() -> tuple[list[ProgramRecord], float]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
            t0 = time.perf_counter()

            async def program(i: int, prog: AgentProgram) -> ProgramRecord:
                rec = ProgramRecord(prog.program_id, arrivals[i], prog.num_turns)
                builder = PromptBuilder(prog, seed, vocab_size)
                next_at = arrivals[i]
                for k, turn in enumerate(prog.turns):
                    delay = next_at - (time.perf_counter() - t0)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if k > 0 and report_tool_results:
                        prev = prog.turns[k - 1]
                        try:
                            await client.post(f"{url}/v1/programs/{prog.program_id}/tool_result",
                                              json={"tool_name": prev.tool_name or "unknown",
                                                    "duration_s": prev.tool_time_s})
                        except httpx.HTTPError:
                            pass
                    prompt = builder.next_prompt(turn.new_input_tokens)
                    last = k == prog.num_turns - 1
                    tr = TurnRecord(k, len(prompt), turn.new_input_tokens if k else len(prompt), turn.output_tokens,
                                    tool_name=turn.tool_name, tool_time_s=turn.tool_time_s,
                                    arrival_s=time.perf_counter() - t0)
                    rec.turns.append(tr)
                    ids, text = await _http_turn(client, url, model, prompt, turn.output_tokens, prog.program_id,
                                           last, turn.tool_name, t0, tr)
                    if not tr.ok:
                        break
                    if ids is not None:
                        info["turns_with_server_token_ids"] += 1
                    elif tokenizer is not None and text:
                        info["turns_retokenized"] += 1
                    else:
                        info["turns_random_output_ids"] += 1
                    builder.add_output(ids if ids is not None else _fallback_ids(builder, tokenizer, text, tr))
                    next_at = tr.finished_s + turn.tool_time_s
                try:
                    await client.delete(f"{url}/v1/programs/{prog.program_id}")
                except httpx.HTTPError:
                    pass
                return rec

            before = await _scrape_program_metrics(client, url)
            recs = await asyncio.gather(*[program(i, p) for i, p in enumerate(programs)])
            wall = time.perf_counter() - t0
            after = await _scrape_program_metrics(client, url)
            info["server_metrics_delta"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
            return list(recs), wall

    records, wall = asyncio.run(main())
    return records, wall, info


async def _scrape_program_metrics(client, url: str) -> dict[str, float]:
    """Counters about pins / reuse / re-prefill from a Prometheus ``/metrics`` (empty if there is none)."""
    try:
        r = await client.get(url + "/metrics")
    except (httpx.HTTPError, OSError):
        return {}
    if r.status_code != 200:
        return {}
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#") and any(w in line for w in ("pin", "reprefill", "reused", "expir")):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def _fallback_ids(builder: PromptBuilder, tokenizer: Any, text: str, tr: TurnRecord) -> list[int]:
    # No server token ids: re-encoding the text is lossy but keeps most of the output reusable.
    ids = list(tokenizer(text, add_special_tokens=False).input_ids) if tokenizer is not None and text else []
    ids = ids[:tr.output_len]  # keep the planned context length (programs were clipped to max_model_len)
    return ids + [builder.rng.randint(builder.lo, builder.hi) for _ in range(tr.output_len - len(ids))]


# ---- metrics ----------------------------------------------------------------------------------------
def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan, "p99": math.nan, "count": 0}
    return {"mean": sum(xs) / len(xs), "median": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99), "count": len(xs)}


def kv_pressure(records: Sequence[ProgramRecord], capacity_tokens: int | None, makespan_s: float) -> dict:
    """Working set of live programs vs the KV cache: at each time a started, unfinished program holds the
    context of its latest turn (prompt + output). Reports the time-weighted mean and the peak, in tokens
    and as a multiple of the KV capacity."""
    deltas: list[tuple[float, int]] = []
    for rec in records:
        prev = 0
        for k, t in enumerate(rec.turns):
            start = rec.start_s if k == 0 else t.arrival_s
            size = t.prompt_len + (t.output_len or t.max_tokens)
            deltas.append((start, size - prev))
            prev = size
        end = rec.turns[-1].finished_s if rec.turns and rec.turns[-1].finished_s is not None else makespan_s
        deltas.append((end, -prev))
    deltas.sort()
    live = peak = 0
    area = 0.0
    last_t = 0.0
    for t, d in deltas:
        area += live * max(0.0, t - last_t)
        last_t = max(last_t, t)
        live += d
        peak = max(peak, live)
    mean = area / makespan_s if makespan_s > 0 else 0.0
    out = {"mean_live_context_tokens": mean, "peak_live_context_tokens": peak, "kv_capacity_tokens": capacity_tokens}
    if capacity_tokens:
        out["mean_working_set_over_capacity"] = mean / capacity_tokens
        out["peak_working_set_over_capacity"] = peak / capacity_tokens
    return out


def summarize_run(records: Sequence[ProgramRecord], makespan_s: float, engine_stats: dict | None = None,
                  capacity_tokens: int | None = None) -> dict:
    """JCT, per-turn TTFT / queueing, re-prefill, prefix hits, pins, throughput, KV pressure."""
    done = [r for r in records if r.done]
    turns = [t for r in records for t in r.turns if t.ok and t.finished_s is not None]
    later = [t for t in turns if t.turn > 0]
    prompt_tokens = sum(t.prompt_len for t in turns)
    cached = sum(t.cached_tokens for t in turns)
    out_tokens = sum(t.output_len for t in turns)
    jcts = [r.jct_s for r in done]
    pins = {k: v for k, v in (engine_stats or {}).items()
            if any(s in k for s in ("pin", "reuse", "reprefill", "expir", "release"))}
    return {
        "programs_total": len(records), "programs_completed": len(done),
        "turns_completed": len(turns), "turns_planned": sum(r.num_turns_planned for r in records),
        "makespan_s": makespan_s,
        "jct_s": _stats(jcts),
        # programs cut off by --timeout count with JCT >= makespan - start: a lower bound of the true JCTs
        "jct_censored_lower_bound_s": _stats(jcts + [makespan_s - r.start_s for r in records if not r.done]),
        "jct_minus_tool_time_s": _stats([r.jct_s - r.tool_time_s for r in done]),
        "ttft_s": _stats([t.ttft_s for t in turns if t.ttft_s is not None]),
        "ttft_later_turns_s": _stats([t.ttft_s for t in later if t.ttft_s is not None]),
        "queue_delay_s": _stats([t.queue_s for t in turns if t.queue_s is not None]),
        "prompt_tokens": prompt_tokens, "new_tokens": sum(t.new_tokens for t in turns),
        "computed_prompt_tokens": sum(t.computed_prompt_tokens for t in turns),
        "reprefilled_tokens": sum(t.reprefilled_tokens for t in turns),
        "cached_prompt_tokens": cached,
        "prefix_hit_rate": cached / prompt_tokens if prompt_tokens else math.nan,
        "prefix_hit_rate_later_turns": (sum(t.cached_tokens for t in later) / sum(t.prompt_len for t in later)
                                        if later else math.nan),
        "preemptions": sum(t.preemptions for t in turns),
        "output_tokens": out_tokens,
        "output_throughput_tok_s": out_tokens / makespan_s if makespan_s > 0 else math.nan,
        "turn_throughput_per_s": len(turns) / makespan_s if makespan_s > 0 else math.nan,
        "program_throughput_per_min": 60 * len(done) / makespan_s if makespan_s > 0 else math.nan,
        "pin_stats": pins,
        "kv": kv_pressure(records, capacity_tokens, makespan_s),
        "errors": sorted({t.error for r in records for t in r.turns if not t.ok})[:5],
    }


def step_summary(history) -> dict:
    """Engine steps of a run: count, busy seconds, prefill / decode tokens, step time percentiles."""
    times = [h.step_time_s for h in history]
    return {"steps": len(history), "busy_s": sum(times),
            "prefill_tokens": sum(h.num_prefill_tokens for h in history),
            "decode_tokens": sum(h.num_decode_tokens for h in history),
            "step_s": _stats(times), "seqs_per_step": _stats([float(h.num_seqs) for h in history])}


TRACE_DERIVED_TURN_FIELDS = ("prompt_len", "new_tokens", "max_tokens", "output_len", "tool_name", "tool_time_s")


def records_json(records: Sequence[ProgramRecord], redact: bool = False) -> list[dict]:
    """Per-program records for the JSON. ``redact`` (used for the GPL-2.0 agentcgroup trace, which must not be
    copied into results that may be committed): program ids become ``program-<i>`` and the per-turn values derived
    from the trace (lengths, tool names and times) are left out; only measured times and counters stay."""
    out = []
    for i, r in enumerate(records):
        turns = [asdict(t) for t in r.turns]
        if redact:
            turns = [{k: v for k, v in t.items() if k not in TRACE_DERIVED_TURN_FIELDS} for t in turns]
        out.append({"program_id": f"program-{i}" if redact else r.program_id, "start_s": r.start_s,
                    "jct_s": r.jct_s, "tool_time_s": None if redact else r.tool_time_s,
                    "stats": {k: v for k, v in r.stats.items() if k != "pin_tool"} if redact else r.stats,
                    "turns": turns})
    return out


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
    kw: dict[str, Any] = dict(model=args.model, kv_cache_memory=args.kv_cache_memory, block_size=args.block_size,
                              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                              max_num_batched_tokens=args.max_num_batched_tokens, seed=args.seed,
                              skip_tokenizer_init=True, scheduling_policy=scheduling_policy, ttl_policy=ttl_policy)
    if args.ttl_seconds is not None:
        kw["ttl_seconds"] = args.ttl_seconds
    return kw


def build_engine(args: argparse.Namespace, scheduling_policy: str, ttl_policy: str):
    """A fresh ``LLMEngine`` for one policy combination (token ids only: no tokenizer)."""
    from pitstop.config import EngineConfig
    from pitstop.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(**_engine_kwargs(args, scheduling_policy, ttl_policy), dtype=args.dtype,
                                  num_threads=args.num_threads))


def build_sim_engine(args: argparse.Namespace, scheduling_policy: str, ttl_policy: str, cost_model=None):
    """An ``LLMEngine`` on a virtual clock whose steps take the time the simulator's cost model predicts
    (``cost_model``, default the one ``--cost-model``/``--hardware`` name, ``pitstop.sim``); no model is loaded. KV blocks from
    ``--kv-cache-memory`` and the model config's KV bytes per token (bf16). Returns (engine, clock)."""
    from pitstop.config import EngineConfig, parse_bytes
    from pitstop.engine.llm_engine import LLMEngine
    from pitstop.executor.simulated_runner import SimulatedRunner
    from pitstop.sim.clock import VirtualClock
    from pitstop.sim.cost_models import build_cost_model
    from pitstop.sim.model_configs import load_model_config, load_model_shape

    vocab_size = load_model_config(args.model).get("vocab_size", 32000)
    bytes_per_token = load_model_shape(args.model).kv_bytes_per_token(2)  # K and V, bf16
    num_blocks = parse_bytes(args.kv_cache_memory) // (bytes_per_token * args.block_size)
    clock = VirtualClock()
    cost = cost_model or build_cost_model(args.cost_model, args.model, args.hardware,
                                          profile=getattr(args, "profile", None))
    runner = SimulatedRunner(cost, clock, vocab_size=vocab_size)
    engine = LLMEngine(EngineConfig(**_engine_kwargs(args, scheduling_policy, ttl_policy)), executor=runner,
                       clock=clock, num_blocks=int(num_blocks), vocab_size=vocab_size, max_model_len=args.max_model_len)
    return engine, clock


def engine_stats(engine) -> dict:
    s = _call_optional(engine, "stats")
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
    p.add_argument("--kv-cache-memory", default="64MiB",
                   help="KV cache of the in-process engine (SmolLM2-135M: 22.5 KiB/token, 64MiB = 2,912 tokens)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--scheduling-policy", default="fcfs")
    p.add_argument("--ttl-policy", default="none")
    p.add_argument("--ttl-seconds", type=float, default=None, help="TTL of --ttl-policy fixed")
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
