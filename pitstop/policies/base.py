"""The scheduling-policy interface. The scheduler keeps the token budget and chunked-prefill
machinery; a policy only decides order (who is admitted first) and preemption victims."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pitstop.engine.request import Request


class SchedulingPolicy(ABC):
    name: str = "base"

    @abstractmethod
    def sort_key(self, request: Request, now: float) -> tuple:
        """Key ordering the waiting queue: smaller is served first."""

    def order(self, requests: list[Request], now: float) -> list[Request]:
        """Requests in service order, most deserving first (stable for equal keys)."""
        return sorted(requests, key=lambda r: self.sort_key(r, now))

    def pick_victim(self, running: list[Request], now: float) -> Request:
        """The running request to preempt when blocks run out: by default the one served last."""
        return max(running, key=lambda r: self.sort_key(r, now))
