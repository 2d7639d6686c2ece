"""``pitstop bench throughput``: offline throughput of pitstop vs Hugging Face transformers, plus a roofline check.

What it does (all in one process, on the same weights, prompts and per-request output lengths):

1. Draws ``--num-requests`` requests (seeded) from a trace (Azure 2023 conv/code, ShareGPT) or a random
   workload, scales their lengths by one factor so that they fit ``--max-model-len`` (the factor is printed and
   written to the JSON), and makes random token-id prompts of those lengths (the traces carry no text).
2. Runs pitstop's ``LLM.generate`` with ``ignore_eos`` (every request produces exactly its output length) and
   reports requests/s, output tokens/s, total (prompt + output) tokens/s and peak RSS.
3. Runs the peer (``pitstop.bench.peer_transformers``): static-batching ``generate`` with a tuned batch size and
   transformers' own continuous batching; prints ratios pitstop / peer.
4. Roofline: for decode batches (default 1, 8, 32, 64, 128) at a fixed context, runs pitstop and compares the
   median decode-only step time (from ``llm.llm_engine.step_history``) with the roofline bound of
   ``pitstop.bench.roofline`` on this machine's measured peaks; plus batch-1 decode tokens/s of pitstop vs peer.

Everything goes to ``--output-json``. Throughput numbers are wall-clock over the whole ``generate`` call
(tokenization excluded: prompts are token ids).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import psutil
import torch

from pitstop.bench import peer_transformers as peer
from pitstop.bench.roofline import MachinePeaks, ModelShape, decode_bound, measure_peaks
from pitstop.bench.step_profile import StepProfiler
from pitstop.config import QUANTIZATIONS
from pitstop.model.cpu_features import choose_kernels, cpu_features
from pitstop.workloads import (
    DATASETS,
    RequestSpec,
    length_scale_factor,
    load_dataset,
    random_specs,
    sample_specs,
    scale_lengths,
    summarize,
)

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# ---------------------------------------------------------------- arguments


def _int_list(text: str) -> list[int]:
    """Parse ``"1,8,32"`` into ``[1, 8, 32]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``pitstop bench throughput``."""
    p = argparse.ArgumentParser(prog="pitstop bench throughput", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name, HF folder or .gguf")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 where this CPU computes it natively, float32 elsewhere")
    p.add_argument("--dataset", default="azure-conv", choices=DATASETS)
    p.add_argument("--trace-path", default=None, help="trace file (default: full trace if present, else sample)")
    p.add_argument("--num-requests", type=int, default=64, help="requests drawn from the dataset")
    p.add_argument("--max-model-len", type=int, default=2048, help="context (tokens); lengths are scaled to fit")
    p.add_argument("--length-scale", type=float, default=None,
                   help="length factor (default: max_model_len * 0.9 / p99(input+output) of the trace, <= 1)")
    p.add_argument("--random-input-len", type=int, default=256, help="random dataset: mean prompt tokens")
    p.add_argument("--random-output-len", type=int, default=64, help="random dataset: mean output tokens")
    p.add_argument("--random-range-ratio", type=float, default=0.0, help="random dataset: +- fraction")
    p.add_argument("--kv-cache-memory", default="2GiB")
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", default="transformers",
                   help="comma list of peers: transformers, llama.cpp (built into $PITSTOP_CACHE/llama-cpp on "
                        "first use; batch-1 decode at the GGUF's own quantization and Q8_0), or none")
    p.add_argument("--attention-backend", default="cpu", choices=["cpu", "torch"])
    p.add_argument("--quantization", default="none", choices=list(QUANTIZATIONS))
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder's dense parts")
    p.add_argument("--peer-modes", default="static,continuous", help="static and/or continuous")
    p.add_argument("--peer-batch-size", type=int, default=0, help="static batch size (0: tune on a probe)")
    p.add_argument("--peer-batch-sizes", default="8,16,32,64", help="candidates for the probe")
    p.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--roofline-batches", default="1,8,32,64,128")
    p.add_argument("--roofline-context", type=int, default=256, help="prompt tokens per sequence")
    p.add_argument("--roofline-decode-tokens", type=int, default=8, help="tokens generated per sequence")
    p.add_argument("--output-json", default=None, help="write all results here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------- workload


def build_workload(args: argparse.Namespace) -> tuple[list[RequestSpec], dict[str, Any]]:
    """Draw the requests and scale their lengths; returns (specs, description for the report)."""
    info: dict[str, Any] = {"dataset": args.dataset, "seed": args.seed}
    if args.dataset == "random":
        specs = random_specs(args.num_requests, args.random_input_len, args.random_output_len,
                             args.random_range_ratio, seed=args.seed)
        scaled, factor = scale_lengths(specs, args.max_model_len, 1.0)
        info.update(trace_path=None, trace_requests=None)
    else:
        full = load_dataset(args.dataset, args.trace_path)
        factor = args.length_scale or length_scale_factor(full, args.max_model_len)
        scaled, factor = scale_lengths(sample_specs(full, args.num_requests, seed=args.seed),
                                       args.max_model_len, factor)
        info.update(trace_path=str(args.trace_path or _default_path(args.dataset)), trace_requests=len(full))
    info.update(length_scale_factor=factor, max_model_len=args.max_model_len, **summarize(scaled))
    return scaled, info


def _default_path(dataset: str) -> Path:
    """Default trace file of a named dataset."""
    from pitstop.workloads.azure import azure_trace_path
    from pitstop.workloads.sharegpt import sharegpt_trace_path

    return sharegpt_trace_path() if dataset == "sharegpt" else azure_trace_path(dataset.split("-")[1])


def make_prompts(lengths: Sequence[int], vocab_size: int, seed: int, low: int = 100) -> list[list[int]]:
    """Random token-id prompts of the given lengths (ids in ``[low, vocab_size)``, no special tokens)."""
    rng = random.Random(seed)
    return [[rng.randrange(low, vocab_size) for _ in range(n)] for n in lengths]


# ---------------------------------------------------------------- memory


class RssSampler:
    """Context manager sampling this process's RSS (bytes) every ``interval_s`` seconds; ``peak`` is the max."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def to_dict(self) -> dict[str, float]:
        """RSS at start and peak, in bytes and MiB."""
        return {"rss_start_bytes": self.start, "peak_rss_bytes": self.peak, "peak_rss_mib": self.peak / 2 ** 20}


