"""The scheduling-policy interface. The scheduler keeps the token budget and chunked-prefill
machinery; a policy only decides order (who is served first) and preemption victims."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from pitstop.policies.request_queue import PolicyOrderedQueue, RequestQueue
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

    def order(self, requests: Iterable[Request], now: float) -> list[Request]:
        """Requests in service order, most deserving first (stable for equal keys)."""
        return sorted(requests, key=lambda r: self.sort_key(r, now))

    def make_queue(self) -> RequestQueue:
        """The scheduler's waiting queue in this policy's order (default: ``order`` at every scheduling pass; a
        policy whose key never changes once a request is queued returns a queue kept in key order)."""
        return PolicyOrderedQueue(self.order)

    def pick_victim(self, running: list[Request], now: float) -> Request:
        """The running request to preempt when blocks run out: the one served last."""
        return max(running, key=lambda r: self.sort_key(r, now))
