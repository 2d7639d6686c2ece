"""The router interface: pick the replica of each arriving request from a read-only view of the replicas.

A router sees, per replica, a ``ReplicaLoad`` (counts kept by the cluster, never the scheduler internals), and
the request's routing keys: ``prefix_keys`` (chained hashes of the prompt's fixed-size blocks; equal prefixes give
equal leading keys), ``block_hashes`` (the engine's own prefix-cache block hashes, for the exact index) and
``program_id``. Routers that remember what they sent where (prefix-affinity, two-choice, program-affinity) update
their own state in ``on_routed`` -- like SGLang's router, which keeps an approximate radix tree per worker of the
prompts it routed rather than querying the workers' caches. With ``index="exact"`` the prefix routers match against
``kv_index`` instead, a ``KVEventIndex`` the driver feeds with the replicas' KV events (llm-d's precise mode).

``route`` returns a *position* in the ``replicas`` sequence it was given; state a router keeps about a replica is
keyed by the replica's ``ReplicaLoad.index``, which stays the same while the replica lives (a live deployment's
replica set changes when one dies and another starts; the simulator's never does, and there index == position).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from pitstop.sim.routers.kv_index import KVEventIndex

INDEXES = ("approx", "exact")  # prefix index kinds of the prefix routers


class ReplicaLoad(Protocol):
    """What a router may read about a replica."""

    index: int
    outstanding_requests: int  # routed, not finished
    outstanding_tokens: int  # prefill tokens still to compute + output tokens still to generate
    queued_prefill_tokens: int  # prompt tokens of routed requests not yet prefilled
    kv_capacity_tokens: int  # KV cache size, tokens


@dataclass
class LoadView:
    """A plain ``ReplicaLoad`` (tests build these by hand)."""

    index: int
    outstanding_requests: int = 0
    outstanding_tokens: int = 0
    queued_prefill_tokens: int = 0
    kv_capacity_tokens: int = 1 << 30


@dataclass
class RouteRequest:
    """What a router knows about a request.

    Attributes:
        request_id: id.
        prompt_len / output_len: tokens.
        prefix_keys: chained hash per router block of the prompt (``prefix_keys[i]`` names the first ``i + 1``
            blocks); empty when unknown.
        block_tokens: tokens per router block.
        program_id: the agent program this request belongs to (None: a lone request).
        block_hashes: the engine's chained hash of each full KV block of the prompt
            (``pitstop.engine.block_pool.prefix_block_hashes``); empty when unknown. kv_block_tokens: tokens per
            KV block.
    """

    request_id: str
    prompt_len: int
    output_len: int = 1
    prefix_keys: tuple = ()
    block_tokens: int = 512
    program_id: str | None = None
    block_hashes: tuple = ()
    kv_block_tokens: int = 16


class Router(ABC):
    """Attributes:
        reads_replica_state: ``route`` reads the replicas' ``ReplicaLoad`` (True unless a router says otherwise).
            When False (round-robin) the cluster does not keep ``outstanding_tokens`` / ``queued_prefill_tokens``
            (they stay 0; ``outstanding_requests`` is always kept), and the placement of every request is known
            before the run, so ``pitstop.sim.parallel`` may simulate groups of replicas in separate processes.
    """

    name = "base"
    reads_replica_state: bool = True

    def reset(self, num_replicas: int) -> None:
        """Forget all state; called once before a run."""
        self.num_replicas = num_replicas

    @abstractmethod
    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        """Position in ``replicas`` of the replica that gets ``req``."""

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        """Record that ``req`` went to the replica whose ``ReplicaLoad.index`` is ``index``."""

    def assign(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        """``route`` then ``on_routed``: the position of the replica that gets ``req``, recorded."""
        pos = self.route(req, replicas, now)
        self.on_routed(req, replicas[pos].index, now)
        return pos


def least_loaded(replicas: Sequence[ReplicaLoad], among: Sequence[int] | None = None) -> int:
    """Index with the fewest outstanding tokens (ties: fewest requests, then lowest index)."""
    idx = range(len(replicas)) if among is None else among
    return min(idx, key=lambda i: (replicas[i].outstanding_tokens, replicas[i].outstanding_requests, i))


@dataclass
class PrefixIndex:
    """Approximate per-replica prefix cache of what was routed there: an LRU set of prefix keys, bounded by
    ``capacity_blocks`` (an approximation of the replica's KV capacity; SGLang router's approximate tree)."""

    capacity_blocks: int
    keys: OrderedDict = field(default_factory=OrderedDict)

    def match(self, prefix_keys: Sequence) -> int:
        """Leading blocks of ``prefix_keys`` present."""
        n = 0
        for k in prefix_keys:
            if k not in self.keys:
                break
            n += 1
        return n

    def insert(self, prefix_keys: Sequence) -> None:
        keys = self.keys
        for k in prefix_keys:
            if k in keys:
                keys.move_to_end(k)
            else:
                keys[k] = None
        while len(keys) > self.capacity_blocks:
            keys.popitem(last=False)


class PrefixIndexedRouter(Router):
    """A router that knows which prompt prefixes each replica caches (prefix-affinity, two-choice,
    program-affinity's fallback).

    ``index="approx"``: one ``PrefixIndex`` per replica of the prompts routed there (created on first use, sized
    by the replica's KV capacity in router blocks, updated on routing). ``index="exact"``: ``kv_index``, a
    ``KVEventIndex`` the driver feeds with the replicas' KV events, matched with the request's ``block_hashes``.

    Raises:
        ValueError: an unknown ``index``.
    """

    def __init__(self, index: str = "approx") -> None:
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.index = index
        self.indexes: dict[int, PrefixIndex] = {}
        self.kv_index: KVEventIndex | None = KVEventIndex() if index == "exact" else None

    @property
    def wants_kv_events(self) -> bool:
        """The driver must feed ``kv_index`` with the replicas' KV events."""
        return self.kv_index is not None

    def reset(self, num_replicas: int) -> None:
        super().reset(num_replicas)
        self.indexes = {}
        if self.kv_index is not None:
            self.kv_index = KVEventIndex()

    def ensure_indexes(self, replicas: Sequence[ReplicaLoad], block_tokens: int) -> None:
        """One approximate index per replica (replicas may be added between calls)."""
        for r in replicas:
            if r.index not in self.indexes:
                self.indexes[r.index] = PrefixIndex(max(1, r.kv_capacity_tokens // max(1, block_tokens)))

    def cached_tokens(self, req: RouteRequest, replicas: Sequence[ReplicaLoad]) -> list[int]:
        """Per position in ``replicas``: prompt tokens of ``req`` the index says are cached there."""
        if self.kv_index is not None:
            kv = self.kv_index
            return [kv.match(r.index, req.block_hashes) * req.kv_block_tokens for r in replicas]
        self.ensure_indexes(replicas, req.block_tokens)
        return [self.indexes[r.index].match(req.prefix_keys) * req.block_tokens for r in replicas]

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        if self.kv_index is None and req.prefix_keys and index in self.indexes:
            self.indexes[index].insert(req.prefix_keys)
