"""Load an HF folder (config.json + safetensors) into a pitstop :class:`CausalLM`.

Safetensors are read with ``safetensors.safe_open`` (single file or sharded with
``model.safetensors.index.json``); HF parameter names are mapped to pitstop's fused layout:
``q/k/v_proj`` -> ``qkv_proj``, ``gate/up_proj`` -> ``gate_up_proj``, ``q_norm``/``k_norm`` ->
``qk_norm_weight`` (per-head weights stacked). Tied embeddings: ``lm_head = embed_tokens`` when
``tie_word_embeddings`` is set or ``lm_head.weight`` is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from pitstop.model.llama import CausalLM, KVCache, config_head_dim
from pitstop.model.registry import get_model_class


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16, attn_backend: str = "torch") -> CausalLM:
    """Build the model class named by ``config.architectures`` and load its weights.

    Args:
        model_dir: HF folder with ``config.json`` and ``*.safetensors``.
        dtype: parameter / activation dtype (float32 or bfloat16).
        attn_backend: attention backend name (see ``get_attention_backend``).

    Returns:
        The model in eval mode, on CPU, with ``requires_grad`` off.

    Raises:
        ValueError: unsupported architecture, no safetensors, or missing weights.
    """
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    cls = get_model_class(getattr(hf_config, "architectures", None))
    with torch.device("meta"):
        model = cls(hf_config, dtype=dtype, attn_backend=attn_backend)
    hf_weights = read_safetensors(model_dir)
    state = fuse_weights(hf_weights, model, dtype)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"{model_dir}: missing weights {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval().requires_grad_(False)


def read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors (sharded via the index file when present).

    Raises:
        ValueError: no ``*.safetensors`` in the folder.
    """
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no *.safetensors weights found")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for name in sf.keys():
                tensors[name] = sf.get_tensor(name)
    return tensors


def _strip(name: str) -> str:
    """Drop the ``model.`` prefix of HF decoder weights."""
    return name[len("model.") :] if name.startswith("model.") else name


def fuse_weights(hf: dict[str, torch.Tensor], model: CausalLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Map HF names/tensors to pitstop's state dict (fused, cast to ``dtype``).

    Unknown HF tensors (e.g. stale ``rotary_emb.inv_freq``) are ignored.
    """
    src = {_strip(k): v for k, v in hf.items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(model.num_layers):
        out.update(_layer_weights(src, f"layers.{i}.", model.layers[i].self_attn.qk_norm_eps is not None, model))
    out["embed_tokens.weight"] = src["embed_tokens.weight"]
    out["norm.weight"] = src["norm.weight"]
    tie = getattr(model.hf_config, "tie_word_embeddings", False) or "lm_head.weight" not in src
    out["lm_head.weight"] = src["embed_tokens.weight"] if tie else src["lm_head.weight"]
    out = {k: v.to(dtype).contiguous() for k, v in out.items()}
    if tie:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def _layer_weights(src: dict[str, torch.Tensor], p: str, qk_norm: bool, model: CausalLM) -> dict[str, torch.Tensor]:
    """Fused weights of one decoder layer ``p`` (``"layers.{i}."``).

    Raises:
        ValueError: a required HF tensor is missing.
    """

    def get(name: str) -> torch.Tensor:
        if p + name not in src:
            raise ValueError(f"missing weight model.{p}{name}")
        return src[p + name]

    a, m = "self_attn.", "mlp."
    out = {
        p + "input_layernorm.weight": get("input_layernorm.weight"),
        p + "post_attention_layernorm.weight": get("post_attention_layernorm.weight"),
        p + a + "qkv_proj.weight": torch.cat([get(a + f"{x}_proj.weight") for x in "qkv"]),
        p + a + "o_proj.weight": get(a + "o_proj.weight"),
        p + m + "gate_up_proj.weight": torch.cat([get(m + "gate_proj.weight"), get(m + "up_proj.weight")]),
        p + m + "down_proj.weight": get(m + "down_proj.weight"),
    }
    for key, names in ((a + "qkv_proj.bias", [a + f"{x}_proj.bias" for x in "qkv"]),
                       (a + "o_proj.bias", [a + "o_proj.bias"]),
                       (m + "gate_up_proj.bias", [m + "gate_proj.bias", m + "up_proj.bias"]),
                       (m + "down_proj.bias", [m + "down_proj.bias"])):
        if all(p + n in src for n in names):
            out[p + key] = torch.cat([src[p + n] for n in names])
    if qk_norm:
        hq, hkv = model.num_heads, model.num_kv_heads
        q_w, k_w = get(a + "q_norm.weight"), get(a + "k_norm.weight")
        out[p + a + "qk_norm_weight"] = torch.cat([q_w.expand(hq, -1), k_w.expand(hkv, -1)])
    return out


def kv_cache_bytes_per_block(hf_config, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of K + V for ALL layers for one block of ``block_size`` tokens."""
    num_kv = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * hf_config.num_hidden_layers * block_size * num_kv * config_head_dim(hf_config) * elem


def allocate_kv_cache(model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype) -> list[KVCache]:
    """One zeroed ``(k_cache, v_cache)`` per layer, each of ``attn_backend.kv_cache_shape(...)``."""
    shape = model.attn_backend.kv_cache_shape(num_blocks, block_size, model.num_kv_heads, model.head_dim)
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(model.num_layers)]
