"""Qwen3 decoder: Llama layout plus per-head RMSNorm of q and k before rotary.

Source: ``transformers/models/qwen3/modeling_qwen3.py`` (``q_norm``/``k_norm`` over head_dim,
``head_dim`` taken from the config, ``attention_bias`` on q/k/v/o).
"""

from __future__ import annotations

from pitstop.model.llama import CausalLM, PagedAttention


class Qwen3ForCausalLM(CausalLM):
    """Qwen3 dense model (sliding-window layers are not supported)."""

    def make_attention(self) -> PagedAttention:
        cfg = self.hf_config
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("Qwen3ForCausalLM: use_sliding_window=True is not supported")
        bias = bool(getattr(cfg, "attention_bias", False))
        return PagedAttention(
            cfg.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.attn_backend, bias, bias, cfg.rms_norm_eps
        )
