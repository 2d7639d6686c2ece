"""Roofline bound of a decode step, and this machine's measured peaks.

Source: the roofline model, S. Williams, A. Waterman, D. Patterson, "Roofline: an insightful visual performance
model for multicore architectures", CACM 52(4), 2009. A kernel that moves ``B`` bytes and does ``F`` FLOPs on a
machine with memory bandwidth ``W`` (bytes/s) and peak ``P`` (FLOP/s) takes at least ``max(B / W, F / P)`` s.

For one decode step of a decoder-only transformer (batch ``b`` sequences, each with ``c`` context tokens):

- bytes  = weight bytes (every parameter once; tied embeddings / lm_head counted once)
           + KV bytes read = ``b * c * layers * 2 * kv_heads * head_dim * dtype_bytes``
- flops  = ``2 * params_per_token * b`` (one multiply-add per matmul weight per token; params_per_token =
           the linear layers of every block + the lm_head, not the embedding lookup)
           + attention = ``4 * b * c * layers * heads * head_dim`` (QK^T and PV, 2 FLOPs per MAC each)

Activations, norms, softmax and sampling are ignored (small next to the above), so the bound is optimistic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from pitstop.model.cpu_features import cpu_features
from pitstop.model.shape import ModelShape

GIB = 1024 ** 3


@dataclass(frozen=True)
class DecodeBound:
    """Roofline terms of one decode step (bytes, FLOPs, seconds)."""

    bytes_moved: float
    flops: float
    memory_s: float
    compute_s: float

    @property
    def bound_s(self) -> float:
        """The roofline lower bound on the step time, seconds."""
        return max(self.memory_s, self.compute_s)

    @property
    def regime(self) -> str:
        """``"memory"`` when bandwidth limits the step, else ``"compute"``."""
        return "memory" if self.memory_s >= self.compute_s else "compute"


def decode_bound(hf_config: Any, batch: int, context_len: float, dtype_bytes: int, peak_flops: float,
                 bandwidth: float, weight_bytes: float | None = None) -> DecodeBound:
    """Roofline terms of one decode step (see the module docstring for the formula).

    Args:
        hf_config: the model's HF config (or a ``ModelShape``).
        batch: sequences decoded in the step (one new token each).
        context_len: mean tokens already in each sequence's KV cache (tokens).
        dtype_bytes: bytes per weight and per KV element (2 for bf16, 4 for fp32).
        peak_flops: matmul peak, FLOP/s.
        bandwidth: memory read bandwidth, bytes/s.
        weight_bytes: bytes per weight when they differ from ``dtype_bytes`` (1.125 for int8 weights with a float32
            scale per 32; 0.75 for GGUF Q4_1 blocks as pitstop keeps them, float32 scale and minimum per 32; the
            KV cache stays in ``dtype_bytes``).
    """
    shape = hf_config if isinstance(hf_config, ModelShape) else ModelShape.from_hf_config(hf_config)
    weight_bytes = shape.total_params() * (dtype_bytes if weight_bytes is None else weight_bytes)
    kv_bytes = batch * context_len * shape.kv_bytes_per_token(dtype_bytes)
    attn_flops = 4 * batch * context_len * shape.num_layers * shape.num_heads * shape.head_dim
    flops = 2 * shape.params_per_token() * batch + attn_flops
    nbytes = weight_bytes + kv_bytes
    return DecodeBound(bytes_moved=nbytes, flops=flops, memory_s=nbytes / bandwidth, compute_s=flops / peak_flops)


def decode_roofline_s(hf_config: Any, batch: int, context_len: float, dtype_bytes: int, peak_flops: float,
                      bandwidth: float) -> float:
    """Lower bound (seconds) of one decode step: ``max(bytes / bandwidth, flops / peak_flops)``."""
    return decode_bound(hf_config, batch, context_len, dtype_bytes, peak_flops, bandwidth).bound_s


# ---------------------------------------------------------------- measurement of this machine's peaks


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time (seconds) of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 3) -> float:
    """Peak matmul rate (FLOP/s) of an ``n x n @ n x n`` product in ``dtype``: ``2 n^3 / best time``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return 2.0 * n ** 3 / best_time(lambda: torch.matmul(a, b, out=out), repeats)


def measure_read_bandwidth(nbytes: int = GIB // 2, repeats: int = 5) -> float:
    """Memory read bandwidth (bytes/s) over an fp32 tensor of ``nbytes`` bytes (far above cache size).

    Best of two read-only kernels: a full sum, and a matrix-vector product ``(n/1024 x 1024) @ (1024,)`` (the
    access pattern of a batch-1 decode matmul). Bytes counted: the tensor once.
    """
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    m, v = x.view(-1, 1024), torch.ones(1024)
    best = min(best_time(lambda: x.sum(), repeats), best_time(lambda: m @ v, repeats))
    return nbytes / best


def measure_copy_bandwidth(nbytes: int = GIB // 4, repeats: int = 3) -> float:
    """Copy bandwidth (bytes/s counted as bytes read + bytes written) of an fp32 tensor of ``nbytes``."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    y = torch.empty_like(x)
    return 2 * nbytes / best_time(lambda: y.copy_(x), repeats)


@dataclass(frozen=True)
class MachinePeaks:
    """Measured peaks of this machine with the current torch thread count."""

    threads: int
    bf16_flops: float
    fp32_flops: float
    read_bandwidth: float
    copy_bandwidth: float

    def flops_for(self, dtype: torch.dtype) -> float:
        """Matmul peak (FLOP/s) for ``dtype`` (fp32 peak for anything not bf16/fp16)."""
        return self.bf16_flops if dtype in (torch.bfloat16, torch.float16) else self.fp32_flops

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly, with GFLOP/s and GB/s (10^9) added."""
        d: dict[str, float] = asdict(self)
        d.update(bf16_gflops=self.bf16_flops / 1e9, fp32_gflops=self.fp32_flops / 1e9,
                 read_gbs=self.read_bandwidth / 1e9, copy_gbs=self.copy_bandwidth / 1e9)
        return d


def measure_peaks(n: int = 2048, repeats: int = 3, nbytes: int = GIB // 2) -> MachinePeaks:
    """Measure bf16 and fp32 matmul peaks and read/copy bandwidth (about 5-10 s on 2 cores).

    Where bf16 is emulated (``cpu_features().native_bf16`` false: ~0.3 GFLOP/s seen), its matmul is
    measured at ``n = 512`` so it takes about a second instead of minutes.
    """
    bf16_n = n if cpu_features().native_bf16 else min(n, 512)
    return MachinePeaks(
        threads=torch.get_num_threads(),
        bf16_flops=measure_matmul_flops(torch.bfloat16, bf16_n, repeats),
        fp32_flops=measure_matmul_flops(torch.float32, n, repeats),
        read_bandwidth=measure_read_bandwidth(nbytes, repeats),
        copy_bandwidth=measure_copy_bandwidth(nbytes // 2, repeats),
    )


if __name__ == "__main__":  # pragma: no cover - manual check
    print(measure_peaks().to_dict())
