"""Builds an ``LLMEngine`` on a real checkpoint (the engine itself never imports torch).

It resolves the model, loads the model runner and tokenizer, and reads the model's facts (EOS ids, vocabulary,
context length) for the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine


def build_engine(config: EngineConfig, clock: Callable[[], float] = time.monotonic,
                 keep_step_history: bool = True) -> LLMEngine:
    """An ``LLMEngine`` running ``config.model`` through a ``ModelRunner`` (KV cache of ``config.kv_cache_memory``
    bytes), with its tokenizer unless ``config.skip_tokenizer_init``; seeds torch's global generator with
    ``config.seed`` and sets ``config.num_threads`` torch threads when given. ``clock``: seconds, monotonic.

    Raises:
        pitstop.model.resolve.ModelNotFoundError: the model cannot be found or read.
        ValueError: invalid settings, or a KV cache too small for one ``max_model_len`` context.
    """
    import torch

    from pitstop.executor.model_runner import ModelRunner
    from pitstop.model.resolve import resolve_model, source_gguf

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    model_dir = resolve_model(config.model)
    runner = ModelRunner(model_dir, config.dtype, config.kv_cache_memory, config.block_size,
                         config.attention_backend, quantization=config.quantization, compile=config.compile,
                         gguf_file=source_gguf(config.model) if config.quantization == "gguf" else None)
    tokenizer = None if config.skip_tokenizer_init else load_tokenizer(model_dir)
    hf = runner.hf_config
    mml = min(config.max_model_len or min(hf.max_position_embeddings, 8192), hf.max_position_embeddings)
    eos = eos_ids(model_dir, tokenizer, hf)
    torch.manual_seed(config.seed)
    return LLMEngine(config, runner, tokenizer, clock, runner.num_blocks, eos, hf.vocab_size, mml,
                     keep_step_history, model_dir=model_dir)


def load_tokenizer(model_dir: Path) -> Any:
    """The transformers tokenizer of ``model_dir``.

    Raises:
        ValueError: the folder has no loadable tokenizer.
    """
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"model {model_dir}: cannot load its tokenizer ({type(e).__name__}); add tokenizer "
                         f"files or pass skip_tokenizer_init=True and give prompts as token ids") from None


def eos_ids(model_dir: Path, tokenizer: Any, hf_config: Any) -> frozenset[int]:
    """Every end-of-sequence token id the model's config, tokenizer and generation config name."""
    ids: set[int] = set()
    for source in (getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(t) for t in source)
    try:
        from transformers import GenerationConfig
        gen = GenerationConfig.from_pretrained(str(model_dir))
        eos = gen.eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except (OSError, ValueError):
        pass
    return frozenset(ids)