def _rates(n: int, inp: int, outp: int, elapsed: float) -> dict[str, float]:
    """requests/s, output tokens/s and total tokens/s over ``elapsed`` seconds."""
    return {"requests_per_s": n / elapsed, "output_tokens_per_s": outp / elapsed,
            "total_tokens_per_s": (inp + outp) / elapsed}


# ---------------------------------------------------------------- pitstop


def make_llm(args: argparse.Namespace) -> Any:
    """The engine under test, configured from the arguments."""
    from pitstop import LLM

    extra = {"num_threads": args.num_threads} if args.num_threads else {}
    extra.update(attention_backend=args.attention_backend, quantization=args.quantization, compile=args.compile)
    return LLM(model=args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
               max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
               max_num_batched_tokens=args.max_num_batched_tokens,
               enable_prefix_caching=args.enable_prefix_caching, **extra)


def _params(output_lens: Sequence[int]) -> list[Any]:
    """Greedy sampling, exactly ``output_len`` tokens each (EOS ignored)."""
    from pitstop import SamplingParams

    return [SamplingParams(max_tokens=int(o), ignore_eos=True, temperature=0.0) for o in output_lens]


def run_pitstop(llm: Any, prompts: list[list[int]], output_lens: Sequence[int], progress: bool) -> dict[str, Any]:
    """One timed ``generate`` over every request; checks every request got exactly its output length."""
    t0 = time.perf_counter()
    llm.generate([p[:8] for p in prompts[:2]], _params([2, 2]), use_tqdm=False)  # warm-up (compiles, if --compile)
    llm.generate([p[:8] for p in prompts[:1]], _params([2]), use_tqdm=False)  # batch 1 (its own graph)
    warmup_s = time.perf_counter() - t0
    llm.llm_engine.step_history.clear()
    with RssSampler() as rss:
        t0 = time.perf_counter()
        outs = llm.generate(prompts, _params(output_lens), use_tqdm=progress)
        elapsed = time.perf_counter() - t0
    produced = [len(o.outputs[0].token_ids) for o in outs]
    steps = list(llm.llm_engine.step_history)
    inp, outp = sum(len(p) for p in prompts), sum(output_lens)
    res: dict[str, Any] = {"elapsed_s": elapsed, "num_requests": len(prompts), "input_tokens": inp,
                           "output_tokens": outp, "generated_tokens": sum(produced),
                           "lengths_match": produced == list(output_lens),
                           "num_cached_tokens": sum(o.metrics.num_cached_tokens or 0 for o in outs),
                           "num_steps": len(steps), "step_time_sum_s": sum(s.step_time_s for s in steps),
                           "warmup_s": warmup_s, "optimizations": getattr(llm.llm_engine.executor, "optimizations", None)}
    res.update(_rates(len(prompts), inp, outp, elapsed))
    res.update(rss.to_dict())
    return res


