"""What structured outputs cost (issue 15, "Cost"): TPOT constrained vs unconstrained, grammar compile times, and
the TTFT of unconstrained requests while another request's grammar compiles.

1. **TPOT** at batch 1 and batch 16 on the same chat prompts (each asks for one tool call; request ``i`` is
   constrained to ``tool_schemas.TOOL_SCHEMAS[i % 20]``): greedy, ``max_tokens = --tokens`` and ``ignore_eos`` in
   both modes, so every request decodes the same number of tokens (a constrained request whose JSON is complete
   may then only emit EOS, which is ignored: its matcher still fills a mask every step). TPOT of a request =
   ``(last token time - first token time) / (tokens - 1)`` (wall clock: includes the engine thread's mask fill
   and the sampler's masking); reported: the median over requests, then the median over ``--repeats`` runs
   that alternate unconstrained / constrained (so drift on a shared machine hits both alike).
2. **Compile time** over the 20 tool schemas x ``--variants`` (each variant adds a distinct ``description``, so
   every schema is a new grammar): *cold* = validate + compile in the worker thread + first matcher, after the
   llguidance tokenizer is built (its one-off cost is reported on its own); *cached* = the same request again
   (a cache hit: no validation, no compile, one matcher copy). p50 / p99 in ms.
3. **TTFT while a grammar compiles**: ``--ttft-requests`` unconstrained requests added at once, alone, and right
   after a constrained request whose grammar is new and large (``tool_choice=required`` over all 20 tools x 10
   names: an ``anyOf`` of 200 tool-call objects); median TTFT over ``--repeats`` alternating runs, and that
   grammar's compile time.

Usage (figures in ``benchmarks/README.md``)::

    nice -n 19 .venv/bin/python benchmarks/structured_outputs_cost.py --output-json results/so_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_schemas import TOOL_SCHEMAS  # noqa: E402

from pitstop import LLM, SamplingParams  # noqa: E402
from pitstop.sampling_params import StructuredOutputsParams  # noqa: E402

TOOL_NAMES = ["get_weather", "bash", "read_file", "write_file", "edit_file", "web_search", "web_fetch", "grep",
              "create_event", "send_email", "todo_write", "run_sql", "stock_price", "convert_currency",
              "create_issue", "create_user", "book_flight", "translate", "calculate", "place_order"]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _prompts(llm: LLM, n: int) -> list[list[int]]:
    tok = llm.get_tokenizer()
    out = []
    for i in range(n):
        name = TOOL_NAMES[i % len(TOOL_NAMES)]
        msg = (f"Call the tool {name} with arguments matching this JSON Schema, as one JSON object: "
               f"{json.dumps(TOOL_SCHEMAS[i % len(TOOL_SCHEMAS)])}")
        text = tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True)
        out.append(list(tok(text, add_special_tokens=False).input_ids))
    return out


def _tpot(outs) -> float:
    vals = []
    for o in outs:
        m, n = o.metrics, len(o.outputs[0].token_ids)
        vals.append((m.last_token_time - m.first_token_time) / (n - 1))
    return statistics.median(vals)


def bench_tpot(llm: LLM, batch: int, tokens: int, repeats: int) -> dict[str, Any]:
    prompts = _prompts(llm, batch)
    free = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    constrained = [SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True,
                                  structured_outputs=StructuredOutputsParams(json=TOOL_SCHEMAS[i % 20]))
                   for i in range(batch)]
    llm.generate(prompts, constrained, use_tqdm=False)  # warm-up; compiles (and caches) the grammars
    res: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    mgr = llm.llm_engine.structured_outputs
    mask_s0, rows0 = mgr.mask_time_s, mgr.num_masked_rows
    for _ in range(repeats):
        llm.llm_engine.reset_prefix_cache()
        res["unconstrained"].append(_tpot(llm.generate(prompts, free, use_tqdm=False)))
        llm.llm_engine.reset_prefix_cache()
        res["constrained"].append(_tpot(llm.generate(prompts, constrained, use_tqdm=False)))
    u, c = statistics.median(res["unconstrained"]), statistics.median(res["constrained"])
    rows = mgr.num_masked_rows - rows0
    fill_us = 1e6 * (mgr.mask_time_s - mask_s0) / max(rows, 1)
    apply_us = _apply_us(batch, llm.llm_engine.vocab_size, llm.llm_engine.executor.dtype)
    return {"batch": batch, "tokens": tokens, "tpot_ms_unconstrained": 1e3 * u, "tpot_ms_constrained": 1e3 * c,
            "slowdown_pct": 100 * (c / u - 1), "runs_ms": {k: [1e3 * x for x in v] for k, v in res.items()},
            "mask_fill_us_per_row": fill_us, "mask_apply_us_per_step": apply_us,
            "mask_overhead_pct_of_unconstrained_tpot": 100 * (fill_us * batch + apply_us) / (1e6 * u)}


def _apply_us(batch: int, vocab: int, dtype) -> float:
    """Median microseconds of the sampler's in-place bitmask on ``[batch, vocab]`` logits (all rows constrained)."""
    import numpy as np
    import torch

    from pitstop.model.sampler import apply_token_bitmask_
    logits = torch.randn(batch, vocab).to(dtype)
    bitmask = torch.from_numpy(np.random.default_rng(0).integers(-2**31, 2**31, (batch, (vocab + 31) // 32),
                                                                 dtype=np.int64).astype(np.int32))
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        apply_token_bitmask_(logits, bitmask)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def _variant(schema: dict, k: int) -> dict:
    return dict(schema, description=f"variant {k} {uuid.uuid4().hex[:6]}")


def bench_compile(llm: LLM, variants: int) -> dict[str, Any]:
    mgr = llm.llm_engine.structured_outputs
    t0 = time.perf_counter()
    mgr.backend.compile(("regex", "warm", False))  # builds the llguidance tokenizer once
    tokenizer_ms = 1e3 * (time.perf_counter() - t0)
    schemas = [_variant(s, k) for k in range(variants) for s in TOOL_SCHEMAS]
    cold, cached = [], []
    for s in schemas:
        sp = SamplingParams(structured_outputs=StructuredOutputsParams(json=s))
        for out in (cold, cached):
            t0 = time.perf_counter()
            key = mgr.key_for(sp)
            compiled = mgr.cache.get(key).result()
            mgr.backend.new_matcher(compiled)
            out.append(1e3 * (time.perf_counter() - t0))
    return {"num_schemas": len(schemas), "tokenizer_build_ms": tokenizer_ms,
            "cold_ms": {"p50": statistics.median(cold), "p99": _pct(cold, 99), "max": max(cold)},
            "cached_ms": {"p50": statistics.median(cached), "p99": _pct(cached, 99), "max": max(cached)}}


def _required_schema(salt: str) -> dict:
    """``tool_choice=required`` over 200 tools: an array of ``{name, arguments}`` objects, any tool per item."""
    items = [{"type": "object", "properties": {"name": {"const": f"{TOOL_NAMES[i % 20]}_{i // 20}_{salt}"},
                                                "arguments": TOOL_SCHEMAS[i % 20]},
              "required": ["name", "arguments"], "additionalProperties": False} for i in range(200)]
    return {"type": "array", "minItems": 1, "items": {"anyOf": items}}


def bench_ttft(llm: LLM, n: int, repeats: int) -> dict[str, Any]:
    eng = llm.llm_engine
    prompts = _prompts(llm, n)
    free = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    def run(with_compile: bool) -> tuple[float, float | None]:
        eng.reset_prefix_cache()
        held = None
        if with_compile:
            sp = SamplingParams(temperature=0, max_tokens=4, structured_outputs=StructuredOutputsParams(
                json=_required_schema(uuid.uuid4().hex[:8])))
            held = eng.add_request(None, None, sp, prompt_token_ids=prompts[0])
        t_add = time.perf_counter()
        ids = [eng.add_request(None, None, free, prompt_token_ids=p) for p in prompts]
        done = {}
        while eng.has_unfinished_requests():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = o
        ttft = statistics.median(done[i].metrics.first_token_time - done[i].metrics.arrival_time for i in ids)
        compile_s = eng.structured_outputs.cache.compile_times_s[-1] if held else None
        del t_add
        return ttft, compile_s

    run(False)
    alone, during, compiles = [], [], []
    for _ in range(repeats):
        alone.append(run(False)[0])
        t, c = run(True)
        during.append(t)
        compiles.append(c)
    return {"requests": n, "ttft_ms_alone": 1e3 * statistics.median(alone),
            "ttft_ms_while_compiling": 1e3 * statistics.median(during),
            "compile_ms_of_the_large_grammar": 1e3 * statistics.median(compiles),
            "runs_ms": {"alone": [1e3 * x for x in alone], "while_compiling": [1e3 * x for x in during]}}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--ttft-requests", type=int, default=8)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: tpot,compile,ttft")
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    llm = LLM(args.model, dtype=args.dtype, kv_cache_memory="1GiB", max_model_len=2048, num_threads=args.num_threads)
    import torch
    result: dict[str, Any] = {"args": vars(args), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                              "dtype": str(llm.llm_engine.executor.dtype)}
    print(f"cpu: {result['cpu']}, torch threads {result['torch_threads']}, {result['dtype']}", flush=True)
    if "compile" not in skip:
        result["compile"] = bench_compile(llm, args.variants)
        print("compile:", json.dumps(result["compile"]), flush=True)
    if "tpot" not in skip:
        result["tpot"] = [bench_tpot(llm, int(b), args.tokens, args.repeats) for b in args.batches.split(",")]
        for r in result["tpot"]:
            print(f"tpot batch {r['batch']}: unconstrained {r['tpot_ms_unconstrained']:.2f} ms, constrained "
                  f"{r['tpot_ms_constrained']:.2f} ms ({r['slowdown_pct']:+.1f}%), mask fill "
                  f"{r['mask_fill_us_per_row']:.0f} us/row, apply {r['mask_apply_us_per_step']:.0f} us/step "
                  f"(= {r['mask_overhead_pct_of_unconstrained_tpot']:.1f}% of TPOT)", flush=True)
    if "ttft" not in skip:
        result["ttft"] = bench_ttft(llm, args.ttft_requests, args.repeats)
        print("ttft:", json.dumps({k: v for k, v in result["ttft"].items() if k != "runs_ms"}), flush=True)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
