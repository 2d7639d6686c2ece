"""Program-level first come, first served (Continuum, arXiv 2511.02230).

Requests are ordered by their program's first arrival, so a long-running agent's later turns are
not queued behind programs that started after it; turns of programs whose KV is pinned go before
all others (their cache is waiting for them). Requests without a program are programs of one turn.
"""

from __future__ import annotations

from pitstop.request import Request
from pitstop.policies.base import SchedulingPolicy


class ProgramFCFSPolicy(SchedulingPolicy):
    name = "program-fcfs"

    def sort_key(self, request: Request, now: float) -> tuple:
        program = self.program_of(request)
        if program is None:
            return (1, request.arrival_time, request.arrival_time, request.arrival_seq)
        return (0 if program.has_pin else 1, program.first_arrival, request.arrival_time, request.arrival_seq)
