"""The model runner: turns a ``SchedulerOutput`` into one forward pass over a flattened batch and
samples the next tokens.

Flattened batch layout (vLLM style): the step's prefill chunks and decode tokens are concatenated
into one ``[T]`` vector of token ids with their positions; the attention backend maps each token to
its sequence and KV slots (``slot = block_id * block_size + offset``).
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pitstop.config import kv_cache_num_blocks
from pitstop.executor.malloc_tuning import tune_malloc
from pitstop.scheduler_output import ExecutorResult, ScheduledRequest, SchedulerOutput
from pitstop.model.cpu_features import KernelChoice, choose_kernels
from pitstop.model.cpu_packed_linear import prepack_linears
from pitstop.model.loader import allocate_kv_cache, kv_cache_bytes_per_block, load_model
from pitstop.model.optimize import optimize_model
from pitstop.model.rejection_sampler import VerifyRow, verify_drafts
from pitstop.model.sampler import Sampler, SamplerOutput, SamplingRow, apply_token_bitmask_
from pitstop.outputs import Logprob
from pitstop.request import Request

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
log = logging.getLogger("pitstop")


class ModelRunner:
    """Runs real forward passes on the CPU: weights, inputs and the KV cache all stay in CPU memory.

    Args:
        model_dir: HF folder (already resolved).
        dtype: "auto" (bf16 where this CPU computes it natively, float32 elsewhere), "bfloat16" or
            "float32"; resolved with the kernels by ``pitstop.model.cpu_features.choose_kernels``
            (``self.kernels``), logged in one line.
        kv_cache_memory: bytes reserved for the KV cache; sets ``num_blocks``.
        block_size: tokens per KV block.
        attention_backend: backend name (see ``pitstop.model.attention``).
        quantization / compile / gguf_file: see ``pitstop.model.optimize.optimize_model`` (int8 weights, a GGUF's
            own blocks, torch.compile).

    Raises:
        ValueError: the KV cache memory does not hold a single block, or an unknown dtype.
    """

    def __init__(self, model_dir: str | Path, dtype: str, kv_cache_memory: int, block_size: int,
                 attention_backend: str = "torch", device: str = "cpu", quantization: str = "none",
                 compile: bool = False, gguf_file: str | Path | None = None) -> None:
        self.kernels: KernelChoice = choose_kernels(dtype)
        if self.kernels.warning:
            log.warning(self.kernels.warning)
        log.info("pitstop: %s", self.kernels.summary())
        self.dtype = DTYPES[self.kernels.dtype]
        self.device = torch.device(device)
        if self.device.type == "cpu":
            tune_malloc()
        self.block_size = block_size
        self.model = load_model(model_dir, self.dtype, attn_backend=attention_backend)
        if self.kernels.prepack and quantization == "none":
            prepack_linears(self.model)
        self.optimizations = optimize_model(self.model, quantization=quantization, compile=compile,
                                            gguf_file=gguf_file)
        self.hf_config = self.model.hf_config
        self.bytes_per_block = kv_cache_bytes_per_block(self.hf_config, block_size, self.dtype)
        self.num_blocks = kv_cache_num_blocks(kv_cache_memory, self.bytes_per_block // block_size, block_size)
        self.kv_caches = allocate_kv_cache(self.model, self.num_blocks, block_size, self.dtype)
        self.sampler = Sampler()

    @torch.inference_mode()
    def execute(self, so: SchedulerOutput) -> ExecutorResult:
        """One step: forward over every scheduled token, sample for requests that reach their end."""
        t0 = time.perf_counter()
        if so.is_empty:
            return ExecutorResult(sampled={}, step_time_s=0.0)
        input_ids, positions = self._inputs(so.scheduled)
        meta = self.model.attn_backend.build_metadata(
            [s.num_tokens for s in so.scheduled], [s.start + s.num_tokens for s in so.scheduled],
            [s.block_ids for s in so.scheduled], self.block_size, self.device)
        with _gemm_kernels(len(input_ids), self.kernels.gemv_switch):
            hidden = self.model(input_ids, positions, self.kv_caches, meta)
        rows, sample_idx, verifies, verify_idx = self._sample_rows(so.scheduled)
        if not rows and not verifies:
            return ExecutorResult(sampled={}, step_time_s=time.perf_counter() - t0)
        with _gemm_kernels(len(sample_idx) + len(verify_idx), self.kernels.gemv_switch):
            logits = self.model.compute_logits(hidden[torch.tensor(sample_idx + verify_idx, dtype=torch.long)])
        spec_tokens, spec_logprobs = self._verify(so, verifies, logits[len(sample_idx):]) if verifies else ({}, {})
        if not rows:
            return ExecutorResult(sampled={}, logprobs=spec_logprobs, step_time_s=time.perf_counter() - t0,
                                  spec_tokens=spec_tokens)
        out = self.sampler(logits[:len(sample_idx)], [r for _, r in rows], _token_bitmask(so, rows))
        sampled = dict(zip((s.request.request_id for s, _ in rows), out.token_ids.tolist()))
        logprobs = self._logprobs(rows, out)
        logprobs.update(spec_logprobs)
        return ExecutorResult(sampled=sampled, logprobs=logprobs, step_time_s=time.perf_counter() - t0,
                              spec_tokens=spec_tokens)

    @staticmethod
    def _verify(so: SchedulerOutput, verifies: list, logits: torch.Tensor) -> tuple[dict[str, list[int]], dict]:
        """Speculative verify rows: grammar masks per position (``StructuredBatch`` gives a verify ``K + 1``
        consecutive rows from its own), then acceptance (``verify_drafts``). Returns the emitted tokens per request
        and, for requests asking for logprobs, one logprob record per emitted token (of the masked logits before
        penalties and temperature, as the sampler's)."""
        st = so.structured
        if st is not None:
            logits = logits.clone()
            at = 0
            for s, v in verifies:
                n = len(v.draft_token_ids) + 1
                first = st.rows.get(s.request.request_id)
                if first is not None:
                    apply_token_bitmask_(logits, st.bitmask[first:first + n], list(range(at, at + n)))
                at += n
        emitted = verify_drafts(logits, [v for _, v in verifies])
        tokens, logprobs, at = {}, {}, 0
        for (s, v), toks in zip(verifies, emitted):
            rid = s.request.request_id
            tokens[rid] = toks
            k = v.row.params.logprobs
            if k is not None:
                logprobs[rid] = _position_logprobs(logits[at:at + len(toks)], toks, k)
            at += len(v.draft_token_ids) + 1
        return tokens, logprobs

    @property
    def kv_bytes_per_block(self) -> int:
        """Bytes of K and V one block holds over all layers."""
        return self.bytes_per_block

    @torch.inference_mode()
    def read_kv_blocks(self, block_ids: list[int]) -> np.ndarray:
        """The K/V of ``block_ids`` as raw bytes (a program's KV to migrate; Ray moves numpy arrays through its
        object store without copying): uint8 ``[layers, 2 (K, V), len(block_ids), block bytes per layer]``."""
        idx = torch.tensor(block_ids, dtype=torch.long)
        data = torch.stack([torch.stack((k.index_select(0, idx), v.index_select(0, idx))) for k, v in self.kv_caches])
        return data.contiguous().view(torch.uint8).reshape(len(self.kv_caches), 2, len(block_ids), -1).numpy()

    @torch.inference_mode()
    def write_kv_blocks(self, block_ids: list[int], data: np.ndarray, positions: list[int]) -> None:
        """Write ``data[:, :, positions]`` (a ``read_kv_blocks`` payload of another engine with the same model,
        dtype and block size) into ``block_ids``.

        Raises:
            ValueError: the payload's shape does not fit this cache.
        """
        k0 = self.kv_caches[0][0]
        per_block = k0[0].numel() * k0.element_size()
        if data.ndim != 4 or data.shape[0] != len(self.kv_caches) or data.shape[1] != 2 or data.shape[3] != per_block:
            raise ValueError(f"KV payload of shape {data.shape} does not fit this cache "
                             f"({len(self.kv_caches)} layers, {per_block} bytes per block and layer)")
        src = torch.from_numpy(np.ascontiguousarray(data[:, :, positions])).view(k0.dtype)
        src = src.reshape(len(self.kv_caches), 2, len(positions), *k0.shape[1:])
        idx = torch.tensor(block_ids, dtype=torch.long)
        for layer, (k, v) in enumerate(self.kv_caches):
            k.index_copy_(0, idx, src[layer, 0])
            v.index_copy_(0, idx, src[layer, 1])

    def _inputs(self, scheduled: list[ScheduledRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        pos: list[int] = []
        for s in scheduled:
            end = s.start + s.num_tokens
            if s.draft_token_ids:
                ids.extend(s.request.all_token_ids[s.start:end - len(s.draft_token_ids)])
                ids.extend(s.draft_token_ids)
            else:
                ids.extend(s.request.all_token_ids[s.start:end])
            pos.extend(range(s.start, end))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long)

    def _sample_rows(self, scheduled: list[ScheduledRequest]) -> tuple[list, list[int], list, list[int]]:
        """Rows sampled by the ordinary sampler (and their hidden-state index), then speculative verify rows (and
        the indices of their ``K + 1`` positions)."""
        rows, idx, verifies, verify_idx, offset = [], [], [], [], 0
        for s in scheduled:
            offset += s.num_tokens
            if not s.sample:
                continue
            r = s.request
            row = SamplingRow(params=r.sampling_params, generator=_seeded_generator(r),
                              prompt_token_ids=r.prompt_token_ids, output_token_ids=r.output_token_ids,
                              eos_token_ids=r.eos_token_ids)
            if s.draft_token_ids:
                k = len(s.draft_token_ids)
                verifies.append((s, VerifyRow(row, list(s.draft_token_ids))))
                verify_idx.extend(range(offset - k - 1, offset))
            else:
                rows.append((s, row))
                idx.append(offset - 1)
        return rows, idx, verifies, verify_idx

    @staticmethod
    def _logprobs(rows: list, out: SamplerOutput) -> dict:
        if out.logprobs is None:
            return {}
        result = {}
        sampled_ids = out.token_ids.tolist()
        sampled_lp = out.logprobs.tolist()
        top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
        top_lp = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for i, (s, _) in enumerate(rows):
            k = s.request.sampling_params.logprobs
            if k is None:
                continue
            entry: dict[int, Logprob] = {}
            ranks = {}
            if top_ids is not None:
                for rank, (tid, lp) in enumerate(zip(top_ids[i][:max(k, 1)], top_lp[i][:max(k, 1)]), 1):
                    ranks[tid] = rank
                    if rank <= k:
                        entry[tid] = Logprob(lp, rank)
            tok = sampled_ids[i]
            entry[tok] = Logprob(sampled_lp[i], ranks.get(tok))
            result[s.request.request_id] = entry
        return result


def _position_logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[dict[int, Logprob]]:
    """One logprob record per emitted token of a verify: ``logits`` ``[len(tokens), V]`` are the logits that
    predicted each token; the record holds the top ``k`` tokens (ranked) and the emitted one (``_logprobs``'s
    format)."""
    logp = logits.float().log_softmax(dim=-1)
    top_vals, top_ids = logp.topk(max(k, 1), dim=-1)
    out = []
    for j, tok in enumerate(tokens):
        entry: dict[int, Logprob] = {}
        ranks = {}
        for rank, (tid, lp) in enumerate(zip(top_ids[j].tolist(), top_vals[j].tolist()), 1):
            ranks[tid] = rank
            if rank <= k:
                entry[tid] = Logprob(lp, rank)
        entry[tok] = Logprob(float(logp[j, tok]), ranks.get(tok))
        out.append(entry)
    return out


def _token_bitmask(so: SchedulerOutput, rows: list) -> tuple[np.ndarray, list[int] | None] | None:
    """The step's grammar bitmask (structured outputs) as the sampler takes it: ``([R, W] int32 numpy, logits row of
    each bitmask row)``, rows None when every sampled row is constrained in bitmask order; None when none is."""
    st = so.structured
    if st is None:
        return None
    bitmask = st.bitmask
    where = [i for i, (s, _) in enumerate(rows) if s.request.request_id in st.rows]
    order = [st.rows[rows[i][0].request.request_id] for i in where]
    if order != list(range(bitmask.shape[0])):
        bitmask = bitmask[order]
    return bitmask, (None if len(where) == len(rows) else where)


@contextmanager
def _gemm_kernels(num_rows: int, gemv_switch: bool):
    """Pick the CPU GEMM path by the number of activation rows.

    ``gemv_switch`` is chosen at load (``KernelChoice.gemv_switch``: native bf16, probe passed).
    Measured on an AMX machine (bf16, SmolLM2 shapes, 2 threads): with one row (a batch-1 decode)
    ATen's native GEMV streams the weights 1.6x faster than oneDNN (20.7 vs 35.1 ms for the 30 layers'
    linears); from two rows on oneDNN wins by a widening margin. Elsewhere the default is kept.
    """
    if num_rows != 1 or not gemv_switch:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _seeded_generator(request: Request) -> torch.Generator | None:
    """The request's sampling generator: seeded ``seed + index`` at its first sampled token and kept on the request
    (so it continues across preemption); None when ``sampling_params.seed`` is unset."""
    if request.generator is None and request.sampling_params.seed is not None:
        request.generator = torch.Generator().manual_seed(request.sampling_params.seed + request.index)
    return request.generator
