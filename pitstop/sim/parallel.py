"""Replicas simulated in parallel processes, for routers that read no replica state (round-robin).

When ``Router.reads_replica_state`` is False, where each request goes depends only on the arrival order, never on
what the replicas are doing, so it is fixed before the run (``place``). Replicas share nothing else: each one's
steps depend only on its own requests (its engine is passed the event times explicitly), so a group of replicas
simulated alone, with the same placement, goes through exactly the same steps at exactly the same virtual times
as inside the whole cluster. ``run_in_processes`` forks one process per group of replicas (replica ``i`` in group
``i mod P``), each runs the plain ``Cluster.run`` on its requests, and the parent merges the groups:

- finished requests in the order one process finds them: by the end time of the step that finished them, ties by
  replica index, then in engine order (a stable sort of the groups' lists, which are each in that order);
- counts: events and steps summed, simulated time = the latest group's;
- each replica's reported state (``finished``, ``steps``, step counts, busy time, prefix-cache counters,
  preemptions) copied into the parent's replica objects, so results, plots and traces read them as after
  ``Cluster.run``.

So the result (summary, per-replica rows) is identical to a single-process run, to the last bit
(``tests/test_sim_parallel.py``). Only plain clusters qualify (``partitionable``): no closed-loop injections
(agents), no disaggregation, no ``on_finished`` hook, no ``until_s``. Processes are forked (POSIX), so the
workload's prompt builders are inherited, never pickled; only the results travel back.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass
from typing import Sequence

from pitstop.sim.cluster import Cluster, EngineCounts, FinishedRequest, Replica, SimRequest
from pitstop.sim.routers.base import ReplicaLoad, RouteRequest, Router


@dataclass
class ReplicaRunState:
    """What a run leaves in a replica that results and traces read."""

    index: int
    finished: list[FinishedRequest]
    steps: list[tuple]
    num_steps: int
    busy_s: float
    counts: EngineCounts

    @classmethod
    def of(cls, rep: Replica) -> "ReplicaRunState":
        return cls(rep.index, rep.finished, rep.steps, rep.num_steps, rep.busy_s, rep.engine_counts())

    def apply_to(self, rep: Replica) -> None:
        """Give ``rep`` (a replica of the parent's cluster that did not run) this state; its engine is untouched."""
        rep.finished, rep.steps, rep.num_steps, rep.busy_s = self.finished, self.steps, self.num_steps, self.busy_s
        rep.restore_counts(self.counts)


@dataclass
class GroupResult:
    """One process's run: its finished requests, counts and replicas' states."""

    finished: list[FinishedRequest]
    num_events: int
    sim_time_s: float
    cpu_s: float
    replicas: list[ReplicaRunState]


class PlacedRouter(Router):
    """Routes each request to the replica ``place`` names (the placement of a state-independent router)."""

    name = "placed"
    reads_replica_state = False

    def __init__(self, place: dict[str, int]) -> None:
        self.place = place

    def route(self, req: RouteRequest, replicas: Sequence[ReplicaLoad], now: float) -> int:
        return self.place[req.request_id]


def partitionable(cluster: Cluster) -> bool:
    """True if ``cluster`` may run in groups of replicas: a plain ``Cluster`` (no subclass hooks) whose router
    reads no replica state, with no ``on_admitted`` / ``on_finished`` hook and no injected arrivals."""
    return (type(cluster) is Cluster and not cluster.router.reads_replica_state and cluster.on_finished is None
            and cluster.on_admitted is None and not cluster.has_injected_arrivals)


def place(cluster: Cluster, requests: Sequence[SimRequest]) -> dict[str, int]:
    """Route every request in the order ``Cluster.run`` admits them (by arrival, stable) with the cluster's own
    router, as ``Cluster._admit`` does. Returns request id -> replica index."""
    router, replicas = cluster.router, cluster.replicas
    out: dict[str, int] = {}
    for sreq in sorted(requests, key=lambda r: r.arrival_s):
        rr = sreq.route_request()
        idx = router.assign(rr, replicas, sreq.arrival_s)
        out[sreq.request_id] = idx
    return out


def _run_group(cluster: Cluster, requests: Sequence[SimRequest], placement: dict[str, int], group: set[int],
               conn) -> None:
    """Child process: run ``group``'s requests on the (forked) cluster and send a ``GroupResult`` back."""
    try:
        c0, events0 = time.process_time(), cluster.stats.num_events
        cluster.router = PlacedRouter(placement)
        finished = cluster.run([s for s in requests if placement[s.request_id] in group])
        conn.send(("ok", GroupResult(finished, cluster.stats.num_events - events0, cluster.stats.sim_time_s,
                                     time.process_time() - c0,
                                     [ReplicaRunState.of(cluster.replicas[i]) for i in sorted(group)])))
    except BaseException:  # noqa: BLE001 -- the parent re-raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_in_processes(cluster: Cluster, requests: Sequence[SimRequest], processes: int) -> list[FinishedRequest]:
    """``cluster.run(requests)`` with the replicas split over ``processes`` forked processes (see the module
    docstring); the same finished requests in the same order, and the cluster's replicas, stats, clock and
    ``assignment`` as after ``cluster.run``; ``cluster.stats.process_cpu_s`` gets each process's CPU seconds.

    Raises:
        ValueError: the cluster is not ``partitionable``.
        RuntimeError: a process failed (its traceback in the message).
    """
    if not partitionable(cluster):
        raise ValueError("replicas can run in separate processes only for a plain cluster whose router reads no "
                         "replica state (round-robin)")
    n = len(cluster.replicas)
    processes = max(1, min(processes, n))
    placement = place(cluster, requests)
    ctx = mp.get_context("fork")
    procs, conns = [], []
    for g in range(processes):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_run_group, args=(cluster, requests, placement, set(range(g, n, processes)), send),
                        daemon=True)
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    results, errors = [], []
    for recv in conns:  # receive before join: a large result would block the child's send
        try:
            status, payload = recv.recv()
        except EOFError:
            status, payload = "error", "a simulation process exited without a result"
        (results if status == "ok" else errors).append(payload)
    for p in procs:
        p.join()
    if errors:
        raise RuntimeError("a simulation process failed:\n" + errors[0])
    for res in results:
        for state in res.replicas:
            state.apply_to(cluster.replicas[state.index])
    cluster.assignment.update(placement)
    cluster.stats.num_events += sum(r.num_events for r in results)
    cluster.stats.num_steps = sum(r.num_steps for r in cluster.replicas)
    cluster.stats.sim_time_s = max(r.sim_time_s for r in results)
    cluster.clock.advance_to(cluster.stats.sim_time_s)
    cluster.stats.process_cpu_s = [r.cpu_s for r in results]
    return sorted((f for r in results for f in r.finished), key=lambda f: (f.finish_s, f.replica))
