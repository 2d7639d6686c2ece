"""Loader for ShareGPT prompt/decode length statistics (Llama-2 tokenizer), Apache-2.0.

Upstream: microsoft/sarathi-serve @ 72339db5,
``data/processed_traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv``; columns
``num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio`` (30,731 conversations, <= 8K tokens).
There are no timestamps: every arrival is 0.0 s (offline); use ``poisson_arrivals`` for a serving replay.
The package ships the first 2,000 rows (``pitstop/data/traces/sharegpt_stats``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pitstop.workloads.lengths import RequestSpec, default_trace_path

SHAREGPT_DIR = "sharegpt_stats"
SHAREGPT_FILE = "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def sharegpt_trace_path() -> Path:
    """Default file: the full upstream CSV if present next to the repo, else the vendored sample."""
    return default_trace_path(SHAREGPT_DIR, SHAREGPT_FILE)


def load_sharegpt(path: str | Path | None = None, limit: int | None = None) -> list[RequestSpec]:
    """Read ShareGPT lengths as ``RequestSpec``s (arrival 0.0 s; rows with a zero length dropped)."""
    path = Path(path) if path is not None else sharegpt_trace_path()
    specs: list[RequestSpec] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if limit is not None and len(specs) >= limit:
                break
            inp, outp = int(row["num_prefill_tokens"]), int(row["num_decode_tokens"])
            if inp >= 1 and outp >= 1:
                specs.append(RequestSpec(arrival_s=0.0, input_len=inp, output_len=outp))
    return specs
