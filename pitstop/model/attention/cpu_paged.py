"""Paged attention whose decodes read the KV blocks in place (C++ kernel), prefills as the torch backend.

The ``torch`` backend (:mod:`pitstop.model.attention.torch_paged`) gathers every block of every decode (padded
to the longest context of the batch) into a new ``[B, L, Hkv, D]`` tensor per layer and per K and V, then runs a
masked SDPA over it: every KV byte is read, written and read again, and the padding is computed too. This backend
hands the block tables to ``paged_decode_attention`` of :mod:`pitstop.model.cpu_kernels`, which walks each
sequence's own blocks in the cache (work item: one sequence and KV head; the G query heads sharing that KV head
share every K/V row read). The same as vLLM's CPU ``paged_attention_v1`` in spirit (read, not copied; the code is
pitstop's own).

Same cache layout, slot mapping, KV writes and prefill path as the torch backend, so the two are interchangeable
on one cache. Each decode is computed alone (no dependence on the batch it runs in). When the kernels are not
available (``PITSTOP_PORTABLE``, no compiler, failed build or probe) the decodes take the torch backend's path.
"""

from __future__ import annotations

import torch

from pitstop.model.attention.metadata import AttentionMetadata
from pitstop.model.attention.torch_paged import TorchPagedAttention, _prefill_attention


class CpuPagedAttention(TorchPagedAttention):
    """CPU paged attention with in-place decode reads (see module docstring).

    Attributes:
        kernels: the loaded :func:`pitstop.model.cpu_kernels.cpu_kernels` module, or None (torch decode path).
    """

    name = "cpu"

    def __init__(self) -> None:
        from pitstop.model.cpu_kernels import cpu_kernels

        self.kernels = cpu_kernels()

    def build_metadata(
        self,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        """The torch backend's metadata plus, for the decodes, ``decode_tables`` ``[B, W]`` int32 (right-padded
        block tables) and ``decode_lens`` ``[B]`` int64 (context lengths)."""
        if self.kernels is None:
            return super().build_metadata(query_lens, seq_lens, block_tables, block_size, device)
        meta = super().build_metadata(query_lens, seq_lens, block_tables, block_size, device, with_decode_plan=False)
        n = meta.num_prefills
        if meta.num_decodes:
            lens = seq_lens[n:]
            width = max(-(-sl // block_size) for sl in lens)
            rows = [bt[:width] + [0] * (width - min(len(bt), width)) for bt in block_tables[n:]]
            meta.backend_data["decode_tables"] = torch.tensor(rows, dtype=torch.int32, device=device)
            meta.backend_data["decode_lens"] = torch.tensor(lens, dtype=torch.int64, device=device)
        return meta

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if self.kernels is None:
            return super().forward(q, k, v, kv_cache, meta, scale)
        k_cache, v_cache = kv_cache
        row = k_cache.shape[2] * k_cache.shape[3]
        k_cache.view(-1, row).index_copy_(0, meta.slot_mapping, k.reshape(-1, row))
        v_cache.view(-1, row).index_copy_(0, meta.slot_mapping, v.reshape(-1, row))
        data = meta.backend_data
        outs = [_prefill_attention(p, q, k, v, k_cache, v_cache, scale) for p in data["prefills"]]
        if meta.num_decodes:
            outs.append(self.kernels.paged_decode_attention(
                q[meta.num_prefill_tokens:], k_cache, v_cache, data["decode_tables"], data["decode_lens"], scale))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

