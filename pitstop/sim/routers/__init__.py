"""Cluster routers, one file each; ``get_router(name)`` builds one by its ``--router`` name."""

from __future__ import annotations

from pitstop.sim.routers.base import (INDEXES, LoadView, PrefixIndex, PrefixIndexedRouter, ReplicaLoad, RouteRequest,
                                      Router, least_loaded)
from pitstop.sim.routers.kv_index import KVEventIndex, KVEventPublisher
from pitstop.sim.routers.least_loaded import LeastLoadedRouter
from pitstop.sim.routers.prefix_affinity import PrefixAffinityRouter
from pitstop.sim.routers.program_affinity import ProgramAffinityRouter
from pitstop.sim.routers.round_robin import RoundRobinRouter
from pitstop.sim.routers.two_choice import TwoChoiceRouter

ROUTERS: dict[str, type[Router]] = {cls.name: cls for cls in (
    RoundRobinRouter, LeastLoadedRouter, PrefixAffinityRouter, TwoChoiceRouter, ProgramAffinityRouter)}


def get_router(name: str, **kwargs) -> Router:
    """Build a router by name (``round-robin``, ``least-loaded``, ``prefix-affinity``, ``two-choice``,
    ``program-affinity``). Raises ValueError for an unknown name."""
    try:
        cls = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r} (known: {', '.join(ROUTERS)})") from None
    return cls(**kwargs)


__all__ = ["INDEXES", "KVEventIndex", "KVEventPublisher", "PrefixIndexedRouter", "ROUTERS", "LoadView", "PrefixIndex", "ReplicaLoad", "RouteRequest", "Router", "get_router",
           "least_loaded"]
