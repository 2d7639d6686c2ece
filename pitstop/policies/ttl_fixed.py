"""``fixed``: pin every non-final turn's KV for the same time-to-live."""

from __future__ import annotations

from pitstop.policies.ttl_base import PinContext, TTLPolicy


class FixedTTL(TTLPolicy):
    """Args: seconds: the TTL (> 0)."""

    name = "fixed"

    def __init__(self, seconds: float = 2.0) -> None:
        if seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0 for the fixed TTL policy, got {seconds}")
        self.seconds = seconds

    def ttl(self, ctx: PinContext) -> float:
        return self.seconds
