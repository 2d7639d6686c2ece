"""Explicit priority (vLLM's ``priority`` field): smaller value first, then arrival order."""

from __future__ import annotations

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def sort_key(self, request: Request, now: float) -> tuple:
        return (request.priority, request.arrival_time, request.arrival_seq)
