"""Loader for the Mooncake FAST'25 conversation trace (Kimi traffic), Apache-2.0, and prompts that keep
its prefix sharing.

Upstream: kvcache-ai/Mooncake @ 3cca71da, ``FAST25-release/traces/conversation_trace.jsonl``; one JSON object
per line: ``timestamp`` (ms), ``input_length``, ``output_length`` (tokens), ``hash_ids`` (one id per
512-token block of the prompt; equal ids = identical blocks). The package ships the first 1,000 lines
(``pitstop/data/traces/mooncake``); the full file is used when found next to the repo.

``build_block_prompts`` turns hash ids into token-id prompts whose blocks are identical exactly where the
hash ids are equal, so the trace's prefix sharing is real for a prefix cache. When lengths are scaled by
a factor ``f`` the block size is scaled by the same ``f`` (``512 * f`` tokens), so the number of blocks per
prompt, and hence the sharing structure, is kept.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pitstop.workloads.lengths import RequestSpec, default_trace_path

MOONCAKE_DIR = "mooncake"
MOONCAKE_FILE = "conversation_trace.jsonl"
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per hash id in the upstream trace (Mooncake README)."""


@dataclass(frozen=True)
class MooncakeRequest:
    """One trace line: a ``RequestSpec`` (arrival in seconds) and the prompt's block hash ids."""

    spec: RequestSpec
    hash_ids: tuple[int, ...]


def mooncake_trace_path() -> Path:
    """Default file: the full upstream trace if present next to the repo, else the vendored sample."""
    return default_trace_path(MOONCAKE_DIR, MOONCAKE_FILE)


def load_mooncake(path: str | Path | None = None, limit: int | None = None) -> list[MooncakeRequest]:
    """Read the trace; arrival times in seconds from the first request (timestamps are ms)."""
    path = Path(path) if path is not None else mooncake_trace_path()
    out: list[MooncakeRequest] = []
    t0 = None
    with open(path) as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            t = float(row["timestamp"]) / 1000.0
            t0 = t if t0 is None else t0
            inp, outp = int(row["input_length"]), int(row["output_length"])
            if inp >= 1 and outp >= 1:
                out.append(MooncakeRequest(RequestSpec(t - t0, inp, outp), tuple(int(h) for h in row["hash_ids"])))
    return out


def scale_mooncake(reqs: list[MooncakeRequest], factor: float, max_model_len: int) -> tuple[list[MooncakeRequest], int]:
    """Scale lengths by ``factor`` and return (requests, block size in tokens = round(512 * factor)).

    The prompt keeps ``ceil(input_len / 512)`` blocks (one per hash id), the last one partial; prompt and
    output are clipped to fit ``max_model_len``.
    """
    block = max(1, round(MOONCAKE_BLOCK_TOKENS * factor))
    out = []
    for r in reqs:
        inp = min(max(1, round(r.spec.input_len * factor)), max_model_len - 1)
        outp = min(max(1, round(r.spec.output_len * factor)), max_model_len - inp)
        nblocks = min(len(r.hash_ids), -(-inp // block))
        out.append(MooncakeRequest(RequestSpec(r.spec.arrival_s, inp, outp), r.hash_ids[:nblocks]))
    return out, block


def build_block_prompts(reqs: list[MooncakeRequest], block_tokens: int, vocab: list[int],
                        seed: int = 0) -> list[list[int]]:
    """Token-id prompts: block ``i`` of a prompt is a seeded random draw from ``vocab`` keyed by its hash id
    (equal ids -> identical tokens); the prompt is the concatenation cut to ``input_len`` tokens."""
    cache: dict[int, list[int]] = {}

    def block(h: int) -> list[int]:
        if h not in cache:
            rng = random.Random(hash((seed, h)))
            cache[h] = [rng.choice(vocab) for _ in range(block_tokens)]
        return cache[h]

    prompts = []
    for r in reqs:
        ids: list[int] = []
        for h in r.hash_ids:
            ids.extend(block(h))
        while len(ids) < r.spec.input_len:  # trace lines whose hash ids cover fewer tokens than input_len
            ids.extend(block(-1 - len(ids)))
        prompts.append(ids[:r.spec.input_len])
    return prompts
