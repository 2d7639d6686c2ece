"""KV cache events: what a replica's prefix cache gained and lost, for routers that keep an exact index of
cached prefixes per replica (vLLM's KV events, ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``, as
consumed by llm-d's precise prefix-cache scorer and NVIDIA Dynamo's KV router).

A block is named by its chained prefix hash (``pitstop.engine.block_pool.prefix_block_hashes``): one hash names
the block's tokens *and* every token before it, so "hash h is cached on replica r" means "the prefix ending with
that block can be hit there". The hashes are equal in every process (ints and tuples of ints only; a request's
``cache_salt`` enters as a stable 64-bit digest), so a router in another process computes the same names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Blocks registered in the prefix cache (full, computed), in prefix order per request."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks dropped from the prefix cache (evicted for reuse, or cleared)."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """Every cached block is gone (the whole index of the replica is empty)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
