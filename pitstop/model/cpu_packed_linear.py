"""Linear layers with weights pre-packed for oneDNN on the CPU (bf16).

``F.linear`` on a bf16 CPU tensor calls oneDNN's matmul with the weight in its plain ``[out, in]``
layout, so oneDNN re-packs the whole weight into its blocked (AMX / AVX-512) layout on *every*
call. Packing once at load time (``torch.ops.mkldnn._reorder_linear_weight``, the op that
torch.compile's CPU weight-prepack pass uses) and calling ``torch.ops.mkldnn._linear_pointwise``
skips that work: measured on this machine (1 thread, the 30 layers' linears of SmolLM2-135M)
136 vs 172 ms at 160 rows and 53 vs 59 ms at 8 rows. The results are bit-identical to
``F.linear`` (same oneDNN kernel, same accumulation).

Whether this CPU can run the ops at all is probed once at load (``pitstop.model.cpu_features``);
the model runner packs only when the probe passed and bf16 is native.

One row (a batch-1 decode) keeps the plain weight: ATen's native GEMV streams it faster than
any oneDNN path (43 vs 54 ms), so the plain weight stays alongside the packed copy (the linear
weights are held twice; for a 135M model that is +212 MB of RAM).

Row buckets: oneDNN compiles (about 200 us) and caches a primitive per row count M, and a serving
engine sees a new M almost every step, so the process grew by hundreds of MiB (issue 14's soak) and
mixed steps paid the compile for every layer. Rows are zero-padded up to :func:`row_bucket` (exact up
to 16, then fewer than max(16, M/8) more rows), which bounds the shapes to a few dozen: measured on an AVX-512 BF16
EPYC (1 thread, a 576x1536 linear over M = 2..801, 1,600 calls) +34 MiB and 6.4 s with buckets vs
+614 MiB and 8.2 s without. Padding rows are zeros and are sliced off; the other rows' results do not
depend on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pitstop.model.cpu_features import cpu_features


def can_prepack(dtype: torch.dtype, device: torch.device) -> bool:
    """True when oneDNN weight pre-packing applies: a bf16 model on a CPU whose probe ran the op
    (``pitstop.model.cpu_features.probe_prepack``: it raises on CPUs without AVX-512/AVX-NE-CONVERT)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and cpu_features().prepack.ok


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` bf16 weight -> opaque oneDNN tensor for :func:`packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


EXACT_ROWS = 16  # row counts up to this run unpadded (decode batches)


def row_bucket(rows: int) -> int:
    """The padded row count for ``rows``: ``rows`` itself up to :data:`EXACT_ROWS`, else the next multiple of
    ``max(16, 2**(bit_length(rows) - 4))``: fewer than ``max(16, rows/8)`` padding rows, at most 8 buckets per
    doubling (39 for 1..512 rows)."""
    if rows <= EXACT_ROWS:
        return rows
    step = max(EXACT_ROWS, 1 << (rows.bit_length() - 4))
    return -(-rows // step) * step


def packed_linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` ``[M, in]`` -> ``[M, out]``; the packed weight (rows padded to :func:`row_bucket`) for ``M > 1``,
    ``F.linear`` otherwise."""
    rows = x.shape[0]
    if packed is None or rows == 1 or x.dim() != 2:
        return F.linear(x, weight, bias)
    padded = row_bucket(rows)
    if padded != rows:
        x = F.pad(x, (0, 0, 0, padded - rows))
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out if padded == rows else out[:rows]


class PackedLinear(nn.Linear):
    """``nn.Linear`` that also holds a oneDNN-packed copy of its weight (see module docstring).

    Built by :func:`prepack_linears`; the packed copy is taken at that moment, so the weight must
    not change afterwards (pitstop never trains).
    """

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, in]`` -> ``[M, out]``."""
        return packed_linear(x, self.weight, self.packed, self.bias)


def prepack_linears(model: nn.Module) -> int:
    """Turn every ``nn.Linear`` of ``model`` into a :class:`PackedLinear` in place.

    Returns:
        the number of layers packed (0 when :func:`can_prepack` is false for the model's weights).
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and can_prepack(module.weight.dtype, module.weight.device):
            module.__class__ = PackedLinear
            module.packed = pack_weight(module.weight)
            count += 1
    return count
