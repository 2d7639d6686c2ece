"""Explicit priority (vLLM's ``priority`` field): smaller value first, then arrival order."""

from __future__ import annotations

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy
from pitstop.policies.request_queue import PriorityRequestQueue, RequestQueue


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def sort_key(self, request: Request, now: float) -> tuple:
        return (request.priority, request.arrival_time, request.arrival_seq)

    def make_queue(self) -> RequestQueue:
        """A list kept in ``sort_key`` order (the key does not depend on ``now``)."""
        return PriorityRequestQueue(lambda r: self.sort_key(r, 0.0))
