"""Per-request block tables on top of the block pool, with prefix caching.

Source: vLLM's paged attention (Kwon et al., SOSP'23) and its v1 KV cache manager
(automatic prefix caching with chained block hashes).
"""

from __future__ import annotations

from typing import Callable

from pitstop.engine.block_pool import BlockPool, KVBlock, chained_block_entries, stable_salt
from pitstop.request import Request, RequestStatus
from pitstop.sampling_params import SamplingParams


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Owns which blocks each request holds.

    Args:
        num_blocks: blocks in the pool (sized from the KV cache memory).
        block_size: tokens per block.
        enable_prefix_caching: reuse full blocks across requests by their chained hash.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 enable_kv_cache_events: bool = False) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching,
                              enable_kv_cache_events=enable_kv_cache_events)
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self._hashes: dict[str, list[tuple[int, tuple]]] = {}  # request id -> (hash, key) per full block
        self._num_cached: dict[str, int] = {}  # blocks of the request already registered in the cache
        self._tables: dict[str, list[int]] = {}  # request id -> its block-id list (see block_ids)
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found cached
        self.num_pinned_blocks = 0  # block references held by program pins

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (0..1)."""
        return self.pool.num_used_blocks / self.pool.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (block ids in order), kept incrementally: blocks are only ever appended
        while a request holds them, so the cached table is extended by the new ones (copy-on-write: a table
        returned earlier is never changed). Shared between calls: never mutate it."""
        held = self.req_blocks.get(request_id)
        if not held:
            return []
        table = self._tables.get(request_id)
        if table is None or len(table) != len(held):
            n = len(table) if table is not None else 0
            new_ids = [b.block_id for b in held[n:]]
            table = table + new_ids if n else new_ids
            self._tables[request_id] = table
        return table

    # ---- prefix cache -------------------------------------------------------------------
    def _block_hashes(self, request: Request, num_full_blocks: int) -> list[tuple[int, tuple]]:
        """Chained (hash, key) of the request's full blocks, memoised and extended to at least
        ``num_full_blocks`` entries (the returned list may hold more: callers index it, never copy it).

        Each entry equals ``hash_block(parent, tokens of the block, salt if first block)``: the tokens are
        grouped into block tuples at C speed and each new block is hashed once.
        """
        hashes = self._hashes.get(request.request_id)
        if hashes is None:
            hashes = self._hashes[request.request_id] = []
        n = len(hashes)
        if n >= num_full_blocks:
            return hashes
        bs = self.block_size
        it = iter(request.all_token_ids[n * bs:num_full_blocks * bs])
        chunks = zip(*([it] * bs))  # consecutive block_size-token tuples
        parent = hashes[-1][0] if n else None
        append = hashes.append
        if n == 0:
            key = (0, next(chunks), stable_salt(request.cache_salt))
            parent = hash(key)
            append((parent, key))
        for chunk in chunks:
            key = (parent, chunk, 0)
            parent = hash(key)
            append((parent, key))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of the request's known tokens, in whole blocks.

        At least one token is left to compute (its logits are needed), so a full hit stops one
        block early. Returns ``(blocks, num_cached_tokens)``; the blocks are not yet referenced.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        if max_blocks <= 0:
            return [], 0
        hits = self.pool.match_prefix(self._block_hashes(request, max_blocks), max_blocks)
        return hits, len(hits) * self.block_size

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's prefix-cache lookup (tokens looked up, tokens found)."""
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    def cache_blocks(self, request: Request) -> None:
        """Register the request's newly completed full blocks (all tokens computed) in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        blocks = self.req_blocks.get(rid)
        if not blocks:
            return
        num_full = request.num_computed_tokens // self.block_size
        if num_full > len(blocks):
            num_full = len(blocks)
        start = self._num_cached.get(rid, 0)
        if num_full <= start:
            return
        self.pool.cache_many(blocks, self._block_hashes(request, num_full), start, num_full)
        self._num_cached[rid] = num_full

    # ---- allocation ---------------------------------------------------------------------
    def can_allocate(self, request: Request, num_new_tokens: int, computed: list[KVBlock] = ()) -> bool:
        return self._num_needed(request, num_new_tokens, computed) is not None

    def _num_needed(self, request: Request, num_new_tokens: int, computed) -> int | None:
        held = self.req_blocks.get(request.request_id, [])
        total_tokens = request.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        num_new_blocks = max(0, cdiv(total_tokens, self.block_size) - len(held) - len(computed))
        revived = sum(1 for b in computed if b.ref_cnt == 0)  # cached free blocks leave the free pool
        if num_new_blocks + revived > self.pool.num_free_blocks:
            return None
        return num_new_blocks

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed: list[KVBlock] = ()) -> list[KVBlock] | None:
        """Give the request room for ``num_new_tokens`` more tokens after its computed ones.

        ``computed`` are prefix-cache hits from ``get_computed_blocks`` (first admission only).
        Returns the newly allocated blocks, or None (nothing changed) if the pool is too small.
        """
        if not computed:  # hot path: most decode steps fit in the blocks already held
            held = self.req_blocks.get(request.request_id)
            if held is not None and len(held) * self.block_size >= request.num_computed_tokens + num_new_tokens:
                return []
        num_new_blocks = self._num_needed(request, num_new_tokens, computed)
        if num_new_blocks is None:
            return None
        rid = request.request_id
        held = self.req_blocks.setdefault(rid, [])
        if computed:
            self.pool.touch(computed)
            held.extend(computed)
            self._num_cached[rid] = len(held)
        new = self.pool.allocate(num_new_blocks)
        held.extend(new)
        return new

    def rollback_slots(self, request: Request) -> int:
        """Speculative decoding's rollback: free the request's blocks past those its computed tokens
        (``num_computed_tokens``, the accepted ones) fill, tail first; returns how many were freed.

        The freed blocks held only rejected draft tokens' K/V: they were allocated for this request's verify and
        were never registered in the prefix cache (``cache_blocks`` registers only blocks whose tokens are all
        computed), so they go back to the free list. Slots of rejected drafts inside a kept block are past
        ``num_computed_tokens`` and are overwritten by the next step's tokens before any attention reads them.
        """
        rid = request.request_id
        held = self.req_blocks.get(rid)
        if not held:
            return 0
        keep = cdiv(request.num_computed_tokens, self.block_size)
        extra = len(held) - keep
        if extra <= 0:
            return 0
        tail = held[keep:]
        del held[keep:]
        self.pool.free(reversed(tail))
        table = self._tables.get(rid)
        if table is not None and len(table) > keep:
            self._tables[rid] = table[:keep]  # a new list: tables handed out earlier are never changed
        if self._num_cached.get(rid, 0) > keep:
            self._num_cached[rid] = keep
        return extra

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first so that its last blocks are evicted first."""
        blocks = self.req_blocks.pop(request.request_id, None)
        if blocks:
            self.pool.free(reversed(blocks))
        self._num_cached.pop(request.request_id, None)
        self._tables.pop(request.request_id, None)
        if request.is_finished:
            self._hashes.pop(request.request_id, None)

    def import_prefix(self, key: str, token_ids: list[int], now: float = 0.0) -> tuple[int, int]:
        """Place KV computed elsewhere (e.g. a prefill replica's, sent to this decode replica) in the prefix cache:
        the full blocks of ``token_ids`` that a request with these tokens can hit (its last token is always
        computed) are allocated, registered under their chained hashes and released, so they end as cached free
        blocks, most recently used. ``key`` names the import (unique among live requests); ``now``: seconds.

        Returns ``(blocks already cached here, blocks written)``; ``(0, 0)`` with nothing changed when prefix
        caching is off or the pool cannot take the blocks.
        """
        if not self.enable_prefix_caching:
            return 0, 0
        carrier = Request(f"{key}@kv-import", token_ids, SamplingParams(max_tokens=1), arrival_time=now,
                          max_tokens=1)
        bs = self.block_size
        n_full = (len(token_ids) - 1) // bs
        hits, n_hit_tokens = self.get_computed_blocks(carrier)
        new = self.allocate_slots(carrier, n_full * bs - n_hit_tokens, hits)
        written = 0
        if new is not None:
            carrier.num_computed_tokens = n_full * bs
            self.cache_blocks(carrier)
            written = len(new)
        carrier.status = RequestStatus.FINISHED_LENGTH  # a finished carrier: free() drops its memoised hashes
        self.free(carrier)
        return (len(hits), written) if new is not None else (0, 0)

    def import_blocks(self, token_ids: list[int], salt: int,
                      write: "Callable[[list[int], list[int]], None]") -> list[KVBlock] | None:
        """Take blocks for KV computed elsewhere (a migrated program's pin): the full blocks of ``token_ids`` under
        their chained hashes (first block's extra ``salt``). Blocks already cached here are reused; the others are
        allocated, filled by ``write(block ids, positions in token_ids' blocks)`` and registered in the prefix
        cache. Returns every block, one reference each held for the caller (a pin), or None with nothing changed
        when the pool cannot take them (or prefix caching is off)."""
        if not self.enable_prefix_caching:
            return None
        entries = chained_block_entries(token_ids, self.block_size, salt)
        n = len(entries)
        hits = self.pool.match_prefix(entries, n)
        revived = sum(1 for b in hits if b.ref_cnt == 0)
        if n - len(hits) + revived > self.pool.num_free_blocks:
            return None
        self.pool.touch(hits)
        new = self.pool.allocate(n - len(hits))
        if new:
            write([b.block_id for b in new], list(range(len(hits), n)))
        blocks = hits + new
        self.pool.cache_many(blocks, entries, len(hits), n)
        self.num_pinned_blocks += n
        return blocks

    def pin_blocks(self, request: Request) -> list[KVBlock]:
        """End a request but keep its cached full blocks referenced for a program pin.

        The leading blocks registered in the prefix cache keep their reference (now owned by the pin
        and found by the next turn's prefix lookup); the rest are freed. Returns the pinned blocks.
        """
        blocks = self.req_blocks.pop(request.request_id, [])
        n = 0
        while n < len(blocks) and blocks[n].block_hash is not None:
            n += 1
        keep, rest = blocks[:n], blocks[n:]
        self.pool.free(rest[::-1])
        self._num_cached.pop(request.request_id, None)
        self._tables.pop(request.request_id, None)
        self._hashes.pop(request.request_id, None)
        self.num_pinned_blocks += len(keep)
        return keep

    def release_pin(self, blocks: list[KVBlock]) -> None:
        """Drop a pin's references; its blocks become evictable (LRU) cached blocks."""
        self.pool.free(reversed(blocks))
        self.num_pinned_blocks -= len(blocks)

    def reset_prefix_cache(self) -> int:
        return self.pool.reset_prefix_cache()

    def check_invariants(self) -> None:
        """Assert pool accounting, and that every held block is referenced at least once per holder."""
        self.pool.check_invariants()
        refs: dict[int, int] = {}
        for blocks in self.req_blocks.values():
            for b in blocks:
                refs[b.block_id] = refs.get(b.block_id, 0) + 1
        for bid, n in refs.items():
            assert self.pool.blocks[bid].ref_cnt >= n, f"block {bid} ref_cnt below its holders"

    def assert_idle(self) -> None:
        """Assert that no request holds a block and only program pins reference blocks (after all
        requests end)."""
        self.check_invariants()
        assert not self.req_blocks, f"requests still holding blocks: {list(self.req_blocks)}"
        refs = sum(b.ref_cnt for b in self.pool.blocks)
        assert refs == self.num_pinned_blocks, (
            f"{refs} block references after all requests ended, {self.num_pinned_blocks} of them pins")
