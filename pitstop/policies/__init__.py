"""Scheduling and TTL policies, one file each, selected by name.

Scheduling policies (``--scheduling-policy``) decide order, admission and preemption victims;
TTL policies (``--ttl-policy``) decide how long a program's KV stays pinned between turns.
"""

from pitstop.policies.base import SchedulingPolicy
from pitstop.policies.fcfs import FCFSPolicy
from pitstop.policies.plas import PLASPolicy
from pitstop.policies.priority import PriorityPolicy
from pitstop.policies.program_fcfs import ProgramFCFSPolicy
from pitstop.policies.ttl_base import PinContext, TTLPolicy
from pitstop.policies.ttl_continuum import ContinuumTTL
from pitstop.policies.ttl_fixed import FixedTTL
from pitstop.policies.ttl_none import NoTTL

SCHEDULING_POLICIES: dict[str, type[SchedulingPolicy]] = {
    "fcfs": FCFSPolicy, "program-fcfs": ProgramFCFSPolicy, "plas": PLASPolicy, "priority": PriorityPolicy}
TTL_POLICIES: dict[str, type[TTLPolicy]] = {"none": NoTTL, "fixed": FixedTTL, "continuum": ContinuumTTL}


def get_scheduling_policy(name: str) -> SchedulingPolicy:
    """Build a policy by its ``--scheduling-policy`` name. Raises ValueError for an unknown name."""
    try:
        return SCHEDULING_POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r} (known: {', '.join(SCHEDULING_POLICIES)})") from None


def get_ttl_policy(name: str, ttl_seconds: float | None = None) -> TTLPolicy:
    """Build a TTL policy by its ``--ttl-policy`` name. Raises ValueError for an unknown name."""
    if name not in TTL_POLICIES:
        raise ValueError(f"unknown TTL policy {name!r} (known: {', '.join(TTL_POLICIES)})")
    if name == "fixed":
        return FixedTTL(2.0 if ttl_seconds is None else ttl_seconds)
    if name == "continuum" and ttl_seconds is not None:
        return ContinuumTTL(max_ttl_s=ttl_seconds)
    return TTL_POLICIES[name]()


__all__ = ["SchedulingPolicy", "TTLPolicy", "PinContext", "get_scheduling_policy", "get_ttl_policy",
           "SCHEDULING_POLICIES", "TTL_POLICIES"]
