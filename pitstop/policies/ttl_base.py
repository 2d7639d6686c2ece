"""The TTL-policy interface: how long to pin a program's KV cache after a non-final turn.

Source: Continuum (arXiv 2511.02230) pins the KV cache of a program waiting on a tool for a
time-to-live chosen from tool-duration statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass
class PinContext:
    """What a TTL policy may look at when a turn ends.

    Attributes:
        tool_name: the tool the program runs next ("unknown" if not known).
        context_tokens: tokens whose KV would be kept (and re-prefilled if dropped).
        num_blocks: blocks the pin would hold; total_blocks: blocks in the pool.
        usage: fraction of blocks in use, pins included (0..1).
        prefill_rate: measured prefill throughput, tokens per second.
        queue_delay: recent mean queueing delay of admitted requests, seconds.
        now: engine clock, seconds.
        gap_overhead: recent mean of the part of a gap between turns that is not the tool's run (seconds): the
            reply's way to the client, the client's own work, the tool report, the next request's way in. A
            pin must outlive the tool by this much for the next turn to find it.
    """

    tool_name: str
    context_tokens: int
    num_blocks: int
    total_blocks: int
    usage: float
    prefill_rate: float
    queue_delay: float
    now: float
    gap_overhead: float = 0.0


class TTLPolicy(ABC):
    """Chooses the pin time-to-live; learns from observed tool durations."""

    name: str = "base"

    @abstractmethod
    def ttl(self, ctx: PinContext) -> float:
        """Seconds to pin; 0 or less means do not pin."""

    def observe_tool(self, tool_name: str, duration_s: float) -> None:
        """Record one tool run (reported by the client or inferred from the gap between turns)."""
