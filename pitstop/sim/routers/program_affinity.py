"""Program affinity: every turn of an agent program goes to the replica of its first turn, so the program's
growing context stays in one KV cache (and in its pins, with a TTL policy) -- unless that replica is overloaded
or gone. (Continuum and Autellix schedule at program level on one engine; this is the cluster-level counterpart.
The load rule is SGLang's cache-aware router's imbalance test; the fallback is prefix affinity.)

* A program's next turn goes to its home replica while the home is not overloaded: ``home_load - min_load >
  load_abs_threshold`` and ``home_load > load_rel_threshold * min_load`` (load = outstanding requests).
* An overloaded or vanished home: the turn goes to the replica (other than an overloaded home) with the longest
  cached prefix of the prompt (the approximate or exact prefix index, as prefix-affinity), ties to the least
  loaded; that replica becomes the program's home. ``num_moves`` counts these moves (``moves_by_reason``:
  ``overloaded`` / ``gone``); ``last_move`` is the latest ``(program, from index, to index, reason)``.
* First turns and lone requests go to the least-loaded replica.
"""

from __future__ import annotations

from typing import Sequence

from pitstop.sim.routers.base import PrefixIndexedRouter, ReplicaLoad, RouteRequest, least_loaded


class ProgramAffinityRouter(PrefixIndexedRouter):
    name = "program-affinity"

    def __init__(self, load_abs_threshold: int = 4, load_rel_threshold: float = 2.0, index: str = "approx") -> None:
        super().__init__(index)
        self.load_abs_threshold = load_abs_threshold
        self.load_rel_threshold = load_rel_threshold
        self.home: dict[str, int] = {}
        self.num_moves = 0
        self.moves_by_reason: dict[str, int] = {"overloaded": 0, "gone": 0}
        self.last_move: tuple[str, int, int, str] | None = None

    def reset(self, num_replicas: int) -> None:
        super().reset(num_replicas)
        self.home = {}
        self.num_moves = 0
        self.moves_by_reason = {"overloaded": 0, "gone": 0}
        self.last_move = None

    def overloaded(self, pos: int, replicas: Sequence[ReplicaLoad]) -> bool:
        """The replica at ``pos`` carries more than the thresholds allow over the least-loaded one."""
        lo = min(r.outstanding_requests for r in replicas)
        load = replicas[pos].outstanding_requests
        return load - lo > self.load_abs_threshold and load > self.load_rel_threshold * lo

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        pid = req.program_id
        home = self.home.get(pid) if pid is not None else None
        if home is None:
            return least_loaded(replicas)
        pos = next((p for p, r in enumerate(replicas) if r.index == home), None)
        if pos is not None and (len(replicas) == 1 or not self.overloaded(pos, replicas)):
            return pos
        among = [p for p in range(len(replicas)) if p != pos]
        cached = self.cached_tokens(req, replicas)
        best = max(cached[p] for p in among)
        chosen = least_loaded(replicas, [p for p in among if cached[p] == best])
        reason = "gone" if pos is None else "overloaded"
        self.num_moves += 1
        self.moves_by_reason[reason] += 1
        self.last_move = (pid, home, replicas[chosen].index, reason)
        self.home[pid] = replicas[chosen].index
        return chosen

    def on_routed(self, req: RouteRequest, index: int, now: float) -> None:
        super().on_routed(req, index, now)
        if req.program_id is not None:
            self.home.setdefault(req.program_id, index)

    def set_home(self, program_id: str, index: int) -> None:
        """The program's KV now lives on replica ``index`` (it was migrated there): its next turns go there."""
        self.home[program_id] = index

    def forget(self, program_id: str) -> None:
        """Drop a finished program."""
        self.home.pop(program_id, None)
