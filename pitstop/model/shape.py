"""``ModelShape``: a Llama-like decoder's dimensions from its HF config, and the counts derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _cfg(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a transformers config, a dict or any object with attributes."""
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-like decoder that the roofline needs (counts, not bytes)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_hf_config(cls, config: Any) -> "ModelShape":
        """Build from a Hugging Face ``config.json`` (as a ``PretrainedConfig``, dict or namespace)."""
        hidden = int(_cfg(config, "hidden_size"))
        heads = int(_cfg(config, "num_attention_heads"))
        kv = _cfg(config, "num_key_value_heads")
        head_dim = _cfg(config, "head_dim")
        return cls(
            num_layers=int(_cfg(config, "num_hidden_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(kv) if kv else heads,
            head_dim=int(head_dim) if head_dim else hidden // heads,
            intermediate_size=int(_cfg(config, "intermediate_size")),
            vocab_size=int(_cfg(config, "vocab_size")),
            tied_embeddings=bool(_cfg(config, "tie_word_embeddings", False)),
        )

    def layer_linear_params(self) -> int:
        """Weights of one block's matmuls: q, k, v, o projections and the gated MLP (gate, up, down)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2
        mlp = 3 * h * self.intermediate_size
        return attn + mlp

    def params_per_token(self) -> int:
        """Weights multiplied per generated token: all blocks' linear layers plus the lm_head."""
        return self.num_layers * self.layer_linear_params() + self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        """All parameters: embedding, blocks (incl. 2 RMSNorms each), final norm, lm_head unless tied."""
        emb = self.vocab_size * self.hidden_size
        blocks = self.num_layers * (self.layer_linear_params() + 2 * self.hidden_size)
        head = 0 if self.tied_embeddings else emb
        return emb + blocks + self.hidden_size + head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes of one token over all layers: ``layers * 2 * kv_heads * head_dim * dtype_bytes``."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes
