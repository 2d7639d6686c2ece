"""A Ray Serve ``RequestRouter`` whose choice is made by one of pitstop's routers (``pitstop.sim.routers``: the
same classes the cluster simulator drives).

Per request, the router reads the ``RouteInfo`` the ingress passed as the call's first argument and, by kind:

* ``route``: builds a ``RouteRequest`` (prompt length, prefix keys, program key) and one ``LiveLoad`` per replica
  (replicas sorted by id, so indexes are stable while the set is), asks the pitstop router (``assign``: route then
  record), and remembers the program's replica;
* ``program`` (``GET/DELETE /v1/programs/{id}``, ``tool_result``): the replica that got the program's last turn
  (any replica when none did: it answers 404 as the single server would);
* ``replica``: the ``replica_index``-th replica (the ingress' broadcasts: /health, /metrics, /debug/*).

Replicas get a router index (``LiveLoad.index``) when first seen, kept while they live: a replica that dies and
is replaced gets a new index, so a program whose home is gone is moved (program-affinity's ``gone``) and the
exact prefix index (``index="exact"``) starts the new replica from its first KV-event snapshot. Reports of KV
events ride on the replicas' routing stats (``kv_events``) and are applied before each routing decision.
A program turn moved away from its home is marked in the call's ``RouteInfo`` (``moved``), which the replica
counts (``pitstop_router_program_moves_in``).

Load (``LiveLoad``): ``outstanding_requests`` = max(requests this router sent and not yet completed, the
replica's own ``num_outstanding``); ``outstanding_tokens`` / ``queued_prefill_tokens`` = estimated prompt + output
tokens / prompt tokens of the requests this router sent and not yet completed; ``kv_capacity_tokens`` and the
engine counts (running, waiting, KV usage, pinned blocks) come from the replicas' ``record_routing_stats``
(pushed by Serve every ``request_routing_stats_period_s``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from pitstop.server.ray.routing import KIND_PROGRAM, KIND_REPLICA, KIND_STATE, RouteInfo
from pitstop.sim.routers import RouteRequest, Router, get_router


MAX_PROGRAMS = 100_000  # program -> replica entries kept (LRU)


@dataclass
class LiveLoad:
    """A ``pitstop.sim.routers.ReplicaLoad`` built from live replica state (counts; tokens; ``kv_usage`` 0..1)."""

    index: int
    outstanding_requests: int = 0
    outstanding_tokens: int = 0
    queued_prefill_tokens: int = 0
    kv_capacity_tokens: int = 1 << 30
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    kv_pinned_blocks: int = 0


class PitstopRequestRouter(RequestRouter):
    """Ray Serve request router delegating to a pitstop router (``request_router_kwargs``: ``router``, the
    ``--router`` name, and ``router_kwargs``, its constructor arguments)."""

    def initialize_state(self, router: str = "round-robin", router_kwargs: dict | None = None, **_: Any) -> None:
        """Called by Serve with ``request_router_kwargs``. Raises ValueError for an unknown router name."""
        self.default_router = router
        self.router_kwargs = router_kwargs or {}
        self.routers: dict[str, Router] = {}
        self._router(router)  # fail early on an unknown name
        self.program_home: OrderedDict[str, str] = OrderedDict()  # program key -> replica unique id
        self.inflight: dict[str, tuple[str, int, int]] = {}  # internal request id -> (replica, prompt, total tokens)
        self.slots: dict[str, int] = {}  # replica unique id -> router index (stable while the replica lives)

    def _router(self, name: str | None) -> Router:
        name = name or self.default_router
        r = self.routers.get(name)
        if r is None:
            r = self.routers[name] = get_router(name, **(self.router_kwargs if name == self.default_router else {}))
            r.reset(0)
        return r

    def _slot(self, unique_id: str) -> int:
        slot = self.slots.get(unique_id)
        if slot is None:
            slot = self.slots[unique_id] = len(self.slots)
        return slot

    def _feed_kv_events(self, router: Router, replicas: list[RunningReplica]) -> None:
        """Apply the replicas' KV-event reports to ``router``'s exact index; forget replicas that are gone."""
        index = getattr(router, "kv_index", None)
        if index is None:
            return
        live = set()
        for rep in replicas:
            slot = self._slot(rep.replica_id.unique_id)
            live.add(slot)
            index.apply_report(slot, (rep.routing_stats or {}).get("kv_events"))
        for slot in [s for s in index.replicas if s not in live]:
            index.drop(slot)

    def _loads(self, replicas: list[RunningReplica]) -> list[LiveLoad]:
        loads = []
        for rep in replicas:
            rid = rep.replica_id.unique_id
            mine = [v for v in self.inflight.values() if v[0] == rid]
            st = rep.routing_stats or {}
            loads.append(LiveLoad(
                index=self._slot(rid), outstanding_requests=max(len(mine), int(st.get("num_outstanding", 0))),
                outstanding_tokens=sum(v[2] for v in mine), queued_prefill_tokens=sum(v[1] for v in mine),
                kv_capacity_tokens=int(st.get("kv_capacity_tokens", 1 << 30)),
                num_running=int(st.get("num_running", 0)), num_waiting=int(st.get("num_waiting", 0)),
                kv_usage=float(st.get("kv_usage", 0.0)), kv_pinned_blocks=int(st.get("kv_pinned_blocks", 0))))
        return loads

    async def _select_from_candidate_replicas(self, candidates: list[RunningReplica],
                                              backoff_index: int) -> RunningReplica | None:
        """The replica this router chose, without Serve's queue-length probe: the pitstop router has decided, and
        the engine replicas never reject (``max_ongoing_requests`` is far above what the engine admits; its own
        limits answer 429). Overrides a private ``RequestRouter`` method (Ray 2.60): the probe, an actor call
        per request with a 0.1 s deadline, timed out on a loaded 2-core machine and the routing retried."""
        for r in candidates:
            if r.replica_id in self._replicas:
                return r
        return None

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """One replica for ``pending_request`` (Serve probes it, then sends; on rejection Serve calls again)."""
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # Serve retries without sleeping otherwise
        replicas = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        if not replicas:
            return []
        info = None
        if pending_request is not None and pending_request.args and isinstance(pending_request.args[0], dict):
            info = RouteInfo.from_dict(pending_request.args[0])
        if info is None:  # a call without routing keys
            return [[replicas[0]]]
        by_id = {r.replica_id.unique_id: r for r in replicas}
        if info.kind == KIND_REPLICA:
            if info.home is not None:  # a named replica (migration calls); gone: any, which answers as it can
                return [[by_id.get(info.home, replicas[0])]]
            return [[replicas[info.replica_index % len(replicas)]]]
        if info.kind != KIND_REPLICA and info.home is not None and info.program_key and info.home in by_id:  # the program's KV was migrated
            self.program_home[info.program_key] = info.home
            for name in {info.router or self.default_router, self.default_router}:
                set_home = getattr(self._router(name), "set_home", None)
                if set_home is not None:
                    set_home(info.program_key, self._slot(info.home))
        if info.kind == KIND_STATE:
            router = self._router(info.router)
            self._feed_kv_events(router, replicas)
            pending_request.args[0]["state"] = self.state(router, info, replicas)
            return [[replicas[0]]]
        if info.kind == KIND_PROGRAM:
            home = self.program_home.get(info.program_key) if info.program_key else None
            return [[by_id.get(home, replicas[0])]]
        router = self._router(info.router)
        self._feed_kv_events(router, replicas)
        req = RouteRequest(info.request_id, info.prompt_len, info.output_len, info.prefix_keys, info.block_tokens,
                           info.program_key, info.block_hashes, info.kv_block_tokens)
        now = pending_request.created_at
        moves = getattr(router, "num_moves", 0)
        index = router.assign(req, self._loads(replicas), now)
        if getattr(router, "num_moves", 0) != moves:
            pending_request.args[0]["moved"] = router.last_move[3]  # sent with the call: the replica counts it
        chosen = replicas[index]
        rid = chosen.replica_id.unique_id
        self.inflight[pending_request.metadata.internal_request_id] = (
            rid, info.prompt_len, info.prompt_len + info.output_len)
        if info.program_key:
            self.program_home[info.program_key] = rid
            self.program_home.move_to_end(info.program_key)
            while len(self.program_home) > MAX_PROGRAMS:
                self.program_home.popitem(last=False)
            if info.is_last_turn and hasattr(router, "forget"):
                router.forget(info.program_key)
        return [[chosen]]

    def state(self, router: Router, info: RouteInfo, replicas: list[RunningReplica]) -> dict:
        """What the router knows (``POST /debug/router-state``): per live replica its router index, requests in
        flight, and with the exact index the blocks indexed, whether it waits for a snapshot and how many leading
        blocks of ``info.block_hashes`` it holds; program-affinity's moves."""
        kv = getattr(router, "kv_index", None)
        reps = []
        for rep in replicas:
            uid = rep.replica_id.unique_id
            slot = self._slot(uid)
            row = {"replica_id": uid, "index": slot, "inflight": sum(1 for v in self.inflight.values() if v[0] == uid)}
            if kv is not None:
                entry = kv.replicas.get(slot)
                row.update(kv_index_blocks=kv.num_blocks(slot), stale=entry.stale if entry else True,
                           match_blocks=kv.match(slot, info.block_hashes))
            reps.append(row)
        return {"router": router.name, "index": getattr(router, "index", None), "replicas": reps,
                "num_moves": getattr(router, "num_moves", 0), "moves_by_reason": getattr(router, "moves_by_reason", {}),
                "kv_event_gaps": kv.num_gaps if kv is not None else 0}

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Serve's hook when a request (or stream) to a replica finished: drop it from the in-flight load."""
        self.inflight.pop(internal_request_id, None)