def decode_steps(steps: Sequence[Any], batch: int) -> list[Any]:
    """Decode-only steps (no prefill tokens) that ran exactly ``batch`` sequences."""
    return [s for s in steps if s.num_prefill_tokens == 0 and s.num_decode_tokens == batch and s.num_seqs == batch]


def roofline_point(llm: Any, shape: ModelShape, peaks: MachinePeaks, dtype: str, batch: int, context: int,
                   decode_tokens: int, seed: int, weight_bytes: float | None = None) -> dict[str, Any]:
    """Run ``batch`` prompts of ``context`` tokens; compare the median decode step with the roofline bound.

    ``weight_bytes``: bytes per weight when not the dtype's (``--quantization int8`` / ``gguf``:
    :func:`_bytes_per_weight`)."""
    prompts = make_prompts([context] * batch, shape.vocab_size, seed=seed + batch)
    # Prefills are chunked by the token budget, so the first sequences decode while the last ones
    # prefill: generate enough tokens that every sequence is still running when all have prefilled.
    budget = llm.llm_engine.config.max_num_batched_tokens
    decode_tokens = max(decode_tokens, -(-batch * context // budget) + decode_tokens)
    llm.llm_engine.step_history.clear()
    with StepProfiler(llm) as prof:
        llm.generate(prompts, _params([decode_tokens] * batch), use_tqdm=False)
    steps = decode_steps(llm.llm_engine.step_history, batch)
    row: dict[str, Any] = {"batch": batch, "context_len": context, "num_decode_steps": len(steps),
                           "step_profile": prof.decode_summary(batch)}
    if not steps:
        return row
    step_s = statistics.median(s.step_time_s for s in steps)
    ctx = statistics.mean(s.context_tokens / s.num_seqs for s in steps)
    b = decode_bound(shape, batch, ctx, DTYPE_BYTES[dtype], peaks.flops_for(peer.DTYPES[dtype]),
                     peaks.read_bandwidth, weight_bytes=weight_bytes)
    row.update(mean_context_tokens=ctx, step_time_s=step_s, decode_tokens_per_s=batch / step_s,
               bound_s=b.bound_s, memory_s=b.memory_s, compute_s=b.compute_s, regime=b.regime,
               bytes=b.bytes_moved, flops=b.flops, fraction_of_roofline=b.bound_s / step_s)
    return row


def batch1_decode_rate_pitstop(llm: Any, prompt: list[int], new_tokens: int = 32, repeats: int = 3) -> float:
    """Batch-1 decode tokens/s from wall time: ``new_tokens / (t(1 + new_tokens) - t(1))`` (as for the peer)."""
    def timed(k: int) -> float:
        t = time.perf_counter()
        llm.generate([prompt], _params([k]), use_tqdm=False)
        return time.perf_counter() - t

    timed(2)
    t1 = min(timed(1) for _ in range(repeats))
    tn = min(timed(1 + new_tokens) for _ in range(repeats))
    return new_tokens / max(tn - t1, 1e-9)


# ---------------------------------------------------------------- peer


def run_peer(model_dir: Path, args: argparse.Namespace, prompts: list[list[int]], output_lens: list[int],
             b1_prompt: list[int] | None) -> dict[str, Any]:
    """All peer measurements; failures are recorded as text, never raised."""
    result: dict[str, Any] = {"name": "transformers", "version": _transformers_version(),
                              "model_dir": str(model_dir)}
    model = peer.load_model(model_dir, args.dtype)
    modes = [m.strip() for m in args.peer_modes.split(",") if m.strip()]
    if "static" in modes:
        _log("peer: static batching (batch-size probe first unless --peer-batch-size) ...")
        result["static"] = _peer_static(model, args, prompts, output_lens)
    if "continuous" in modes:
        _log("peer: transformers continuous batching ...")
        peer.run_continuous(model, prompts[:2], [2, 2])  # warm-up
        with RssSampler() as rss:
            r = peer.run_continuous(model, prompts, output_lens, max_batch_tokens=args.max_num_batched_tokens,
                                    max_requests_per_batch=args.max_num_seqs)
        result["continuous"] = {**r.to_dict(), **rss.to_dict()}
    if b1_prompt is not None:
        _log("peer: batch-1 decode rate ...")
        result["batch1_decode_tokens_per_s"] = peer.batch1_decode_rate(model, b1_prompt)
    del model
    gc.collect()
    return result


def _peer_static(model: Any, args: argparse.Namespace, prompts: list[list[int]],
                 output_lens: list[int]) -> dict[str, Any]:
    """Tune the static batch size (unless given), then run every request."""
    probe: dict[int, float] = {}
    bs = args.peer_batch_size
    if bs <= 0:
        bs, probe = peer.tune_batch_size(model, prompts, output_lens, _int_list(args.peer_batch_sizes))
    with RssSampler() as rss:
        r = peer.run_static(model, prompts, output_lens, bs, progress=not args.quiet)
    return {**r.to_dict(), **rss.to_dict(), "probe_total_tokens_per_s": {str(k): v for k, v in probe.items()}}


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---------------------------------------------------------------- report


def ratios(pit: dict[str, Any], other: dict[str, Any] | None) -> dict[str, float]:
    """pitstop / peer for each rate (empty when the peer did not run)."""
    if not other or other.get("error") or "requests_per_s" not in other:
        return {}
    return {k: pit[k] / other[k] for k in ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s")}


def format_report(res: dict[str, Any]) -> str:
    """Plain-text tables of the results."""
    w = res["workload"]
    cpu = res.get("machine", {}).get("cpu", {})
    lines = [f"cpu: {cpu.get('cpu_model')} ({cpu.get('torch_capability')}; {' '.join(cpu.get('isa_flags', []))}); "
             f"{res.get('kernels', {}).get('summary')}; options {res.get('pitstop', {}).get('optimizations')}",
             f"workload: {w['dataset']}  requests={w['num_requests']}"
             f"  length scale factor={w['length_scale_factor']:.4f}  input tokens={w['input_tokens_total']}  output tokens={w['output_tokens_total']}",
             "", f"{'system':<28}{'req/s':>9}{'out tok/s':>11}{'total tok/s':>13}{'time s':>9}{'peak RSS MiB':>14}"]
    rows = [("pitstop", res["pitstop"])]
    for mode in ("static", "continuous"):
        r = res.get("peer", {}).get(mode)
        if r:
            label = f"transformers {mode}" + (f" (bs {r['batch_size']})" if r.get("batch_size") else "")
            rows.append((label, r))
    for label, r in rows:
        if r.get("error"):
            lines.append(f"{label:<28}  failed: {r['error'][:80]}")
            continue
        lines.append(f"{label:<28}{r['requests_per_s']:>9.2f}{r['output_tokens_per_s']:>11.1f}"
                     f"{r['total_tokens_per_s']:>13.1f}{r['elapsed_s']:>9.1f}{r['peak_rss_mib']:>14.0f}")
    for mode, rat in res.get("ratios", {}).items():
        if rat:
            lines.append(f"pitstop / transformers {mode}: " + ", ".join(f"{k} x{v:.2f}" for k, v in rat.items()))
    rf = res.get("roofline")
    if rf:
        p = rf["peaks"]
        lines += ["", f"roofline (threads={p['threads']}: bf16 {p['bf16_gflops']:.0f} GFLOP/s, fp32 "
                      f"{p['fp32_gflops']:.0f} GFLOP/s, read {p['read_gbs']:.1f} GB/s)",
                  f"{'batch':>6}{'ctx':>7}{'step ms':>10}{'bound ms':>10}{'regime':>9}{'fraction':>10}{'tok/s':>9}"]
        for r in rf["rows"]:
            if "step_time_s" in r:
                prof = r.get("step_profile") or {}
                lines.append(f"{r['batch']:>6}{r['mean_context_tokens']:>7.0f}{r['step_time_s'] * 1e3:>10.2f}"
                             f"{r['bound_s'] * 1e3:>10.2f}{r['regime']:>9}{r['fraction_of_roofline']:>10.3f}"
                             f"{r['decode_tokens_per_s']:>9.1f}"
                             + (f"   not-model {prof['overhead_share']:.1%} of {prof['wall_s'] * 1e3:.1f} ms "
                                f"(executor {prof['executor_overhead_share']:.1%}, engine "
                                f"{prof['engine_overhead_share']:.1%})" if prof else ""))
        b1 = rf.get("batch1_decode_tokens_per_s", {})
        if b1:
            lines.append("batch-1 decode tok/s: " + ", ".join(f"{k} {v:.1f}" for k, v in b1.items()))
            if len(b1) > 1 and "pitstop" in b1:
                lines.append("batch-1 pitstop / peer: " + ", ".join(
                    f"{k} x{b1['pitstop'] / v:.2f}" for k, v in b1.items() if k != "pitstop" and v))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Versions and sizes of this machine, for the JSON."""
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_features().as_dict()}


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement the arguments ask for; returns the results dict."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    kernels = choose_kernels(args.dtype)
    args.dtype = kernels.dtype  # one concrete dtype for pitstop, the peer and the roofline
    specs, workload = build_workload(args)
    res: dict[str, Any] = {"args": vars(args), "machine": machine_info(), "workload": workload,
                           "kernels": dict(requested_dtype=kernels.requested_dtype, summary=kernels.summary())}
    _log(f"workload: {args.dataset}, {len(specs)} requests, length scale factor {workload['length_scale_factor']:.4f}")
    llm = make_llm(args)
    model_dir = Path(llm.model_dir)
    hf_config = json.loads((model_dir / "config.json").read_text())
    shape = ModelShape.from_hf_config(hf_config)
    res["model"] = {"name": args.model, "model_dir": str(model_dir), "total_params": shape.total_params(),
                    "params_per_token": shape.params_per_token()}
    prompts = make_prompts([s.input_len for s in specs], shape.vocab_size, args.seed)
    output_lens = [s.output_len for s in specs]
    _log("running pitstop ...")
    res["pitstop"] = run_pitstop(llm, prompts, output_lens, progress=not args.quiet)
    b1_prompt = make_prompts([args.roofline_context], shape.vocab_size, args.seed + 7)[0]
    if args.roofline:
        res["roofline"] = _roofline_section(llm, shape, args, b1_prompt)
    del llm
    gc.collect()
    peers = {x.strip() for x in args.peer.split(",") if x.strip()} - {"none"}
    if peers - {"transformers", "llama.cpp"}:
        raise SystemExit(f"unknown peer(s): {sorted(peers - {'transformers', 'llama.cpp'})}")
    if "llama.cpp" in peers and args.roofline:
        from pitstop.bench.peer_llamacpp import run_peer as run_llamacpp

        _log("running the llama.cpp peer (batch-1 decode) ...")
        lc = run_llamacpp(args.model, b1_prompt, torch.get_num_threads(), log=_log)
        res["peer_llamacpp"] = lc
        for quant in ("native", "Q8_0"):
            if isinstance(lc.get(quant), dict) and "batch1_decode_tokens_per_s" in lc[quant]:
                res["roofline"]["batch1_decode_tokens_per_s"][f"llama.cpp {quant}"] = \
                    lc[quant]["batch1_decode_tokens_per_s"]
    if "transformers" in peers:
        _log("running the transformers peer ...")
        res["peer"] = run_peer(model_dir, args, prompts, output_lens, b1_prompt if args.roofline else None)
        res["ratios"] = {m: ratios(res["pitstop"], res["peer"].get(m)) for m in ("static", "continuous")}
        if args.roofline and "batch1_decode_tokens_per_s" in res["peer"]:
            res["roofline"]["batch1_decode_tokens_per_s"]["transformers"] = res["peer"]["batch1_decode_tokens_per_s"]
    res["max_rss_bytes_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


def _bytes_per_weight(llm: Any) -> float | None:
    """Bytes per weight of the running model's quantized linears (values, scales and minimums over weights: int8
    with a float32 scale per 32 is 1.125; GGUF Q4_1 blocks as kept, float32 scale and minimum per 32, 0.75), for
    the roofline's weight bytes; None when the model has no quantized linear."""
    from pitstop.model.gguf_linear import Q4Linear
    from pitstop.model.int8_linear import Int8Linear

    nbytes = weights = 0
    for module in llm.llm_engine.executor.model.modules():
        if isinstance(module, (Int8Linear, Q4Linear)):
            nbytes += sum(b.numel() * b.element_size() for n, b in module.named_buffers(recurse=False) if n != "bias")
            weights += module.in_features * module.out_features
    return nbytes / weights if weights else None


def _roofline_section(llm: Any, shape: ModelShape, args: argparse.Namespace, b1_prompt: list[int]) -> dict[str, Any]:
    """Measured peaks, one row per decode batch, and pitstop's batch-1 decode rate."""
    _log("measuring machine peaks ...")
    peaks = measure_peaks()
    rows = []
    for b in _int_list(args.roofline_batches):
        if b > args.max_num_seqs:
            rows.append({"batch": b, "skipped": f"batch > max_num_seqs ({args.max_num_seqs})"})
            continue
        _log(f"roofline: decode batch {b} ...")
        rows.append(roofline_point(llm, shape, peaks, args.dtype, b, args.roofline_context,
                                   args.roofline_decode_tokens, args.seed,
                                   weight_bytes=None if args.quantization == "none" else _bytes_per_weight(llm)))
    return {"peaks": peaks.to_dict(), "source": "Williams, Waterman, Patterson, Roofline, CACM 2009",
            "formula": "max(bytes/bandwidth, flops/peak); see pitstop.bench.roofline", "rows": rows,
            "batch1_decode_tokens_per_s": {"pitstop": batch1_decode_rate_pitstop(llm, b1_prompt)}}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pitstop bench throughput``; returns the exit status."""
    args = build_parser().parse_args(argv)
    res = run(args)
    print(format_report(res))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(res, indent=2, default=str))
        print(f"\nresults written to {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
