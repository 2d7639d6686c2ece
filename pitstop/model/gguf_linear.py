"""GGUF weights kept quantized (``--quantization gguf``, issue 18): the linears run on the GGUF file's own blocks.

pitstop loads a ``.gguf`` model by converting it once into a float HF folder (:mod:`pitstop.model.gguf_convert`);
every linear then streams float32 weights (540 MB per token for SmolLM2-135M, whose GGUF is Q4_1). With
``quantization="gguf"`` (vLLM's name for GGUF checkpoints) the float model is loaded as before and then each linear
whose GGUF tensor is in a supported block type is replaced by a layer that keeps that tensor's blocks:

- ``Q4_1`` (and ``Q4_0``): :class:`Q4Linear`, per group of 32 weights of a row a scale ``d`` and a minimum ``m``,
  ``w = d * q + m`` with ``q`` in 0..15 packed two per byte (GGUF's layout: byte ``j`` of a group holds weight ``j``
  in its low nibble and weight ``j + 16`` in its high one). Q4_0 (``w = d * (q - 8)``) is the same with
  ``m = -8 d`` (exact in float32). 0.625 bytes per weight instead of 4.
- ``Q8_0``: :class:`pitstop.model.int8_linear.Int8Linear` with the file's int8 values and its per-32 scales, which
  is exactly that layer's format (1.0625 bytes per weight). SmolLM2's tied ``lm_head`` is its ``token_embd`` in Q8_0.
- anything else (float tensors, K-quants): the float linear stays (named in the returned report).

The weights are *the same numbers* as the float model's: the float folder was made by dequantizing this file
(gguf-py, ``d * q + m`` in float32, where ``d * q`` is exact), so accuracy against float32 is not traded away:
only the order of float32 sums differs (few rows: none at all, the kernel dots the dequantized row with the float
code's loop). Every replaced tensor is checked at load against the float weight it replaces, bit for bit, which
also finds the row order (transformers' GGUF loader un-permutes llama's Q and K rows; both orders are tried).

Kernels: ``q4_linear`` / ``int8_linear`` of :mod:`pitstop.model.cpu_kernels`; calls of more than :data:`Q4_ROWS`
rows (prefill chunks, big decode batches) multiply a oneDNN-packed float32 copy where pre-packing passed its
probe (``use_gguf_linears(prepack=True)``: faster there than dequantizing tiles, at 4 bytes a weight of RAM; the
float32 mode keeps that copy too). Portable fallback (no kernels):
``F.linear`` on the weight dequantized at every call (correct, slow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pitstop.model.cpu_packed_linear import pack_weight, packed_linear
from pitstop.model.int8_linear import Int8Linear, dequantize_weight

Q4_ROWS = 24  # at most this many activation rows take the Q4 kernel; more: the packed float32 copy (or tiles)
# (measured on SmolLM2, 1 thread, every decoder linear of a step, kernel vs packed float32: 16 rows 77 vs 81 ms,
# 17 rows 88 vs 131 (oneDNN's rows are padded to 32), 24 rows 120 vs 131, 28 rows 141 vs 133)
Q4_TYPES = ("Q4_0", "Q4_1")
GGUF_TYPES = Q4_TYPES + ("Q8_0",)


def dequantize_q4(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """``(qs [N, K / 2] uint8, d [N, K / 32], m [N, K / 32])`` -> ``[N, K]`` weight ``d * q + m`` in ``dtype``."""
    n, half = qs.shape
    groups = qs.view(n, half // 16, 16)
    q = torch.cat([groups & 0x0F, groups >> 4], dim=2).float()  # [N, G, 32]: low nibbles first
    return (d.float()[..., None] * q + m.float()[..., None]).view(n, half * 2).to(dtype)


class Q4Linear(nn.Module):
    """A linear layer on 4-bit GGUF blocks (module docstring); ``[M, in] -> [M, out]`` in ``x.dtype``.

    Args:
        qs: ``[out, in / 2]`` uint8, two weights a byte. d, m: ``[out, in / 32]`` float32 scales and minimums.
        bias: ``[out]`` or None. kernels: the :mod:`pitstop.model.cpu_kernels` module, or None (portable).
    """

    def __init__(self, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None,
                 kernels=None, packed: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.out_features, self.in_features = qs.shape[0], qs.shape[1] * 2
        self.register_buffer("qs", qs.contiguous())
        self.register_buffer("d", d.float().contiguous())
        self.register_buffer("m", m.float().contiguous())
        self.register_buffer("bias", bias)
        self.kernels = kernels
        self.packed = packed  # the same weights in the model dtype, packed for oneDNN (or None)
        self.packed_dtype = None if packed is None else dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and x.dim() == 2 and not torch.compiler.is_compiling():
            if self.packed is not None and x.shape[0] > Q4_ROWS and x.dtype == self.packed_dtype:
                return packed_linear(x, None, self.packed, self.bias)
            return self.kernels.q4_linear(x, self.qs, self.d, self.m, self.bias, Q4_ROWS)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, dequantize_q4(self.qs, self.d, self.m, x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gguf q4, " + (
            "cpu kernel" if self.kernels is not None else "portable") + (
            f", oneDNN-packed {self.packed_dtype} above {Q4_ROWS} rows" if self.packed is not None else "")


@dataclass
class GGUFBlocks:
    """One GGUF tensor's blocks as pitstop's layers keep them: ``kind`` ``"q4"`` (``a = qs``, ``b = d``, ``c = m``)
    or ``"q8"`` (``a = int8 q [N, K]``, ``b = scale [N, K / 32]``, ``c`` None)."""

    kind: str
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """``[N, K]`` weight in ``dtype``."""
        if self.kind == "q4":
            return dequantize_q4(self.a, self.b, self.c, dtype)
        return dequantize_weight(self.a, self.b).to(dtype)

    def rows(self, index: torch.Tensor) -> GGUFBlocks:
        """The same tensor with its output rows reordered (``index [N]`` int64)."""
        return GGUFBlocks(self.kind, self.a[index], self.b[index], None if self.c is None else self.c[index])

    @staticmethod
    def cat(parts: list[GGUFBlocks]) -> GGUFBlocks:
        """Stack the output rows of tensors of one kind (a fused QKV or gate/up projection)."""
        c = None if parts[0].c is None else torch.cat([p.c for p in parts])
        return GGUFBlocks(parts[0].kind, torch.cat([p.a for p in parts]), torch.cat([p.b for p in parts]), c)


def read_blocks(tensor) -> GGUFBlocks | None:
    """A ``gguf.GGUFReader`` tensor -> :class:`GGUFBlocks`, or None for a type kept in float (see ``GGUF_TYPES``).

    Block layouts (ggml's ``block_q4_0`` / ``block_q4_1`` / ``block_q8_0``): float16 ``d`` (then float16 ``m`` for
    Q4_1), then 16 bytes of nibbles or 32 int8 values, per 32 weights."""
    kind = tensor.tensor_type.name
    if kind not in GGUF_TYPES:
        return None
    raw = np.asarray(tensor.data)
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind])
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    if kind == "Q8_0":
        q = torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(n, -1))
        return GGUFBlocks("q8", q, d)
    head = 4 if kind == "Q4_1" else 2
    qs = torch.from_numpy(blocks[..., head:].copy().reshape(n, -1))
    m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)) if kind == "Q4_1" \
        else -8.0 * d
    return GGUFBlocks("q4", qs, d, m)


def llama_qk_rows(num_rows: int, num_heads: int) -> torch.Tensor:
    """Row order transformers' GGUF loader gives llama's Q / K weights (it undoes llama.cpp's rotary permutation):
    ``new[h, i, j] = old[h, j, i]`` over ``[heads, 2, head_dim / 2]`` rows."""
    return torch.arange(num_rows).view(num_heads, -1, 2).transpose(1, 2).reshape(-1)


@dataclass
class GGUFReport:
    """What :func:`use_gguf_linears` did: replaced layers per GGUF type, and layers kept in float (with why)."""

    replaced: dict[str, int] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"gguf_linears": dict(self.replaced), "gguf_kept_float": dict(self.kept_float)}


def use_gguf_linears(model: nn.Module, gguf_file: str | Path, kernels=None, prepack: bool = False) -> GGUFReport:
    """Replace the linears of a loaded :class:`pitstop.model.llama.CausalLM` by layers on ``gguf_file``'s blocks.

    ``prepack``: Q4 layers also keep their float weight (the model dtype's: float32, or bf16 where the CPU packs
    it) packed for oneDNN (:mod:`pitstop.model.few_row_linear`) for calls of more than :data:`Q4_ROWS` rows
    (prefill chunks, big decode batches), where a GEMM on the packed float weight beats both the kernel and
    dequantizing tiles (measured on SmolLM2, 1 thread, every linear of a step at 32 rows: packed float32 about
    118-122 ms, kernel 161, tiles 164); the copy costs 4 bytes a weight.

    Raises:
        ValueError: the file has no tensors for this model's layers (another model's file).
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))
    tensors = {t.name: t for t in reader.tensors}
    if "blk.0.attn_q.weight" not in tensors:
        raise ValueError(f"{gguf_file}: no llama-style layer tensors (blk.0.attn_q.weight); cannot keep its blocks")
    report = GGUFReport()
    heads = {"attn_q": model.num_heads, "attn_k": model.num_kv_heads}
    for i in range(model.num_layers):
        p, blk = f"layers.{i}.", f"blk.{i}."
        for name, parts in ((p + "self_attn.qkv_proj", ("attn_q", "attn_k", "attn_v")),
                            (p + "self_attn.o_proj", ("attn_output",)),
                            (p + "mlp.gate_up_proj", ("ffn_gate", "ffn_up")),
                            (p + "mlp.down_proj", ("ffn_down",))):
            _replace(model, name, [(blk + x + ".weight", heads.get(x)) for x in parts], tensors, kernels, report,
                     prepack)
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    _replace(model, "lm_head", [(head, None)], tensors, kernels, report, False)
    return report


