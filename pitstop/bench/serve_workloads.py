"""Workloads for ``pitstop bench serve``: ``(arrival_s, prompt_ids, output_len)`` per request.

Prompts are token ids drawn from a "safe" vocabulary: tokens that decode to a space plus 3-8 lowercase
letters and encode back to themselves alone. With byte-level BPE (GPT-2 pre-tokenizer regex; SmolLM2,
Qwen, Llama-3) each such token is its own pre-token, so any sequence of them round-trips
``decode -> encode`` exactly, and the text sent to any server has the intended token count.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pitstop.workloads import load_dataset, random_specs, sample_specs, scale_lengths
from pitstop.workloads.lengths import RequestSpec, length_scale_factor
from pitstop.workloads.mooncake import build_block_prompts, load_mooncake, scale_mooncake

TRACES = ("azure-conv", "azure-code", "mooncake", "sharegpt-stats", "random")


@dataclass
class BenchRequest:
    """One request to send: when (s from start), the prompt text and its token count, tokens to generate."""

    arrival_s: float
    prompt: str
    prompt_len: int
    output_len: int


def safe_vocab(tokenizer, limit: int = 4000) -> list[int]:
    """Token ids that round-trip alone and in sequence (see module docstring)."""
    word = re.compile(r"^ [a-z]{3,8}$")
    out = []
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if word.match(text) and tokenizer.encode(text, add_special_tokens=False) == [tid]:
            out.append(tid)
            if len(out) >= limit:
                break
    if len(out) < 100:
        raise ValueError("tokenizer has too few word tokens for round-trip prompts")
    return out


def _texts(tokenizer, prompts: list[list[int]]) -> tuple[list[str], float]:
    """Decode prompts; also the fraction that re-encode to exactly the same ids."""
    texts = [tokenizer.decode(p) for p in prompts]
    ok = sum(tokenizer.encode(t, add_special_tokens=False) == p for t, p in zip(texts, prompts))
    return texts, ok / max(1, len(prompts))


def build_workload(trace: str, tokenizer, num_requests: int, max_model_len: int, seed: int = 0,
                   length_scale: float | None = None, time_scale: float | None = None,
                   random_input_len: int = 256, random_output_len: int = 64,
                   trace_path: str | None = None) -> tuple[list[BenchRequest], dict]:
    """Build ``num_requests`` requests of ``trace``; returns (requests, info about scaling and round-trip).

    Lengths are scaled by ``length_scale`` (default: ``length_scale_factor``, so p99 of prompt+output fits
    90% of ``max_model_len``). Trace arrival times (azure, mooncake) are kept and multiplied by
    ``time_scale`` when given; ``sharegpt-stats`` and ``random`` have no times (the caller draws Poisson ones).
    """
    vocab = safe_vocab(tokenizer)
    rng = random.Random(seed)
    info: dict = {"trace": trace}
    if trace == "mooncake":
        reqs = load_mooncake(trace_path)
        start = rng.randrange(max(1, len(reqs) - num_requests + 1))
        reqs = reqs[start:start + num_requests]
        t0 = reqs[0].spec.arrival_s
        factor = length_scale or length_scale_factor([r.spec for r in reqs], max_model_len)
        reqs, block = scale_mooncake(reqs, factor, max_model_len)
        prompts = build_block_prompts(reqs, block, vocab, seed)
        specs = [RequestSpec(r.spec.arrival_s - t0, r.spec.input_len, r.spec.output_len) for r in reqs]
        all_ids = [h for r in reqs for h in r.hash_ids]
        info.update(block_tokens=block, repeated_block_fraction=1 - len(set(all_ids)) / max(1, len(all_ids)))
    else:
        if trace == "random":
            specs = random_specs(num_requests, random_input_len, random_output_len, 0.0, seed)
            factor = 1.0
        else:
            base = load_dataset("sharegpt" if trace == "sharegpt-stats" else trace, trace_path)
            specs = sample_specs(base, num_requests, seed=seed, contiguous=trace != "sharegpt-stats")
            specs, factor = scale_lengths(specs, max_model_len, length_scale)
        prompts = [[rng.choice(vocab) for _ in range(s.input_len)] for s in specs]
    if time_scale is not None:
        specs = [RequestSpec(s.arrival_s * time_scale, s.input_len, s.output_len) for s in specs]
    texts, roundtrip = _texts(tokenizer, prompts)
    info.update(length_scale=factor, time_scale=time_scale, roundtrip_fraction=roundtrip,
                mean_input_len=sum(s.input_len for s in specs) / len(specs),
                mean_output_len=sum(s.output_len for s in specs) / len(specs),
                trace_duration_s=max(s.arrival_s for s in specs))
    return [BenchRequest(s.arrival_s, t, s.input_len, s.output_len) for s, t in zip(specs, texts)], info


def has_timestamps(trace: str) -> bool:
    return trace in ("azure-conv", "azure-code", "mooncake")
