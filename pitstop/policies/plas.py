"""Program-level least attained service, PLAS (Autellix, arXiv 2502.13965).

A program's attained service is the tokens computed for it so far (prefill + decode, all turns).
Programs fall into multi-level queues by service: level ``i`` holds service in
``[q0 * 2**(i-1), q0 * 2**i)`` (level 0: below ``q0``); lower levels go first, FCFS by program
arrival within a level, so short programs are not stuck behind long ones. Anti-starvation: a
request that has waited longer than ``starvation_s`` seconds is served at level 0.
"""

from __future__ import annotations

import math

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy


class PLASPolicy(SchedulingPolicy):
    """Args: q0: service (tokens) of the first level; starvation_s: anti-starvation bound, seconds."""

    name = "plas"

    def __init__(self, q0: int = 2048, starvation_s: float = 30.0) -> None:
        super().__init__()
        self.q0 = q0
        self.starvation_s = starvation_s

    def level(self, service: int) -> int:
        """Queue level of a program with ``service`` attained tokens."""
        if service < self.q0:
            return 0
        return 1 + int(math.log2(service / self.q0))

    def sort_key(self, request: Request, now: float) -> tuple:
        program = self.program_of(request)
        service = program.attained_service if program is not None else 0
        first = program.first_arrival if program is not None else request.arrival_time
        level = self.level(service)
        if now - request.arrival_time > self.starvation_s:
            level = 0
        return (level, first, request.arrival_time, request.arrival_seq)
