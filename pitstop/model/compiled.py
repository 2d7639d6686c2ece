"""``torch.compile`` of the decoder layers' dense parts (``EngineConfig.compile`` / ``--compile``, issue 18).

Each decoder layer runs as three pieces: (1) residual add, input RMSNorm, fused QKV projection, q/k norm and rotary
(compiled), (2) paged attention through the attention backend (eager: Python metadata, per-step block tables,
C++ kernel), (3) output projection, residual add, post-attention RMSNorm and the gated MLP (compiled). The two
compiled pieces are module-level functions taking the layer as an argument, traced with ``dynamic=True`` (the
token count is symbolic, so one graph serves every batch size instead of one per decode batch bucket; dynamo still
specializes a count of 1, the batch-1 decode). Inductor generates C++ for the CPU; its cache goes to
``$PITSTOP_CACHE/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so later processes load it from disk.

Fallback: no C++ compiler on PATH, ``PITSTOP_PORTABLE``, or any exception while compiling or running a compiled
piece (``_compile_failure`` is the test hook) switches the model back to eager for good, with one log line; the step
that hit the failure is recomputed eagerly (the pieces do not touch the KV cache, so this is safe).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Callable

import torch
from torch import nn

from pitstop.model.cpu_features import portable_requested

log = logging.getLogger("pitstop")


def pre_attention(layer: nn.Module, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Piece (1): ``(q, k, v, residual)`` of a :class:`pitstop.model.llama.DecoderLayer`."""
    residual = h if residual is None else h + residual
    q, k, v = layer.self_attn.project_qkv(layer.input_layernorm(residual), cos, sin)
    return q, k, v, residual


def post_attention(layer: nn.Module, out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Piece (3): ``(block_output, residual)`` from the attention output ``[T, Hq, D]``."""
    attn = layer.self_attn
    h = attn.o_proj(out.reshape(out.shape[0], attn.num_heads * attn.head_dim))
    residual = h + residual
    return layer.mlp(layer.post_attention_layernorm(residual)), residual


class CompiledPieces:
    """The compiled (or, after a failure, eager) pieces shared by every layer of one model.

    Attributes:
        pre, post: the callables in use.
        failure: why compilation was abandoned (None while compiled).
        compile_s: seconds spent in calls that compiled (the first call per new graph), summed.
    """

    def __init__(self) -> None:
        self.pre: Callable = torch.compile(pre_attention, dynamic=True)
        self.post: Callable = torch.compile(post_attention, dynamic=True)
        self.failure: str | None = None
        self.compile_s = 0.0
        self.calls = 0

    def fall_back(self, reason: str) -> None:
        """Use the eager pieces from now on."""
        self.pre, self.post, self.failure = pre_attention, post_attention, reason
        log.warning("pitstop: torch.compile failed, running eager (%s)", reason)

    def run(self, which: str, *args):
        """Call piece ``which`` ("pre"/"post"); on any failure of a compiled piece fall back and rerun eagerly."""
        fn = self.pre if which == "pre" else self.post
        if self.failure is not None:
            return fn(*args)
        t0 = time.perf_counter()
        try:
            _compile_failure(which)
            out = fn(*args)
        except Exception as e:  # Inductor/dynamo errors have many types; eager is always correct
            self.fall_back(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}")
            return (pre_attention if which == "pre" else post_attention)(*args)
        if self.calls < 8:  # the first calls are the ones that compile; count their time
            self.compile_s += time.perf_counter() - t0
        self.calls += 1
        return out


def _compile_failure(which: str) -> None:
    """Test hook: monkeypatched to raise, it simulates a compiler failure. Does nothing here."""


def compile_decoder(model: nn.Module) -> dict:
    """Make every decoder layer of ``model`` run its dense parts through :class:`CompiledPieces`.

    Returns:
        ``{"enabled": bool, "reason": str}``; ``model.compiled_pieces`` holds the pieces (compile time, failure).
    """
    why = _cannot_compile()
    if why:
        log.info("pitstop: torch.compile off (%s)", why)
        return {"enabled": False, "reason": why}
    from pitstop.model.resolve import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    pieces = CompiledPieces()
    model.compiled_pieces = pieces
    for layer in model.layers:
        layer.pieces = pieces
    return {"enabled": True, "reason": "inductor, dynamic token count"}


def _cannot_compile() -> str | None:
    if portable_requested():
        return "PITSTOP_PORTABLE is set"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++ / $CXX) on PATH"
    return None
