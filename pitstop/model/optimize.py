"""Load-time speed options of a loaded model (issue 18): int8 weights, a GGUF's own blocks, few-row float32 linears,
``torch.compile``.

Called once by the model runner after loading (and after oneDNN pre-packing, which int8 replaces). Each option
keeps a portable path: int8 without the C++ kernels dequantizes per call; compilation falls back to eager.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pitstop.config import QUANTIZATIONS
from pitstop.model.int8_linear import quantize_linears

log = logging.getLogger("pitstop")


def optimize_model(model: nn.Module, quantization: str = "none", compile: bool = False,
                   gguf_file: str | Path | None = None) -> dict:
    """Apply the options in place; returns what was done (for logs and benchmark JSON).

    Args:
        model: a loaded :class:`pitstop.model.llama.CausalLM`.
        quantization: ``"none"``, ``"int8"`` (:mod:`pitstop.model.int8_linear`) or ``"gguf"`` (the linears on
            ``gguf_file``'s own blocks, :mod:`pitstop.model.gguf_linear`). With ``"none"`` and the C++ kernels
            loaded, float32 linears take the few-row kernel for small batches (:mod:`pitstop.model.few_row_linear`).
        compile: compile the decoder layers' dense parts (:mod:`pitstop.model.compiled`).
        gguf_file: the GGUF the model was converted from (needed by ``"gguf"``).

    Raises:
        ValueError: unknown quantization; ``"gguf"`` without a GGUF file, or a file whose tensors are not this
            model's.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if quantization == "gguf" and gguf_file is None:
        raise ValueError("quantization='gguf' keeps a GGUF file's blocks: the model must be a .gguf file or a "
                         "known GGUF model name, not an HF folder")
    from pitstop.model.cpu_kernels import cpu_kernels, kernel_status
    from pitstop.model.few_row_linear import packs, probe_fp32_prepack, use_few_row_linears

    kernels = cpu_kernels()
    done: dict = {"quantization": quantization, "compile": compile}
    if quantization != "none":  # quantized linears: bigger calls on the same weights packed for oneDNN
        prepack = kernels is not None and packs(_dtype(model))
        done["prepacked"] = prepack
    if quantization == "gguf":
        from pitstop.model.gguf_linear import use_gguf_linears

        done.update(use_gguf_linears(model, gguf_file, kernels, prepack).as_dict())
        done["gguf_kernel"] = kernel_status()
    elif quantization == "int8":
        done["int8_linears"] = quantize_linears(model, kernels, prepack)
        done["int8_kernel"] = kernel_status()
    elif kernels is not None:  # float32 linears: few rows on the C++ kernel, more on oneDNN-packed weights
        done["few_row_linears"] = use_few_row_linears(model, kernels)
        done["fp32_prepacked"] = probe_fp32_prepack()
    done["fused_norms"] = use_fused_norms(model, kernels)
    if compile:
        from pitstop.model.compiled import compile_decoder

        done["compiled"] = compile_decoder(model)
    attn = getattr(model, "attn_backend", None)
    if attn is not None and getattr(attn, "name", "") == "cpu":
        done["attention_kernel"] = kernel_status()
    log.info("pitstop: model options %s", done)
    return done


def _dtype(model: nn.Module) -> torch.dtype:
    """The model's float dtype (its embedding table's)."""
    return model.get_submodule("embed_tokens").weight.dtype


def use_fused_norms(model: nn.Module, kernels) -> int:
    """Give every float32 :class:`pitstop.model.layers.RMSNorm` of ``model`` the C++ kernels (residual add + norm
    in one call, ``add_rms_norm``); returns how many (0 without kernels)."""
    from pitstop.model.layers import RMSNorm

    norms = [m for m in model.modules() if isinstance(m, RMSNorm) and m.weight.dtype == torch.float32]
    for norm in norms:
        norm.kernels = kernels
    return len(norms) if kernels is not None else 0
