"""float32 linears with a few-row kernel (issue 18): decode batches and speculative verify rows; many rows on a
oneDNN-packed weight.

ATen's float32 GEMM (MKL / oneDNN) is far from the memory bound when the activation has only a few rows: measured
on an AVX2 EPYC (1 thread, every linear of one SmolLM2-135M step, 540 MB of weights), 1 row 40 ms, 2 rows 72 ms,
4 rows 80 ms, 8 rows 90 ms, 16 rows 112 ms. ``linear_rows`` of :mod:`pitstop.model.cpu_kernels` reads each weight
row once for up to four activation rows at a time, with independent accumulators: 31, 36, 38, 59 and 110 ms on the
same shapes, and slower than ATen above 16 rows (215 vs 154 ms at 32; ``benchmarks/cpu_kernels_micro.py``). A
speculative verify of 8 drafts at batch 1 is 9 rows. So :class:`FewRowLinear` sends at most
:data:`FEW_ROWS` rows to the kernel and everything else (prefill chunks, big decode batches) to ``F.linear``.

Above :data:`FEW_ROWS` rows (prefill chunks, batch-32 decodes) the weight pre-packed once for oneDNN (its blocked
layout; ``torch.ops.mkldnn._reorder_linear_weight``, the op torch.compile's weight-prepack pass uses) beats ATen's
``F.linear`` too: measured on the same machine and shapes, 0.70x of its time at 32 rows and 0.65x at 64. Rows are
padded to :func:`pitstop.model.cpu_packed_linear.row_bucket` as for bf16 (oneDNN caches a primitive per row count).
The packed copy is a second copy of the weights (+540 MB for SmolLM2-135M in float32); it is made only where
:func:`probe_fp32_prepack` ran the op on this CPU and matched ``F.linear``.

Each output element is a float32 dot product either way; the kernel sums in another order than ATen, so results
differ in the last bits (about 1e-6 relative), not more. Used only for float32 models on CPUs whose kernels built
and passed their probe (``PITSTOP_PORTABLE`` / ``PITSTOP_NO_CPU_KERNELS``: plain ``F.linear``), and never inside
``torch.compile`` (Inductor gets ``F.linear``).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from pitstop.model.cpu_features import probe_prepack
from pitstop.model.cpu_packed_linear import pack_weight, packed_linear

FEW_ROWS = 16  # activation rows up to this take the kernel (see the module docstring for the measurement)


class FewRowLinear(nn.Module):
    """An ``nn.Linear`` whose calls with at most :data:`FEW_ROWS` rows run ``linear_rows`` (module docstring).

    The weight and bias are the wrapped layer's own parameters (shared, so a tied ``lm_head`` stays tied).

    Args:
        linear: a float32 ``nn.Linear``.
        kernels: the :func:`pitstop.model.cpu_kernels.cpu_kernels` module.
    """

    def __init__(self, linear: nn.Linear, kernels, prepack: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.kernels = kernels
        self.packed = pack_weight(self.weight) if prepack else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, in]`` -> ``[M, out]``; more rows: the packed weight (when packed); any other rank or dtype:
        ``F.linear``."""
        if x.dim() == 2 and x.dtype == torch.float32 and not torch.compiler.is_compiling():
            if x.shape[0] <= FEW_ROWS:
                return self.kernels.linear_rows(x, self.weight, self.bias)
            if self.packed is not None:
                return packed_linear(x, self.weight, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, few-row kernel <= {FEW_ROWS}"
                + (", oneDNN-packed above" if self.packed is not None else ""))


def use_few_row_linears(model: nn.Module, kernels, prepack: bool | None = None) -> int:
    """Wrap every float32, contiguous ``nn.Linear`` of ``model`` in a :class:`FewRowLinear` in place; returns how
    many. Call only with a loaded kernel module. ``prepack``: pack the weights for oneDNN too (None: where
    :func:`probe_fp32_prepack` passes)."""
    if prepack is None:
        prepack = probe_fp32_prepack()
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.is_contiguous()]
    for name, module in targets:
        model.set_submodule(name, FewRowLinear(module, kernels, prepack))
    return len(targets)


@cache
def probe_fp32_prepack() -> bool:
    """True when oneDNN packs a float32 weight on this CPU and its linear agrees with ``F.linear`` (1e-5):
    :func:`pitstop.model.cpu_features.probe_prepack` in float32, once per process."""
    with torch.device("cpu"):  # the model may be built under torch.device("meta")
        return probe_prepack(torch.float32).ok


def packs(dtype: torch.dtype) -> bool:
    """True when linear weights of ``dtype`` can be pre-packed for oneDNN on this CPU: float32 by
    :func:`probe_fp32_prepack`, bfloat16 by the load-time bf16 probe (``cpu_features().prepack``)."""
    if dtype == torch.float32:
        return probe_fp32_prepack()
    from pitstop.model.cpu_features import cpu_features

    return dtype == torch.bfloat16 and cpu_features().prepack.ok
