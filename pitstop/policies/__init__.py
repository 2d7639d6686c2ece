"""Scheduling policies: ordering, admission and preemption-victim choice, one file each."""

from pitstop.policies.base import SchedulingPolicy
from pitstop.policies.fcfs import FCFSPolicy

_REGISTRY: dict[str, type[SchedulingPolicy]] = {"fcfs": FCFSPolicy}


def get_scheduling_policy(name: str) -> SchedulingPolicy:
    """Build a policy by its ``--scheduling-policy`` name. Raises ValueError for an unknown name."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


__all__ = ["SchedulingPolicy", "get_scheduling_policy"]
