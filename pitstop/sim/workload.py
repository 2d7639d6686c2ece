"""Simulated workloads from the existing trace loaders (``pitstop.workloads``): Azure 2023 conv/code, Mooncake
(with its prefix-sharing ``hash_ids``), ShareGPT lengths, random.

Prompts are built lazily (when a request arrives) from token ids that carry the trace's sharing structure:

- Mooncake: block ``h`` of the trace is ``[enc(h), enc'(h), filler...]`` (``block_tokens`` tokens), a prompt is the
  concatenation of its blocks cut to ``input_len``; two prompts share a token prefix exactly as far as their
  ``hash_ids`` agree (the same property as ``pitstop.workloads.mooncake.build_block_prompts``, whose random
  draw of every token costs ~75 s and ~1.2 GB for the full trace; here a prompt costs a few list copies).
- other traces: each prompt starts with tokens encoding its index, so no two share a block.

Routing keys (``prefix_keys``): Mooncake: chained hashes of the hash ids; others: one unique key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from pitstop.replay.serving import gamma_arrivals
from pitstop.sim.cluster import SimRequest
from pitstop.workloads import load_dataset, random_specs, sample_specs, scale_lengths
from pitstop.workloads.lengths import RequestSpec, length_scale_factor
from pitstop.workloads.mooncake import MOONCAKE_BLOCK_TOKENS, load_mooncake, scale_mooncake

WORKLOADS = ("azure-conv", "azure-code", "mooncake", "sharegpt", "random")


@dataclass
class WorkloadOptions:
    """How to cut and re-time a trace.

    Attributes:
        num_requests: take this many (a contiguous window from ``start``; None: all).
        start: first row of the window.
        request_rate: re-draw arrivals as a gamma process of this mean rate (req/s; None keeps trace times,
            inf = all at 0).
        burstiness: gamma shape (1 = Poisson).
        time_scale: multiply trace arrival times (< 1: a faster replay).
        length_scale: multiply lengths (None: only shrink to fit ``max_model_len`` when needed).
        random_input_len / random_output_len: for ``random``.
        seed: RNG seed.
    """

    num_requests: int | None = None
    start: int = 0
    request_rate: float | None = None
    burstiness: float = 1.0
    time_scale: float | None = None
    length_scale: float | None = None
    random_input_len: int = 1024
    random_output_len: int = 128
    seed: int = 0
    trace_path: str | None = None


class PromptFactory:
    """Token-id prompts in ``[1, vocab_size)`` (see the module docstring)."""

    def __init__(self, vocab_size: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> None:
        self.v = max(16, vocab_size) - 2
        self.block_tokens = block_tokens
        self.filler = [1 + (j * 31) % self.v for j in range(max(block_tokens, 4096))]

    def _head(self, x: int) -> list[int]:
        return [1 + x % self.v, 1 + (x // self.v) % self.v, 1 + (x // (self.v * self.v)) % self.v]

    def unique(self, index: int, length: int) -> Callable[[], list[int]]:
        def make() -> list[int]:
            out = self._head(index)
            f = self.filler
            while len(out) < length:
                out.extend(f[:length - len(out)])
            return out[:length]
        return make

    def blocks(self, hash_ids: tuple[int, ...], length: int) -> Callable[[], list[int]]:
        bt = self.block_tokens

        def make() -> list[int]:
            out: list[int] = []
            f = self.filler[:max(0, bt - 3)]
            for h in hash_ids:
                out.extend(self._head(h))
                out.extend(f)
                if len(out) >= length:
                    break
            k = 0
            while len(out) < length:  # lines whose hash ids cover fewer tokens than input_len
                out.extend(self._head(-1 - k - 10**9))
                out.extend(f)
                k += 1
            return out[:length]
        return make


def _chain(hash_ids) -> tuple:
    keys, prev = [], 0
    for h in hash_ids:
        prev = hash((prev, h))
        keys.append(prev)
    return tuple(keys)


def build_sim_workload(name: str, opts: WorkloadOptions, vocab_size: int, max_model_len: int
                       ) -> tuple[list[SimRequest], dict]:
    """SimRequests of trace ``name``; returns (requests, info for the report)."""
    info: dict = {"workload": name}
    if name == "mooncake":
        reqs = load_mooncake(opts.trace_path)
        if opts.num_requests is not None:
            reqs = reqs[opts.start:opts.start + opts.num_requests]
        factor = opts.length_scale or length_scale_factor([r.spec for r in reqs], max_model_len, headroom=1.0,
                                                          q=100.0)
        block = MOONCAKE_BLOCK_TOKENS
        if factor != 1.0:
            reqs, block = scale_mooncake(reqs, factor, max_model_len)
        t0 = reqs[0].spec.arrival_s if reqs else 0.0
        pf = PromptFactory(vocab_size, block)
        arrivals = _arrivals([r.spec.arrival_s - t0 for r in reqs], opts)
        out = []
        for k, (r, t) in enumerate(zip(reqs, arrivals)):
            inp = min(r.spec.input_len, max_model_len - 1)
            outp = max(1, min(r.spec.output_len, max_model_len - inp))
            out.append(SimRequest(f"m{k}", t, inp, outp, pf.blocks(r.hash_ids, inp), _chain(r.hash_ids), block))
        all_ids = [h for r in reqs for h in r.hash_ids]
        info.update(length_scale=factor, block_tokens=block,
                    repeated_block_fraction=1 - len(set(all_ids)) / max(1, len(all_ids)))
    else:
        if name == "random":
            n = opts.num_requests or 100
            specs = random_specs(n, opts.random_input_len, opts.random_output_len, 0.0, opts.seed)
            factor = 1.0
        else:
            base = load_dataset(name, opts.trace_path)
            if opts.num_requests is not None:
                base = base[opts.start:opts.start + opts.num_requests] if opts.start or name != "sharegpt" \
                    else sample_specs(base, opts.num_requests, seed=opts.seed)
            factor = opts.length_scale or length_scale_factor(base, max_model_len, headroom=1.0, q=100.0)
            specs, factor = scale_lengths(base, max_model_len, factor) if factor != 1.0 else (list(base), 1.0)
        t0 = min((s.arrival_s for s in specs), default=0.0)
        arrivals = _arrivals([s.arrival_s - t0 for s in specs], opts)
        pf = PromptFactory(vocab_size)
        out = [SimRequest(f"r{k}", t, s.input_len, s.output_len, pf.unique(k, s.input_len), (hash(("r", k)),), 512)
               for k, (s, t) in enumerate(zip(specs, arrivals))]
        info.update(length_scale=factor)
    if out:
        info.update(num_requests=len(out), mean_input_len=sum(r.prompt_len for r in out) / len(out),
                    mean_output_len=sum(r.output_len for r in out) / len(out),
                    total_input_tokens=sum(r.prompt_len for r in out),
                    total_output_tokens=sum(r.output_len for r in out),
                    trace_duration_s=max(r.arrival_s for r in out),
                    request_rate=opts.request_rate, time_scale=opts.time_scale)
    return out, info


def _arrivals(trace_times: list[float], opts: WorkloadOptions) -> list[float]:
    if opts.request_rate is not None:
        if math.isinf(opts.request_rate):
            return [0.0] * len(trace_times)
        return gamma_arrivals(len(trace_times), opts.request_rate, opts.burstiness, opts.seed)
    if opts.time_scale is not None:
        return [t * opts.time_scale for t in trace_times]
    return list(trace_times)


def specs_to_sim(specs: list[RequestSpec], vocab_size: int, prefix: str = "r") -> list[SimRequest]:
    """Plain ``RequestSpec``s (e.g. the fidelity workload) as SimRequests with unique prompts."""
    pf = PromptFactory(vocab_size)
    return [SimRequest(f"{prefix}{k}", s.arrival_s, s.input_len, s.output_len, pf.unique(k, s.input_len),
                       (hash((prefix, k)),), 512) for k, s in enumerate(specs)]
