"""The KV block pool: a fixed set of blocks with reference counts, a free list and a prefix-cache map.

Blocks are identified by an integer id that indexes the preallocated KV tensors
(``[num_blocks, block_size, kv_heads, head_dim]`` per layer). A block is in exactly one of:

- *in use*: ``ref_cnt > 0`` (held by running requests, or by a program's pin);
- *cached free*: ``ref_cnt == 0`` and holding a full block's tokens under a hash: reusable on a
  prefix-cache hit, evicted in LRU order (least recently freed first) when space is needed;
- *free*: ``ref_cnt == 0`` with no hash.

Invariant (checked by ``check_invariants``): ``num_free + num_cached_free + num_in_use == num_blocks``.

Prefix caching follows vLLM's automatic prefix caching: block ``i`` of a sequence is keyed by
``(parent_hash, token_ids_of_block_i, extra)``, so one hash names a whole prefix. A hit is checked
against the stored key, so a Python ``hash`` collision can never return wrong KV.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Iterable, Sequence

from pitstop.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

BlockKey = tuple  # (parent hash or 0, tuple[int, ...] token ids, extra or 0): ints only, see ``hash_block``


@dataclass(eq=False, slots=True)
class KVBlock:
    """One KV block. ``block_hash`` / ``key`` are set once the block is full and cached."""

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None
    key: BlockKey | None = None


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...], extra: int | None = None
               ) -> tuple[int, BlockKey]:
    """Chained block hash (vLLM automatic prefix caching). Returns ``(hash, key)``. The key holds ints only (a
    missing parent or extra is 0): Python's ``hash`` of ints and tuples of ints is the same in every process, of
    ``None`` (before 3.12) and of strings it is not."""
    key = (parent_hash or 0, token_ids, extra or 0)
    return hash(key), key


@lru_cache(maxsize=1024)
def stable_salt(cache_salt: str | None) -> int:
    """The first block's ``extra`` for a request's ``cache_salt``: a 64-bit blake2b digest (Python's ``hash`` of
    a string differs between processes; this one does not), 0 without a salt."""
    if cache_salt is None:
        return 0
    return int.from_bytes(hashlib.blake2b(cache_salt.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def chained_block_entries(token_ids: Sequence[int], block_size: int, extra: int = 0) -> list[tuple[int, BlockKey]]:
    """``(hash, key)`` of each full ``block_size``-token block of ``token_ids``, chained as the prefix cache keys
    them (``extra``, the first block's: ``stable_salt`` of a ``cache_salt``). Equal in every process."""
    out: list[tuple[int, BlockKey]] = []
    parent = 0
    for s in range(0, len(token_ids) - block_size + 1, block_size):
        key = (parent, tuple(token_ids[s:s + block_size]), extra)
        parent, extra = hash(key), 0
        out.append((parent, key))
    return out


def prefix_block_hashes(token_ids: Sequence[int], block_size: int, cache_salt: str | None = None) -> list[int]:
    """The chained hash of each full ``block_size``-token block of ``token_ids``: the names the engine's prefix
    cache (and its KV events) give these blocks. Equal in every process (ints and tuples only)."""
    return [h for h, _ in chained_block_entries(token_ids, block_size, stable_salt(cache_salt))]


class BlockPool:
    """Fixed pool of ``num_blocks`` KV blocks.

    Raises:
        ValueError: ``num_blocks < 1``.
        RuntimeError: ``allocate`` asked for more blocks than are free (callers check first).
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True, enable_kv_cache_events: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives the lowest id first
        self._cached_free: OrderedDict[int, KVBlock] = OrderedDict()  # LRU order: first = evict first
        self._hash_to_block: dict[int, KVBlock] = {}
        self.num_evictions = 0
        # KV events (``take_events``): appended here on the engine thread, drained from any thread (deque appends
        # and pops are atomic); None when disabled
        self.events: deque[KVEvent] | None = deque() if enable_kv_cache_events else None

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be allocated now (free + cached free)."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def lookup(self, block_hash: int, key: BlockKey) -> KVBlock | None:
        """The cached block holding exactly ``key``, or None."""
        hit = self.match_prefix([(block_hash, key)], 1)
        return hit[0] if hit else None

    def match_prefix(self, entries: list[tuple[int, BlockKey]], limit: int) -> list[KVBlock]:
        """The cached blocks of the longest prefix of ``entries[:limit]`` (``(hash, key)`` per block, as
        ``hash_block`` returns them): ``lookup`` of each entry until the first miss."""
        hits: list[KVBlock] = []
        get = self._hash_to_block.get
        for block_hash, key in islice(entries, limit):
            block = get(block_hash)
            if block is None or block.key != key:
                break
            hits.append(block)
        return hits

    # ---- mutations -----------------------------------------------------------------------
    def allocate(self, n: int) -> list[KVBlock]:
        """Take ``n`` blocks (free ones first, then evict cached free ones in LRU order); ref_cnt = 1."""
        if n <= 0:
            return []
        free = self._free
        if n > len(free) + len(self._cached_free):
            raise RuntimeError(f"allocate({n}) with only {self.num_free_blocks} free blocks")
        k = n if n <= len(free) else len(free)
        blocks = self.blocks
        out = []
        if k:
            ids = free[-k:]
            del free[-k:]
            out = [blocks[bid] for bid in reversed(ids)]  # the order of k successive pop()s
            for block in out:
                block.ref_cnt = 1
        if n > k:
            out += self._evict(n - k)
        return out

    def _evict(self, m: int) -> list[KVBlock]:
        """Take the ``m`` least recently freed cached blocks out of the prefix cache; ref_cnt = 1.

        Every cached block is the one its hash maps to (``cache``/``cache_many`` register a block only under a hash
        not mapped yet; only ``_uncache`` and this method remove one), so its entry is deleted without a check."""
        pop, by_hash = self._cached_free.popitem, self._hash_to_block
        evicted = [pop(False)[1] for _ in range(m)]
        if self.events is not None:
            self.events.append(BlockRemoved(tuple(block.block_hash for block in evicted)))
        for block in evicted:
            del by_hash[block.block_hash]
            block.block_hash = block.key = None
            block.ref_cnt = 1
        self.num_evictions += m
        return evicted

    def touch(self, blocks: list[KVBlock]) -> None:
        """Add a reference to each block (a prefix-cache hit or a share); revives cached free blocks."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._cached_free[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block, in the given order; unreferenced cached blocks join the
        LRU tail (evicted last), unreferenced uncached ones the free list."""
        cached_free, free_append = self._cached_free, self._free.append
        for block in blocks:
            rc = block.ref_cnt
            if rc == 1:  # the common case: the last reference
                block.ref_cnt = 0
                if block.block_hash is None:
                    free_append(block.block_id)
                else:
                    cached_free[block.block_id] = block
            elif rc > 1:
                block.ref_cnt = rc - 1
            else:
                raise RuntimeError(f"double free of block {block.block_id}")

    def cache(self, block: KVBlock, block_hash: int, key: BlockKey) -> None:
        """Register a full, computed block under its hash (no-op if that prefix is cached already)."""
        self.cache_many([block], [(block_hash, key)], 0, 1)

    def cache_many(self, blocks: list[KVBlock], entries: list[tuple[int, BlockKey]], start: int, stop: int) -> None:
        """``cache(blocks[i], *entries[i])`` for ``i`` in ``[start, stop)``."""
        if not self.enable_caching:
            return
        by_hash = self._hash_to_block
        stored = [] if self.events is not None else None
        for block, (block_hash, key) in zip(blocks[start:stop], entries[start:stop]):
            if block.block_hash is None and block_hash not in by_hash:
                block.block_hash, block.key = block_hash, key
                by_hash[block_hash] = block
                if stored is not None:
                    stored.append(block_hash)
        if stored:
            self.events.append(BlockStored(tuple(stored)))

    def reset_prefix_cache(self) -> int:
        """Forget every cached free block (they become plain free). Returns how many were dropped."""
        n = len(self._cached_free)
        removed = []
        while self._cached_free:
            _, block = self._cached_free.popitem(last=False)
            removed.append(block.block_hash)
            self._uncache(block)
            self._free.append(block.block_id)
        if self.events is not None and removed:
            self.events.append(AllBlocksCleared() if not self._hash_to_block else BlockRemoved(tuple(removed)))
        return n

    def take_events(self) -> list[KVEvent]:
        """The KV events since the last call, oldest first (empty when events are disabled). Thread-safe against
        the engine thread appending."""
        q = self.events
        if q is None:
            return []
        out = []
        try:
            while True:
                out.append(q.popleft())
        except IndexError:
            return out

    def _uncache(self, block: KVBlock) -> None:
        if block.block_hash is not None and self._hash_to_block.get(block.block_hash) is block:
            del self._hash_to_block[block.block_hash]
        block.block_hash, block.key = None, None

    # ---- accounting ----------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError if the accounting does not balance."""
        in_use = sum(1 for b in self.blocks if b.ref_cnt > 0)
        free_ids = set(self._free)
        assert len(free_ids) == len(self._free), "duplicate block on the free list"
        assert not free_ids & set(self._cached_free), "block both free and cached free"
        assert len(self._free) + len(self._cached_free) + in_use == self.num_blocks, (
            f"free {len(self._free)} + cached {len(self._cached_free)} + in use {in_use} != {self.num_blocks}")
        for bid in free_ids:
            assert self.blocks[bid].ref_cnt == 0 and self.blocks[bid].block_hash is None
        for bid, block in self._cached_free.items():
            assert block.ref_cnt == 0 and block.block_hash is not None and block.block_id == bid
        for h, block in self._hash_to_block.items():
            assert block.block_hash == h
