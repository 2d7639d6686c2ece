"""The clock interface shared by the engine and the simulator, and the simulator's virtual clock.

The engine reads time only through a callable clock (``LLMEngine(clock=...)``; the scheduler gets ``now``
passed in). The real engine uses ``time.monotonic``; the simulator passes a ``VirtualClock``, whose time (in
seconds) moves only when the simulator says so: to the end of a step predicted by a cost model, or to the next
arrival. It never moves backwards.
"""

from __future__ import annotations


class VirtualClock:
    """A settable monotonic clock (seconds). Calling it returns the current virtual time."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> float:
        """Move forward by ``dt`` seconds (>= 0). Returns the new time."""
        if dt < 0:
            raise ValueError(f"a clock cannot go back: advance({dt})")
        self.now += dt
        return self.now

    def advance_to(self, t: float) -> float:
        """Move to time ``t`` (seconds); ``t`` earlier than now raises ValueError."""
        if t < self.now - 1e-12:
            raise ValueError(f"a clock cannot go back: now={self.now}, asked {t}")
        self.now = max(self.now, float(t))
        return self.now
