"""Llama-family decoder (Llama, Qwen2) on a paged KV cache, plus the :class:`CausalLM` base.

Weights use pitstop's fused layout (see :mod:`pitstop.model.loader`): ``qkv_proj`` is
``cat(q_proj, k_proj, v_proj)`` and ``gate_up_proj`` is ``cat(gate_proj, up_proj)`` along the
output dim. Source of the math: ``transformers/models/{llama,qwen2}/modeling_*.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from pitstop.model.attention import AttentionBackend, get_attention_backend
from pitstop.model.attention.metadata import AttentionMetadata
from pitstop.model.layers import GatedMLP, RMSNorm, apply_rope, rms_norm, rope_cos_sin

KVCache = tuple[torch.Tensor, torch.Tensor]


def config_head_dim(hf_config) -> int:
    """Per-head dim: ``config.head_dim`` when set, else ``hidden_size // num_attention_heads``."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


class PagedAttention(nn.Module):
    """Self-attention with fused QKV, optional per-head q/k RMSNorm (Qwen3), rotary and GQA.

    Args:
        hidden: model width; num_heads / num_kv_heads / head_dim: attention geometry.
        qkv_bias / o_bias: biases on the fused QKV and on the output projection.
        qk_norm_eps: when not None, RMSNorm each q and k head (weights ``q_norm``/``k_norm``
            ``[head_dim]``, fused into ``qk_norm_weight`` ``[Hq + Hkv, head_dim]``).
    """

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        backend: AttentionBackend,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv_proj = nn.Linear(hidden, (num_heads + 2 * num_kv_heads) * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=o_bias)
        self.qk_norm_eps = qk_norm_eps
        if qk_norm_eps is not None:
            self.qk_norm_weight = nn.Parameter(torch.ones(num_heads + num_kv_heads, head_dim))
        self.backend = backend
        self.scale = head_dim**-0.5

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """``x`` ``[T, hidden]``, rotary tables ``[T, 1, D]`` -> ``[T, hidden]``."""
        q, k, v = self.project_qkv(x, cos, sin)
        out = self.backend.forward(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(x.shape[0], self.num_heads * self.head_dim))

    def project_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` ``[T, hidden]`` -> ``q`` ``[T, Hq, D]``, ``k`` and ``v`` ``[T, Hkv, D]`` (q/k normed and rotated)."""
        t = x.shape[0]
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)
        qk = qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d)
        if self.qk_norm_eps is not None:
            qk = rms_norm(qk, self.qk_norm_weight, self.qk_norm_eps)
        qk = apply_rope(qk, cos, sin)
        v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
        return qk[:, :hq], qk[:, hq:], v


class DecoderLayer(nn.Module):
    """Pre-norm decoder block; carries the residual stream separately to fuse the adds.

    ``pieces``: set by :func:`pitstop.model.compiled.compile_decoder` to run the dense parts compiled.
    """

    pieces = None

    def __init__(self, hf_config, attn: PagedAttention) -> None:
        super().__init__()
        eps = hf_config.rms_norm_eps
        self.input_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.mlp = GatedMLP(hf_config.hidden_size, hf_config.intermediate_size, getattr(hf_config, "mlp_bias", False))

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(block_output, residual)``; the layer's true output is their sum."""
        if self.pieces is not None:  # torch.compile'd dense parts (pitstop.model.compiled)
            q, k, v, residual = self.pieces.run("pre", self, h, residual, cos, sin)
            attn = self.self_attn
            out = attn.backend.forward(q, k, v, kv_cache, meta, attn.scale)
            return self.pieces.run("post", self, out, residual)
        x, residual = self.input_layernorm.add_forward(h, residual)
        h = self.self_attn(x, cos, sin, kv_cache, meta)
        x, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(x), residual


class CausalLM(nn.Module):
    """Decoder-only LM over a paged KV cache (base class; Llama semantics).

    Subclasses override :meth:`make_attention` for architecture differences.

    Attributes:
        hf_config: the transformers config; num_layers, num_kv_heads, head_dim, vocab_size:
            geometry; attn_backend: the shared :class:`AttentionBackend`.
    """

    def __init__(self, hf_config, dtype: torch.dtype = torch.bfloat16, attn_backend: str = "torch") -> None:
        super().__init__()
        self.hf_config = hf_config
        self.num_layers = hf_config.num_hidden_layers
        self.num_heads = hf_config.num_attention_heads
        self.num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = config_head_dim(hf_config)
        self.vocab_size = hf_config.vocab_size
        self.attn_backend = get_attention_backend(attn_backend)
        self.embed_tokens = nn.Embedding(self.vocab_size, hf_config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(hf_config, self.make_attention()) for _ in range(self.num_layers))
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.lm_head = nn.Linear(hf_config.hidden_size, self.vocab_size, bias=False)
        cos, sin = rope_cos_sin(hf_config, self.head_dim, hf_config.max_position_embeddings, dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def make_attention(self) -> PagedAttention:
        """Llama attention: ``attention_bias`` applies to q, k, v and o."""
        bias = bool(getattr(self.hf_config, "attention_bias", False))
        return PagedAttention(
            self.hf_config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.attn_backend, bias, bias
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Run the decoder on the step's flattened tokens.

        Args:
            input_ids: ``[T]`` int64 token ids; positions: ``[T]`` int64 absolute positions
                (must be < ``max_position_embeddings``).
            kv_caches: one ``(k_cache, v_cache)`` per layer (see ``loader.allocate_kv_cache``).
            attn_metadata: from ``attn_backend.build_metadata`` for this step.

        Returns:
            ``[T, hidden]`` final-normed hidden states in the model dtype.
        """
        h = self.embed_tokens(input_ids)
        cos = self.rope_cos[positions].unsqueeze(1)
        sin = self.rope_sin[positions].unsqueeze(1)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            h, residual = layer(h, residual, cos, sin, kv_cache, attn_metadata)
        return self.norm.add_forward(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` -> ``[N, vocab]`` logits in the model dtype.

        Not upcast here: the greedy hot path takes the argmax of bf16 logits directly (exactly the
        argmax of their float32 copy); the sampler upcasts to float32 where it needs to.
        """
        return self.lm_head(hidden)


class LlamaForCausalLM(CausalLM):
    """Llama / SmolLM / Mistral-style (no sliding window) decoder."""


class Qwen2ForCausalLM(CausalLM):
    """Qwen2: bias on q/k/v (not on o_proj). Sliding-window attention is not supported."""

    def make_attention(self) -> PagedAttention:
        if getattr(self.hf_config, "use_sliding_window", False):
            raise ValueError("Qwen2ForCausalLM: use_sliding_window=True is not supported")
        return PagedAttention(
            self.hf_config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.attn_backend, True, False
        )
