"""The router interface: pick the replica of each arriving request from a read-only view of the replicas.

A router sees, per replica, a ``ReplicaLoad`` (counts kept by the cluster, never the scheduler internals), and
the request's routing keys: ``prefix_keys`` (chained hashes of the prompt's fixed-size blocks; equal prefixes give
equal leading keys) and ``program_id``. Routers that remember what they sent where (prefix-affinity, two-choice,
program-affinity) update their own state in ``on_routed`` -- like SGLang's router, which keeps an approximate
radix tree per worker of the prompts it routed rather than querying the workers' caches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol, Sequence


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
    """

    request_id: str
    prompt_len: int
    output_len: int = 1
    prefix_keys: tuple = ()
    block_tokens: int = 512
    program_id: str | None = None


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
        """Index of the replica that gets ``req``."""

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        """Record that ``req`` went to replica ``index``."""

    def assign(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        """``route`` then ``on_routed``: the index of the replica that gets ``req``, recorded."""
        index = self.route(req, replicas, now)
        self.on_routed(req, index, now)
        return index


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
    """A router that keeps one ``PrefixIndex`` per replica of the prompts it routed there (prefix-affinity,
    two-choice): created on first use, sized by the replica's KV capacity in router blocks, updated on routing."""

    def __init__(self) -> None:
        self.indexes: list[PrefixIndex] = []

    def reset(self, num_replicas: int) -> None:
        super().reset(num_replicas)
        self.indexes = []

    def ensure_indexes(self, replicas: Sequence[ReplicaLoad], block_tokens: int) -> None:
        """One index per replica (replicas may be added between calls)."""
        while len(self.indexes) < len(replicas):
            cap = max(1, replicas[len(self.indexes)].kv_capacity_tokens // max(1, block_tokens))
            self.indexes.append(PrefixIndex(cap))

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        if req.prefix_keys and index < len(self.indexes):
            self.indexes[index].insert(req.prefix_keys)
