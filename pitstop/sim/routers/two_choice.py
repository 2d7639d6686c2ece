"""Two hash choices with SLO-aware selection, after DualMap (dual-mapping for cache affinity and load balance in
distributed LLM serving) and the power of two choices (Mitzenmacher, 2001).

The prompt's prefix (its first ``prefix_blocks`` router blocks, default 4: one shared system-prompt block alone
would send every request to the same two replicas) is hashed with two seeds to two candidate
replicas, so requests sharing that prefix always meet on the same two replicas (cache affinity) yet each can
dodge a hot one (load balance). Between the two, the one with the longer cached prefix (router-side index) is
preferred while its estimated TTFT stays under ``ttft_slo_s``; otherwise the one with the lower estimated TTFT.
Estimated TTFT = (queued prefill tokens + this request's uncached tokens) / ``prefill_tokens_per_s``.
"""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import PrefixIndexedRouter, ReplicaLoad, RouteRequest, least_loaded


class TwoChoiceRouter(PrefixIndexedRouter):
    name = "two-choice"

    def __init__(self, prefix_blocks: int = 4, ttft_slo_s: float = 2.0, prefill_tokens_per_s: float = 20000.0,
                 index: str = "approx") -> None:
        super().__init__(index)
        self.prefix_blocks = prefix_blocks
        self.ttft_slo_s = ttft_slo_s
        self.prefill_tokens_per_s = prefill_tokens_per_s

    def candidates(self, req: RouteRequest, n: int) -> tuple[int, int]:
        key = req.prefix_keys[:self.prefix_blocks] if req.prefix_keys else (req.request_id,)
        a = hash((0x9E3779B1, key)) % n
        b = hash((0x85EBCA77, key)) % n
        if b == a and n > 1:
            b = (a + 1 + hash((0xC2B2AE3D, key)) % (n - 1)) % n
        return a, b

    def est_ttft_s(self, r: ReplicaLoad, uncached_tokens: int) -> float:
        return (r.queued_prefill_tokens + uncached_tokens) / self.prefill_tokens_per_s

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        n = len(replicas)
        self.ensure_indexes(replicas, req.block_tokens)
        if n == 1:
            return 0
        a, b = self.candidates(req, n)
        cached = self.cached_tokens(req, [replicas[a], replicas[b]])
        hit = {a: cached[0], b: cached[1]}
        ttft = {i: self.est_ttft_s(replicas[i], max(0, req.prompt_len - hit[i])) for i in (a, b)}
        pref, other = (a, b) if hit[a] >= hit[b] else (b, a)
        if hit[pref] > hit[other] and ttft[pref] <= self.ttft_slo_s:
            return pref
        if ttft[a] == ttft[b]:
            return least_loaded(replicas, [a, b])
        return min((a, b), key=lambda i: ttft[i])
