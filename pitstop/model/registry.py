"""Architecture name (``config.architectures[0]``) -> pitstop model class."""

from __future__ import annotations

from pitstop.model.llama import CausalLM, LlamaForCausalLM, Qwen2ForCausalLM
from pitstop.model.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def get_model_class(architectures: list[str] | None) -> type[CausalLM]:
    """First supported entry of ``architectures``.

    Raises:
        ValueError: none supported; the message names them and the supported ones.
    """
    for arch in architectures or []:
        if arch in MODEL_REGISTRY:
            return MODEL_REGISTRY[arch]
    raise ValueError(
        f"unsupported model architecture {architectures!r} (supported: {', '.join(sorted(MODEL_REGISTRY))})"
    )
