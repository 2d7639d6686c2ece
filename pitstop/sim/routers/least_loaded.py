"""Least-loaded: the replica with the fewest outstanding tokens (prefill still to compute + outputs still to
generate), a join-the-shortest-queue rule measured in work rather than in requests."""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import ReplicaLoad, RouteRequest, Router, least_loaded


class LeastLoadedRouter(Router):
    name = "least-loaded"

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        return least_loaded(replicas)
