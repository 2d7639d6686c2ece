"""Model side of pitstop: architectures, weight loading, paged attention, model resolution."""

from pitstop.model.llama import CausalLM, LlamaForCausalLM, Qwen2ForCausalLM
from pitstop.model.loader import allocate_kv_cache, kv_cache_bytes_per_block, load_model
from pitstop.model.qwen3 import Qwen3ForCausalLM
from pitstop.model.resolve import DEFAULT_MODEL, ModelNotFoundError, cache_dir, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "CausalLM",
    "LlamaForCausalLM",
    "ModelNotFoundError",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "allocate_kv_cache",
    "cache_dir",
    "kv_cache_bytes_per_block",
    "load_model",
    "resolve_model",
]
