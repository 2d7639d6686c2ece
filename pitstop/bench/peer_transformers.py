"""The peer of the throughput benchmark: Hugging Face transformers on the same weights, prompts and lengths.

Two modes:

1. **Static batching** (``model.generate``), the way vLLM's ``benchmark_throughput --backend hf`` runs HF.
   Requests are sorted by output length (longest first, ties by prompt length) and cut into batches of
   ``batch_size``; each batch is left-padded and generated greedily with ``max_new_tokens = min_new_tokens =``
   the longest output in the batch (``min_new_tokens`` masks EOS, so the batch always runs to that length).
   Only each request's own ``output_len`` counts as useful output; the extra tokens of shorter requests are
   waste that static batching pays (reported as ``generated_tokens``). Sorting groups similar lengths and so
   favours the peer. The batch size is tuned on a short probe among e.g. 8/16/32/64 (``tune_batch_size``).
2. **Continuous batching** (``transformers.generation.continuous_batching``, transformers >= 4.56):
   ``model.init_continuous_batching`` with a paged cache, each request with its own ``max_new_tokens`` and EOS
   disabled. Errors are caught and returned as text so the benchmark can report why it did not run.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class PeerResult:
    """Outcome of one peer run (times in seconds, counts in tokens)."""

    mode: str
    elapsed_s: float = 0.0
    num_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # useful: sum of each request's own output_len
    generated_tokens: int = 0  # produced, including the padding tokens of static batches
    batch_size: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the run finished without an error."""
        return self.error is None

    def rates(self) -> dict[str, float]:
        """requests/s, output tokens/s and total (prompt + output) tokens/s."""
        if not self.ok or self.elapsed_s <= 0:
            return {}
        return {
            "requests_per_s": self.num_requests / self.elapsed_s,
            "output_tokens_per_s": self.output_tokens / self.elapsed_s,
            "total_tokens_per_s": (self.input_tokens + self.output_tokens) / self.elapsed_s,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary with the rates."""
        d = asdict(self)
        d.update(self.rates())
        return d


def load_model(model_dir: str | Path, dtype: str = "bfloat16", attn_implementation: str = "sdpa") -> Any:
    """Load the HF causal LM from a local folder (no hub access), in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=DTYPES[dtype], attn_implementation=attn_implementation, local_files_only=True)
    return model.eval()


