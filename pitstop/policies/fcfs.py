"""First come, first served at request level (vLLM's default): order by arrival; preempt the newest."""

from __future__ import annotations

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy
from pitstop.policies.request_queue import FCFSRequestQueue, RequestQueue


class FCFSPolicy(SchedulingPolicy):
    name = "fcfs"

    def sort_key(self, request: Request, now: float) -> tuple:
        return (request.arrival_time, request.arrival_seq)

    def make_queue(self) -> RequestQueue:
        """A deque in ``sort_key`` order (arrival; the key does not depend on ``now``)."""
        return FCFSRequestQueue(lambda r: self.sort_key(r, 0.0))
