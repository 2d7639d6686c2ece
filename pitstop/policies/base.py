"""The scheduling-policy interface. The scheduler keeps the token budget and chunked-prefill
machinery; a policy only decides order (who is served first) and preemption victims."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pitstop.program import Program
from pitstop.request import Request


class SchedulingPolicy(ABC):
    """Orders requests by ``sort_key`` (smaller first). The scheduler binds its program table."""

    name: str = "base"

    def __init__(self) -> None:
        self.programs: dict[str, Program] = {}

    def bind(self, programs: dict[str, Program]) -> None:
        """Give the policy read access to the scheduler's program table."""
        self.programs = programs

    def program_of(self, request: Request) -> Program | None:
        return self.programs.get(request.program_id) if request.program_id is not None else None

    @abstractmethod
    def sort_key(self, request: Request, now: float) -> tuple:
        """Key ordering requests: smaller is served first."""

    def order(self, requests: list[Request], now: float) -> list[Request]:
        """Requests in service order, most deserving first (stable for equal keys)."""
        return sorted(requests, key=lambda r: self.sort_key(r, now))

    def pick_victim(self, running: list[Request], now: float) -> Request:
        """The running request to preempt when blocks run out: the one served last."""
        return max(running, key=lambda r: self.sort_key(r, now))