def _pad_id(model: Any) -> int:
    """A pad token id: the config's pad, else its EOS, else 0 (padding is masked anyway)."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(model.config, name, None)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape [batch, longest prompt], padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def generate_static_batch(model: Any, prompts: Sequence[Sequence[int]], new_tokens: int) -> int:
    """Greedy ``generate`` of one left-padded batch, exactly ``new_tokens`` each; returns tokens produced."""
    from transformers import GenerationConfig

    pad = _pad_id(model)
    ids, mask = left_pad(prompts, pad)
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=pad, eos_token_id=getattr(model.config, "eos_token_id", None))
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    return int((out.shape[1] - ids.shape[1]) * out.shape[0])


def static_order(output_lens: Sequence[int], input_lens: Sequence[int]) -> list[int]:
    """Request indices sorted by output length then prompt length, longest first."""
    return sorted(range(len(output_lens)), key=lambda i: (output_lens[i], input_lens[i]), reverse=True)


def run_static(model: Any, prompts: Sequence[Sequence[int]], output_lens: Sequence[int], batch_size: int,
               progress: bool = False) -> PeerResult:
    """Static-batching run over all requests (see module docstring); wall time covers every batch."""
    order = static_order(output_lens, [len(p) for p in prompts])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    res = PeerResult(mode="static", num_requests=len(prompts), batch_size=batch_size,
                     input_tokens=sum(len(p) for p in prompts), output_tokens=sum(output_lens))
    t0 = time.perf_counter()
    try:
        for k, idx in enumerate(batches):
            res.generated_tokens += generate_static_batch(
                model, [prompts[i] for i in idx], max(output_lens[i] for i in idx))
            if progress:
                print(f"  peer static batch {k + 1}/{len(batches)} done, {time.perf_counter() - t0:.1f} s",
                      flush=True)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        res.error = f"{type(e).__name__}: {e}"
    res.elapsed_s = time.perf_counter() - t0
    return res


def tune_batch_size(model: Any, prompts: Sequence[Sequence[int]], output_lens: Sequence[int],
                    candidates: Sequence[int] = (8, 16, 32, 64), probe_requests: int = 64,
                    probe_output_cap: int = 16, probe_input_cap: int = 256) -> tuple[int, dict[int, float]]:
    """Pick the static batch size with the best total tokens/s on a short probe.

    The probe takes the first ``probe_requests`` requests, with prompts truncated to ``probe_input_cap``
    tokens and outputs capped at ``probe_output_cap`` tokens so that it stays short (a few seconds per
    candidate), and runs them with each candidate. Returns (best size, {size: total tokens/s}).
    """
    n = min(probe_requests, len(prompts))
    sub_p = [list(p[:probe_input_cap]) for p in prompts[:n]]
    sub_o = [min(o, probe_output_cap) for o in output_lens[:n]]
    scores: dict[int, float] = {}
    generate_static_batch(model, [sub_p[0]], 2)  # warm-up, so the first candidate is not penalised
    for bs in candidates:
        if bs > n and scores:
            continue
        r = run_static(model, sub_p, sub_o, min(bs, n))
        if r.ok:
            scores[min(bs, n)] = r.rates()["total_tokens_per_s"]
    if not scores:
        raise RuntimeError("every probe batch size failed")
    return max(scores, key=lambda b: scores[b]), scores


@torch.inference_mode()
def run_continuous(model: Any, prompts: Sequence[Sequence[int]], output_lens: Sequence[int],
                   max_batch_tokens: int = 1024, max_requests_per_batch: int = 128,
                   num_blocks: int | None = None, page_size: int = 256, timeout_s: float = 900.0) -> PeerResult:
    """transformers' own continuous batching (paged cache), per-request ``max_new_tokens``, EOS disabled.

    ``num_blocks`` defaults to enough pages for every request at once (the KV cache lives in host memory).
    """
    res = PeerResult(mode="continuous", num_requests=len(prompts),
                     input_tokens=sum(len(p) for p in prompts), output_tokens=sum(output_lens))
    try:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError as e:
        res.error = f"transformers has no continuous batching API: {e}"
        return res
    if num_blocks is None:
        num_blocks = sum(-(-(len(p) + o) // page_size) for p, o in zip(prompts, output_lens)) + 8
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max(output_lens), eos_token_id=-1,
                               pad_token_id=_pad_id(model))
    cb_cfg = ContinuousBatchingConfig(page_size=page_size, num_blocks=num_blocks, max_batch_tokens=max_batch_tokens,
                                      max_requests_per_batch=max_requests_per_batch, use_cuda_graph=False,
                                      auto_switch_to_flash=False)
    t0 = time.perf_counter()
    try:
        produced = _cb_generate(model, gen_cfg, cb_cfg, prompts, output_lens, timeout_s)
        res.generated_tokens = produced
        if produced < res.output_tokens:
            res.error = f"continuous batching produced {produced} of {res.output_tokens} output tokens"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        res.error = f"{type(e).__name__}: {e}"
        res.extra["traceback"] = traceback.format_exc(limit=6)
    res.elapsed_s = time.perf_counter() - t0
    return res


def _cb_generate(model: Any, gen_cfg: Any, cb_cfg: Any, prompts: Sequence[Sequence[int]],
                 output_lens: Sequence[int], timeout_s: float) -> int:
    """Drive a continuous-batching manager to completion; returns the output tokens produced."""
    manager = model.init_continuous_batching(generation_config=gen_cfg, continuous_batching_config=cb_cfg)
    manager.start()
    produced, pending = 0, set()
    deadline = time.perf_counter() + timeout_s
    try:
        for i, (p, o) in enumerate(zip(prompts, output_lens)):
            rid = manager.add_request(list(p), request_id=f"r{i}", max_new_tokens=int(o), eos_token_id=-1)
            pending.add(rid)
        while pending and time.perf_counter() < deadline:
            r = manager.get_result(timeout=1)
            if r is None:
                if not manager.is_running():
                    raise RuntimeError("continuous batching thread stopped unexpectedly")
                continue
            if r.is_finished() and r.request_id in pending:
                if r.error is not None:
                    raise RuntimeError(f"request {r.request_id} failed: {r.error}")
                pending.discard(r.request_id)
                produced += len(r.generated_tokens)
        if pending:
            raise TimeoutError(f"{len(pending)} requests unfinished after {timeout_s} s")
    finally:
        manager.stop(block=True, timeout=10)
        if hasattr(manager, "destroy"):
            manager.destroy()
    return produced


@torch.inference_mode()
def batch1_decode_rate(model: Any, prompt: Sequence[int], new_tokens: int = 32, repeats: int = 3) -> float:
    """Batch-1 decode tokens/s: ``new_tokens / (t(1 + new_tokens) - t(1))``, best of ``repeats``.

    Subtracting a 1-token run removes the prefill and the first token from the timing.
    """
    def timed(k: int) -> float:
        t = time.perf_counter()
        generate_static_batch(model, [prompt], k)
        return time.perf_counter() - t

    timed(2)  # warm-up
    t1 = min(timed(1) for _ in range(repeats))
    tn = min(timed(1 + new_tokens) for _ in range(repeats))
    return new_tokens / max(tn - t1, 1e-9)