def _replace(model: nn.Module, name: str, parts: list[tuple[str, int | None]], tensors: dict, kernels,
             report: GGUFReport, prepack: bool) -> None:
    """Swap ``model.<name>`` for a layer on the GGUF blocks of ``parts`` (fused in order) when every part has a
    supported type and, dequantized, equals the float weight it replaces (in one of the row orders tried)."""
    linear = model.get_submodule(name)
    weight = linear.weight
    blocks, at = [], 0
    for tname, num_heads in parts:
        if tname not in tensors:
            report.kept_float[name] = f"{tname} not in the file"
            return
        b = read_blocks(tensors[tname])
        if b is None:
            report.kept_float[name] = f"{tname} is {tensors[tname].tensor_type.name}"
            return
        rows = b.a.shape[0]
        b = _matching_order(b, weight[at:at + rows], num_heads)
        if b is None:
            report.kept_float[name] = f"{tname} dequantized differs from the float weight"
            return
        blocks.append(b)
        at += rows
    if at != weight.shape[0] or len({b.kind for b in blocks}) != 1:
        report.kept_float[name] = "fused parts of different types or sizes"
        return
    fused = GGUFBlocks.cat(blocks)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    packed = pack_weight(weight) if prepack and fused.kind == "q4" else None
    layer = Q4Linear(fused.a, fused.b, fused.c, bias, kernels, packed, weight.dtype) if fused.kind == "q4" else \
        Int8Linear.from_quantized(fused.a, fused.b, bias, kernels)
    model.set_submodule(name, layer)
    kind = tensors[parts[0][0]].tensor_type.name
    report.replaced[kind] = report.replaced.get(kind, 0) + 1


def _matching_order(b: GGUFBlocks, weight: torch.Tensor, num_heads: int | None) -> GGUFBlocks | None:
    """``b`` in the row order whose dequantized values equal ``weight`` (as stored, in its dtype), or None."""
    candidates = [b] if num_heads is None else [b, b.rows(llama_qk_rows(b.a.shape[0], num_heads))]
    for cand in candidates:
        if cand.a.shape[0] == weight.shape[0] and torch.equal(cand.dequantize(weight.dtype), weight):
            return cand
    return None
