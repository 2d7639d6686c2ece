"""Building blocks shared by the decoder-only models: RMSNorm, rotary tables, fused MLP.

Numerics follow transformers' Llama/Qwen implementations (source:
``transformers/models/llama/modeling_llama.py``): RMSNorm in float32 then cast back, rotary
cos/sin computed in float32 from transformers' own ``ROPE_INIT_FUNCTIONS`` and multiplied by
the rope ``attention_scaling`` before casting to the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, ``weight * (x / rms(x))``, statistics in float32.

    Args:
        size: normalised dimension.
        eps: variance epsilon (``config.rms_norm_eps``).
    """

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    kernels = None  # pitstop's C++ kernels (pitstop.model.optimize: float32 models where they loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., size]`` -> same shape and dtype."""
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, h: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-norm block's residual add and norm: ``r = h + residual`` (``h`` when None) -> ``(norm(r), r)``,
        both ``[T, size]``; one C++ call (``add_rms_norm``) for float32 where :attr:`kernels` is set."""
        if self.kernels is not None and h.dtype == torch.float32 and h.dim() == 2 \
                and not torch.compiler.is_compiling():
            out, r = self.kernels.add_rms_norm(h, residual, self.weight, self.eps)
            return out, r
        r = h if residual is None else h + residual
        return self(r), r


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF-compatible RMSNorm: normalise in float32, cast to ``x.dtype``, multiply by ``weight``.

    ``weight`` broadcasts against ``x`` (``[size]``, or ``[H, D]`` for fused per-head norms).
    In float32 this is a single fused op.
    """
    if x.dtype == torch.float32 and weight.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    return weight * normed.to(x.dtype)


def rope_cos_sin(hf_config, head_dim: int, max_positions: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for positions ``0 .. max_positions - 1``.

    Uses ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` (linear, dynamic, yarn, llama3,
    longrope ...) exactly as transformers does, so scaled-rope models match HF. Dynamic NTK is
    evaluated at ``max_position_embeddings`` (HF only changes it beyond that length).

    Returns:
        ``(cos, sin_signed)`` each ``[max_positions, head_dim]`` in ``dtype``; ``sin_signed`` has
        its first half negated so that ``rotate_half(x) * sin == x.roll(D/2, -1) * sin_signed``.
    """
    with torch.device("cpu"):  # real tensors even when the model is built on the meta device
        return _rope_cos_sin(hf_config, head_dim, max_positions, dtype)


def _rope_cos_sin(hf_config, head_dim: int, max_positions: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        attention_scaling = 1.0
    else:
        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    if inv_freq.numel() * 2 != head_dim:
        raise ValueError(f"partial rotary embeddings are not supported (rope dim {inv_freq.numel() * 2} != {head_dim})")
    freqs = torch.arange(max_positions, dtype=torch.int64).float()[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * attention_scaling).to(dtype)
    sin = (emb.sin() * attention_scaling).to(dtype)
    half = head_dim // 2
    sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    return cos, sin_signed


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, H, D]`` by per-token tables ``[T, 1, D]`` (same math as HF)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class GatedMLP(nn.Module):
    """SwiGLU MLP with gate and up projections fused: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` -> ``[T, hidden]``."""
        gate_up = self.gate_up_proj(x)
        return self.down_proj(F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :])
