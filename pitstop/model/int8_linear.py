"""Weight-only int8 linears (``--quantization int8``, issue 18).

Every ``nn.Linear`` of the model (the fused QKV, o, gate/up and down projections and ``lm_head``) is replaced by an
:class:`Int8Linear`: weights quantized symmetrically per group of :data:`GROUP_SIZE` consecutive weights of an output
row (llama.cpp's Q8_0 grouping), ``q = round(w / s)`` with ``s = max|w_group| / 127`` (q in [-127, 127], int8), one
float32 scale per group (per row where the row length is not a multiple of the group); activations stay in the
model dtype and ``y = x @ (q * s)^T + bias``. Per-row scales (the first version) left 48% of greedy positions equal
to float32 on SmolLM2, whose float weights are Q4_1 values with their own scale and minimum every 32 weights;
``benchmarks/int8_accuracy.py`` measures both. The embedding table stays in the model dtype (only the looked-up rows are
read), so a tied ``lm_head`` gets its own int8 copy. Weight bytes per token fall 4x against float32 (2x against
bf16), which is what a memory-bound batch-1 decode is paying for.

Kernels: ``int8_linear`` of :mod:`pitstop.model.cpu_kernels` (few rows: each int8 weight row is read once,
converted to float once and dotted with up to four activation rows at a time; more rows: oneDNN's GEMM on the
dequantized weight packed once at load where float32 pre-packing passed its probe (:meth:`Int8Linear.pack`), else
weight tiles dequantized into L2 and multiplied with ATen's GEMM). Portable fallback (no kernels:
``PITSTOP_PORTABLE``, no compiler): ``F.linear(x, dequantize_weight(q, s))``, the same math with the weight
dequantized on every call (correct, slower). ATen's own ``torch.ops.aten._weight_int8pack_mm`` was measured and lost on an AVX2 machine (float32 activations: 10-200x
slower than float32 ``F.linear``; bf16 activations, emulated there: 1.1-6x slower; see benchmarks/README.md).

Accuracy is measured, not assumed: ``benchmarks/int8_accuracy.py`` (greedy agreement with float32, perplexity).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from pitstop.model.cpu_packed_linear import pack_weight, packed_linear

GROUP_SIZE = 32  # weights per scale (a row's length must be a multiple, else one scale per row)
GEMV_ROWS = 16  # at most this many activation rows take the read-weights-once kernel; more use tiled GEMM
# (measured: the kernel wins up to 16 rows, 84 vs 118 ms for every linear of a step, and loses at 32: 197 vs 176)


def quantize_weight(weight: torch.Tensor, group_size: int | None = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K]`` float weight -> ``(q [N, K] int8, scale [N, K // g] float32)`` with
    ``weight ~= (q.view(N, K // g, g) * scale[..., None]).view(N, K)``; ``g = group_size`` when it divides ``K``,
    else ``K`` (and always ``K`` for ``group_size=None``: one scale per row).

    All-zero groups get scale 1 (q = 0)."""
    w = weight.detach().float()
    n, k = w.shape
    g = group_size if group_size and k % group_size == 0 else k
    wg = w.view(n, k // g, g)
    scale = wg.abs().amax(dim=2) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(wg / scale[..., None]).clamp_(-127, 127).to(torch.int8).view(n, k)
    return q.contiguous(), scale.contiguous()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(q [N, K] int8, scale [N, groups])`` -> ``[N, K]`` weight in ``dtype``."""
    n, k = q.shape
    return (q.to(dtype).view(n, scale.shape[1], -1) * scale.to(dtype)[..., None]).view(n, k)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and float32 scales per group of a row (see module docstring).

    Args:
        linear: the float layer to quantize (its weight is not kept).
        kernels: the :mod:`pitstop.model.cpu_kernels` module, or None for the portable path.
        group_size: weights per scale (``quantize_weight``); None: one scale per output row.
    """

    def __init__(self, linear: nn.Linear, kernels=None, group_size: int | None = GROUP_SIZE) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight, group_size)
        self._keep(q, scale, None if linear.bias is None else linear.bias.detach().clone(), kernels)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                       kernels=None) -> Int8Linear:
        """A layer on already-quantized weights (``q [N, K]`` int8, ``scale [N, groups]`` float32, e.g. a GGUF Q8_0
        tensor's, :mod:`pitstop.model.gguf_linear`)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._keep(q.contiguous(), scale.float().contiguous(), bias, kernels)
        return layer

    def _keep(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, kernels) -> None:
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.kernels = kernels
        self.packed = None  # set by pack(): the dequantized weight, packed for oneDNN
        self.packed_dtype = None

    def pack(self, dtype: torch.dtype = torch.float32) -> None:
        """Keep the dequantized weight (the same numbers the kernel multiplies) packed for oneDNN, for ``dtype`` calls
        of more than ``GEMV_ROWS`` rows (prefill chunks, big decode batches), where oneDNN's GEMM on it beats
        dequantizing tiles for ATen's (every linear of a SmolLM2 step at 32 rows, 1 thread: about 120 vs 164 ms);
        4 bytes a weight of RAM."""
        self.packed = pack_weight(dequantize_weight(self.qweight, self.scale).to(dtype))
        self.packed_dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, in]`` -> ``[M, out]`` in ``x.dtype``."""
        if self.kernels is not None and x.dim() == 2:
            if torch.compiler.is_compiling():  # traced by torch.compile: the kernel as a registered op
                return _int8_op()(x, self.qweight, self.scale, self.bias, GEMV_ROWS)
            if self.packed is not None and x.shape[0] > GEMV_ROWS and x.dtype == self.packed_dtype:
                return packed_linear(x, None, self.packed, self.bias)
            return self.kernels.int8_linear(x, self.qweight, self.scale, self.bias, GEMV_ROWS)
        return F.linear(x, dequantize_weight(self.qweight, self.scale, x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, " + (
            "cpu kernel" if self.kernels is not None else "portable") + (
            f", oneDNN-packed above {GEMV_ROWS} rows" if self.packed is not None else "")


def quantize_linears(model: nn.Module, kernels=None, prepack: bool = False) -> int:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`Int8Linear` in place; returns how many.

    The float weights of the replaced layers are released (a tied ``lm_head`` keeps the embedding's). ``prepack``:
    the layers also keep their dequantized weight packed for oneDNN in the model's dtype (:meth:`Int8Linear.pack`;
    call only where :func:`pitstop.model.few_row_linear.packs` is true for it)."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, module in targets:
        layer = Int8Linear(module, kernels)
        if prepack and kernels is not None:
            layer.pack(module.weight.dtype)
        model.set_submodule(name, layer)
    return len(targets)


@cache
def _int8_op():
    """``torch.ops.pitstop.int8_linear``: the C++ kernel registered as a custom op so that ``torch.compile``
    (:mod:`pitstop.model.compiled`) can put it in a graph (eager calls skip the dispatcher and call it directly)."""

    @torch.library.custom_op("pitstop::int8_linear", mutates_args=(),
                             schema="(Tensor x, Tensor w, Tensor scale, Tensor? bias, int gemv_rows) -> Tensor")
    def op(x, w, scale, bias, gemv_rows):
        from pitstop.model.cpu_kernels import cpu_kernels

        return cpu_kernels().int8_linear(x, w, scale, bias, gemv_rows)

    @op.register_fake
    def _(x, w, scale, bias, gemv_rows):
        return x.new_empty((x.shape[0], w.shape[0]))

    return op
