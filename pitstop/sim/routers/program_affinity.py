"""Program affinity: every turn of an agent program goes to the replica of its first turn, so the program's
growing context stays in one KV cache (and in its pins, with a TTL policy); first turns and lone requests go to
the least-loaded replica. (Continuum and Autellix schedule at program level on one engine; this is the
cluster-level counterpart.)"""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import ReplicaLoad, RouteRequest, Router, least_loaded


class ProgramAffinityRouter(Router):
    name = "program-affinity"

    def reset(self, num_replicas: int) -> None:
        super().reset(num_replicas)
        self.home: dict[str, int] = {}

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        if req.program_id is not None:
            home = self.home.get(req.program_id)
            if home is not None and home < len(replicas):
                return home
        return least_loaded(replicas)

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        if req.program_id is not None:
            self.home.setdefault(req.program_id, index)

    def forget(self, program_id: str) -> None:
        """Drop a finished program."""
        self.home.pop(program_id, None)
