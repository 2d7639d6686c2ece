"""``none``: never pin (vLLM's behaviour): a finished turn's blocks go to the LRU prefix cache at once."""

from __future__ import annotations

from pitstop.policies.ttl_base import PinContext, TTLPolicy


class NoTTL(TTLPolicy):
    name = "none"

    def ttl(self, ctx: PinContext) -> float:
        return 0.0
