"""Paged attention on CPU with plain PyTorch ops.

Cache layout: per layer a K and a V tensor of shape ``[num_blocks, block_size, Hkv, D]``
(block major, token major inside a block, as vLLM's paged cache). The flat slot of token
position ``p`` of a sequence is ``block_table[p // block_size] * block_size + p % block_size``.

* New K/V are written with one ``index_copy_`` per cache for the whole step (rows of ``Hkv * D``).
* Decodes (query length 1) are batched: one ``index_select`` of whole blocks (contiguous
  ``block_size * Hkv * D`` rows: measured 6x faster than selecting along an inner dim) of every
  decode's block table (padded to the longest), viewed as ``[B, Hkv, L, D]`` without a copy, then
  one masked ``scaled_dot_product_attention`` where the ``G = Hq / Hkv`` query heads sharing a KV
  head play the role of G queries (no Python loop over sequences; 2-2.6x faster than gathering
  head-major blocks and two batched matmuls at B = 32..128).
* Prefills (few, long) loop per sequence over
  :func:`torch.nn.functional.scaled_dot_product_attention` with a causal mask offset by the
  cached context; a prefill without cached context attends directly over its new K/V.

All index tensors and masks are built once per step in :meth:`TorchPagedAttention.build_metadata`
and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pitstop.model.attention.backend import AttentionBackend
from pitstop.model.attention.metadata import AttentionMetadata


@dataclass
class PrefillPlan:
    """One prefill sequence: token range ``[start, end)`` of the step and how to read its context.

    ``blocks`` ``[nb]`` int64 are the block ids holding its ``ctx_len`` context tokens (None when
    the sequence has no cached context, i.e. query length == context length); ``mask``
    ``[Lq, ctx_len]`` bool is True where a query may attend (None: plain causal).
    """

    start: int
    end: int
    ctx_len: int
    blocks: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass
class DecodePlan:
    """All ``B`` decodes of the step.

    ``blocks`` ``[B * nb]`` int64: each decode's block table padded to ``nb`` blocks;
    ``attend`` ``[B, 1, 1, nb * block_size]`` bool, True on positions inside the sequence's context.
    """

    blocks: torch.Tensor
    attend: torch.Tensor


class TorchPagedAttention(AttentionBackend):
    """CPU paged attention backend (see module docstring)."""

    name = "torch"

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        """``(num_blocks, block_size, Hkv, D)``."""
        return (num_blocks, block_size, num_kv_heads, head_dim)

    def build_metadata(
        self,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device,
        with_decode_plan: bool = True,
    ) -> AttentionMetadata:
        """See :meth:`AttentionBackend.build_metadata`; ``with_decode_plan=False`` skips the decodes' gather plan
        (for a subclass that reads the blocks in place)."""
        _validate(query_lens, seq_lens, block_tables, block_size)
        num_prefills = _count_prefills(query_lens)
        bt = _padded_block_tables(seq_lens, block_tables, block_size)
        qlens = torch.tensor(query_lens, dtype=torch.int64)
        slens = torch.tensor(seq_lens, dtype=torch.int64)
        slot_mapping = _slot_mapping(qlens, slens, bt, block_size)
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        prefills = [_prefill_plan(i, cu, query_lens, seq_lens, bt, block_size, device) for i in range(num_prefills)]
        decode = None
        if with_decode_plan and num_prefills < len(query_lens):
            decode = _decode_plan(slens[num_prefills:], bt[num_prefills:], block_size, device)
        return AttentionMetadata(
            slot_mapping=slot_mapping.to(device),
            num_prefills=num_prefills,
            num_prefill_tokens=cu[num_prefills],
            num_decodes=len(query_lens) - num_prefills,
            backend_data={"prefills": prefills, "decode": decode},
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        row = k_cache.shape[2] * k_cache.shape[3]
        k_cache.view(-1, row).index_copy_(0, meta.slot_mapping, k.reshape(-1, row))
        v_cache.view(-1, row).index_copy_(0, meta.slot_mapping, v.reshape(-1, row))
        outs = [_prefill_attention(p, q, k, v, k_cache, v_cache, scale) for p in meta.backend_data["prefills"]]
        decode: DecodePlan | None = meta.backend_data["decode"]
        if decode is not None:
            outs.append(_decode_attention(decode, q[meta.num_prefill_tokens :], k_cache, v_cache, scale))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _validate(query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]], block_size: int) -> None:
    """Raise ValueError on inconsistent step descriptions."""
    if not (len(query_lens) == len(seq_lens) == len(block_tables)) or not query_lens:
        raise ValueError("query_lens, seq_lens and block_tables must be non-empty and of equal length")
    for i, (ql, sl, bt) in enumerate(zip(query_lens, seq_lens, block_tables)):
        if ql < 1 or sl < ql:
            raise ValueError(f"sequence {i}: need 1 <= query_len ({ql}) <= seq_len ({sl})")
        if len(bt) * block_size < sl:
            raise ValueError(f"sequence {i}: block table of {len(bt)} blocks too short for {sl} tokens")


def _count_prefills(query_lens: list[int]) -> int:
    """Sequences up to the last one with query length > 1 are prefills; the 1-token tail are decodes."""
    last = -1
    for i, n in enumerate(query_lens):
        if n > 1:
            last = i
    return last + 1


def _padded_block_tables(seq_lens: list[int], block_tables: list[list[int]], block_size: int) -> torch.Tensor:
    """``[N, W]`` int64 block ids, right-padded with 0, W = max blocks needed by any sequence."""
    width = max((sl + block_size - 1) // block_size for sl in seq_lens)
    rows = [bt[:width] + [0] * (width - min(len(bt), width)) for bt in block_tables]
    return torch.tensor(rows, dtype=torch.int64)


def _slot_mapping(qlens: torch.Tensor, slens: torch.Tensor, bt: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[T]`` flat slots of the new tokens of all sequences, in batch order."""
    seq_idx = torch.repeat_interleave(torch.arange(len(qlens)), qlens)
    starts = torch.cumsum(qlens, 0) - qlens
    pos = (slens - qlens)[seq_idx] + torch.arange(int(qlens.sum())) - starts[seq_idx]
    return bt[seq_idx, pos // block_size] * block_size + pos % block_size


def _prefill_plan(
    i: int, cu: list[int], query_lens: list[int], seq_lens: list[int], bt: torch.Tensor, block_size: int, device: torch.device
) -> PrefillPlan:
    """Plan for prefill ``i``: context blocks and offset causal mask when it has cached context."""
    qlen, slen = query_lens[i], seq_lens[i]
    if qlen == slen:
        return PrefillPlan(cu[i], cu[i + 1], slen, None, None)
    blocks = bt[i, : (slen + block_size - 1) // block_size]
    pos = torch.arange(slen)
    mask = pos[None, :] <= torch.arange(slen - qlen, slen)[:, None]
    return PrefillPlan(cu[i], cu[i + 1], slen, blocks.to(device), mask.to(device))


def _decode_plan(slens: torch.Tensor, bt: torch.Tensor, block_size: int, device: torch.device) -> DecodePlan:
    """Block ids ``[B * nb]`` and padding mask for the decode sequences."""
    nb = (int(slens.max()) + block_size - 1) // block_size
    pos = torch.arange(nb * block_size)
    attend = (pos[None, :] < slens[:, None]).view(len(slens), 1, 1, -1)
    return DecodePlan(bt[:, :nb].reshape(-1).to(device), attend.to(device))


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``[num_blocks, bs, Hkv, D]`` cache, ``[n]`` block ids -> ``[n * bs, Hkv, D]``."""
    nb, bs, hkv, d = cache.shape
    return cache.view(nb, -1).index_select(0, blocks).view(-1, hkv, d)


def _prefill_attention(
    p: PrefillPlan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of one prefill: ``[Lq, Hq, D]``."""
    if p.blocks is None:
        kk, vv = k[p.start : p.end].transpose(0, 1), v[p.start : p.end].transpose(0, 1)
    else:
        kk = _gather(k_cache, p.blocks)[: p.ctx_len].transpose(0, 1)
        vv = _gather(v_cache, p.blocks)[: p.ctx_len].transpose(0, 1)
    out = F.scaled_dot_product_attention(
        q[p.start : p.end].transpose(0, 1).unsqueeze(0),
        kk.unsqueeze(0),
        vv.unsqueeze(0),
        attn_mask=p.mask,
        is_causal=p.mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)


def _decode_attention(
    d: DecodePlan, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float
) -> torch.Tensor:
    """Batched single-token attention of all ``B`` decodes: ``q`` ``[B, Hq, D]`` -> ``[B, Hq, D]``.

    Keys/values are gathered as ``[B, L, Hkv, D]`` and viewed ``[B, Hkv, L, D]``; the query heads
    of one KV head form the query axis ``[B, Hkv, G, D]``; padding past each context is masked.
    """
    b, num_heads, head_dim = q.shape
    num_kv = k_cache.shape[2]
    keys = _gather(k_cache, d.blocks).view(b, -1, num_kv, head_dim).transpose(1, 2)
    values = _gather(v_cache, d.blocks).view(b, -1, num_kv, head_dim).transpose(1, 2)
    qh = q.view(b, num_kv, num_heads // num_kv, head_dim)
    out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=d.attend, scale=scale)
    return out.reshape(b, num_heads, head_dim)
