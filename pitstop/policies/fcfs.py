"""First come, first served at request level (vLLM's default): order by arrival; preempt the newest."""

from __future__ import annotations

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy


class FCFSPolicy(SchedulingPolicy):
    name = "fcfs"

    def sort_key(self, request: Request, now: float) -> tuple:
        return (request.arrival_time, request.arrival_seq)
