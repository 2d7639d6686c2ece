"""Round-robin: replica ``i mod N`` for the ``i``-th request (the baseline of every router paper)."""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import ReplicaLoad, RouteRequest, Router


class RoundRobinRouter(Router):
    name = "round-robin"
    reads_replica_state = False  # it reads no replica state at all

    def reset(self, num_replicas: int) -> None:
        super().reset(num_replicas)
        self._next = 0

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i
