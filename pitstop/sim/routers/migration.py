"""When to move a waiting program's pinned KV to another replica (Llumnix: Sun et al., "Llumnix: Dynamic
Scheduling for Large Language Model Serving", OSDI'24 -- live migration of requests between instances to balance
load; here the unit is an agent program between turns, whose pinned context would otherwise be re-prefilled
where its next turn lands).

One policy, two drivers: the cluster simulator asks it after every step (``pitstop.sim.cluster``), the Ray Serve
ingress every ``period_s`` seconds (``pitstop.server.ray.migration``). Given each replica's load (outstanding
requests), free KV blocks and waiting pinned programs, it moves at most one program per decision: from the most
loaded replica to the least loaded one when ``load_hi - load_lo > load_abs_threshold`` and ``load_hi >
load_rel_threshold * load_lo``, choosing the program with the most pinned blocks that fits in the target's free
blocks (the largest re-prefill avoided).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class ReplicaMigrationView:
    """What the policy reads about one replica.

    Attributes:
        index: the replica's router index. load: outstanding requests. free_blocks: KV blocks allocatable now.
        programs: ``(program id, pinned blocks)`` of its programs between turns holding a pin.
    """

    index: int
    load: int
    free_blocks: int
    programs: Sequence[tuple[str, int]] = ()


@dataclass
class MigrationDecision:
    """Move ``program_id`` (``num_blocks`` pinned blocks) from replica ``src`` to ``dst`` (router indexes)."""

    program_id: str
    src: int
    dst: int
    num_blocks: int


@dataclass
class MigrationPolicy:
    """Llumnix-style load-balancing migration of waiting programs' pins.

    Attributes:
        load_abs_threshold / load_rel_threshold: the imbalance that triggers a move (see the module docstring).
        min_blocks: smallest pin worth moving (blocks).
        period_s: seconds between decisions of a live deployment (the simulator decides after every step).
    """

    load_abs_threshold: int = 2
    load_rel_threshold: float = 1.5
    min_blocks: int = 1
    period_s: float = 1.0

    def choose(self, replicas: Sequence[ReplicaMigrationView]) -> MigrationDecision | None:
        """The move to make now, or None."""
        if len(replicas) < 2:
            return None
        hi = max(replicas, key=lambda r: (r.load, -r.index))
        lo = min(replicas, key=lambda r: (r.load, r.index))
        if hi.index == lo.index or not (hi.load - lo.load > self.load_abs_threshold
                                        and hi.load > self.load_rel_threshold * lo.load):
            return None
        fits = [(pid, n) for pid, n in hi.programs if self.min_blocks <= n <= lo.free_blocks]
        if not fits:
            return None
        pid, n = max(fits, key=lambda x: (x[1], x[0]))
        return MigrationDecision(pid, hi.index, lo.index, n)
