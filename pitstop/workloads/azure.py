"""Loader for the Azure LLM inference trace 2023 (Splitwise, ISCA'24), CC-BY-4.0.

Upstream: Azure/AzurePublicDataset @ 79092101, ``data/AzureLLMInferenceTrace_{conv,code}.csv``; columns
``TIMESTAMP,ContextTokens,GeneratedTokens``. One hour of traffic: ``conv`` (chat, 19,366 requests) and
``code`` (code completion, 8,819 requests). The package ships the first 2,000 rows of each
(``pitstop/data/traces/azure2023``); the full files are used when found next to the repo.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

from pitstop.workloads.lengths import RequestSpec, default_trace_path

AZURE_DIR = "azure2023"
AZURE_FILES = {"conv": "AzureLLMInferenceTrace_conv.csv", "code": "AzureLLMInferenceTrace_code.csv"}


def parse_timestamp(text: str) -> float:
    """Seconds since the Unix epoch (UTC) of ``'2023-11-16 18:15:46.6805900'`` (any fraction digits)."""
    whole, _, frac = text.strip().partition(".")
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def azure_trace_path(kind: str = "conv") -> Path:
    """Default file for ``kind`` (``conv`` or ``code``): full trace if present, else the vendored sample."""
    if kind not in AZURE_FILES:
        raise ValueError(f"kind must be one of {sorted(AZURE_FILES)}, got {kind!r}")
    return default_trace_path(AZURE_DIR, AZURE_FILES[kind])


def load_azure(kind: str = "conv", path: str | Path | None = None, limit: int | None = None) -> list[RequestSpec]:
    """Read an Azure 2023 trace as ``RequestSpec``s, arrival times in seconds from the first request.

    Args:
        kind: ``"conv"`` or ``"code"`` (picks the default file; ignored when ``path`` is given).
        path: a CSV with the upstream columns; None uses ``azure_trace_path(kind)``.
        limit: read at most this many rows (None: all).

    Rows with a non-positive token count are dropped (a request must have >= 1 prompt and >= 1 output token).
    """
    path = Path(path) if path is not None else azure_trace_path(kind)
    specs: list[RequestSpec] = []
    t0: float | None = None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if limit is not None and len(specs) >= limit:
                break
            t = parse_timestamp(row["TIMESTAMP"])
            t0 = t if t0 is None else t0
            inp, outp = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            if inp >= 1 and outp >= 1:
                specs.append(RequestSpec(arrival_s=t - t0, input_len=inp, output_len=outp))
    return specs
