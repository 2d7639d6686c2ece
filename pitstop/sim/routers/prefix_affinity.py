"""Prefix-affinity with load fallback, after SGLang's cache-aware router (sgl-router, "cache_aware" policy;
SGLang: Zheng et al., 2024; Mooncake's KVCache-centric scheduling, FAST'25, motivates the same trade-off).

1. If the cluster is imbalanced -- ``max_load - min_load > balance_abs_threshold`` and
   ``max_load > balance_rel_threshold * min_load`` (load = outstanding requests) -- send to the least-loaded
   replica (outstanding tokens).
2. Else match the prompt's prefix against each replica's prefix index (``index="approx"``: what was routed
   there, LRU-bounded by the replica's KV capacity; ``"exact"``: the replica's KV events). If the best match
   covers more than ``cache_threshold`` of the prompt's tokens, send it there (ties: least loaded).
3. Else send to the least-loaded replica (SGLang picks the smallest tree; load is what we balance on here).
"""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import PrefixIndexedRouter, ReplicaLoad, RouteRequest, least_loaded


class PrefixAffinityRouter(PrefixIndexedRouter):
    name = "prefix-affinity"

    def __init__(self, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
                 balance_rel_threshold: float = 1.5, index: str = "approx") -> None:
        super().__init__(index)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold

    def imbalanced(self, replicas: Sequence[ReplicaLoad]) -> bool:
        loads = [r.outstanding_requests for r in replicas]
        lo, hi = min(loads), max(loads)
        return hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        self.ensure_indexes(replicas, req.block_tokens)
        if self.imbalanced(replicas) or not (req.block_hashes if self.kv_index is not None else req.prefix_keys):
            return least_loaded(replicas)
        matches = self.cached_tokens(req, replicas)
        best = max(matches)
        if best > 0 and best / max(1, req.prompt_len) > self.cache_threshold:
            return least_loaded(replicas, [i for i, m in enumerate(matches) if m == best])
        return least_loaded(replicas)
