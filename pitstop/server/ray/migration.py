"""Live migration of waiting programs' pinned KV between engine replicas (Llumnix, OSDI'24), run by the ingress.

Every ``period_s`` seconds the controller asks each replica for its load (outstanding requests), free KV blocks
and waiting pinned programs (``EngineReplica.migration_state``), and asks the ``MigrationPolicy`` shared with
the simulator (``pitstop.sim.routers.migration``) whether to move one. A move: the source exports the program's
pinned blocks (``export_program``: tokens, hash salt, K/V bytes as a numpy array), the result is passed *as a
Ray object reference* to the target's ``import_program`` (Ray's object store carries the bytes from replica to
replica; they never pass through the ingress), the target pins them for the program, the source ends the
program (its pin is released), and the program's next request carries the target as its ``home`` so the request
router sends it there (``RouteInfo.home``). A turn that arrives at the source during the move is served there
(a prefix hit on the pin, or a re-prefill once it is gone); the target's copy then expires on its TTL.

Measured (ingress ``/metrics``, no replica label): ``pitstop_migrations_total``, ``pitstop_migration_blocks_total``,
``pitstop_migration_bytes_total`` and ``pitstop_migration_seconds`` (export start to import done: how long the
program's KV is in flight, the pause its next turn would see if it arrived then).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pitstop.server.ray.routing import KIND_REPLICA, RouteInfo
from pitstop.sim.routers.migration import MigrationDecision, MigrationPolicy, ReplicaMigrationView

log = logging.getLogger(__name__)

MAX_HOMES = 100_000  # program -> new home hints kept until the program's next request


class MigrationController:
    """Args:
        handle: the engine deployment's handle (unary calls by method name).
        num_replicas: configured replicas. policy: when and what to move.
    """

    def __init__(self, handle: Any, num_replicas: int, policy: MigrationPolicy) -> None:
        # one handle per method, made once (each handle has its own Ray Serve router)
        self.handles = {m: handle.options(method_name=m, stream=False)
                        for m in ("migration_state", "export_program", "import_program", "end_program")}
        self.num_replicas = num_replicas
        self.policy = policy
        self.homes: dict[str, str] = {}  # program key -> replica unique id now holding its KV
        self.task: asyncio.Task | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.migrations = Counter("pitstop_migrations", "Waiting programs whose pinned KV moved between replicas.",
                                  registry=r)
        self.blocks = Counter("pitstop_migration_blocks", "KV blocks moved by migrations.", registry=r)
        self.bytes = Counter("pitstop_migration_bytes", "Bytes of K/V moved by migrations.", registry=r)
        self.seconds = Histogram("pitstop_migration_seconds", "Export start to import done of one migration (s).",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.last: dict | None = None
        self.num_migrations = 0

    def start(self) -> None:
        """Start the periodic loop (once; in a fresh context, outside any HTTP request's)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop(), context=contextvars.Context())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.period_s)
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - a replica restarting: try again next period
                log.warning("migration step failed", exc_info=True)

    def _call(self, method: str, replica_id: str | None, *args: Any, index: int = 0):
        info = RouteInfo(kind=KIND_REPLICA, request_id=uuid.uuid4().hex, replica_index=index, home=replica_id)
        return self.handles[method].remote(info.to_dict(), *args)

    async def states(self) -> list[dict]:
        """Each live replica's ``migration_state`` (one per replica id)."""
        out: dict[str, dict] = {}
        for i in range(self.num_replicas):
            st = await self._call("migration_state", None, index=i)
            out.setdefault(st["replica_id"], st)
        return list(out.values())

    async def step(self) -> MigrationDecision | None:
        """One decision, and the move it asks for. Returns the move made, or None."""
        states = await self.states()
        views = [ReplicaMigrationView(i, st["load"], st["free_blocks"], [tuple(p) for p in st["programs"]])
                 for i, st in enumerate(states)]
        d = self.policy.choose(views)
        if d is None:
            return None
        done = await self._move(d.program_id, states[d.src]["replica_id"], states[d.dst]["replica_id"])
        return d if done is not None else None

    async def move(self, program_id: str) -> dict | None:
        """Move ``program_id`` (the engine's id) now, from the replica holding its waiting pin to the least loaded
        other one, whatever the policy says (``POST /debug/migration {"move": ID}``; benchmarks). Returns the
        move's record (``last``), or None when no replica holds a waiting pin of it."""
        states = await self.states()
        src = next((st for st in states if any(p[0] == program_id for p in st["programs"])), None)
        others = [st for st in states if st is not src]
        if src is None or not others:
            return None
        dst = min(others, key=lambda st: st["load"])
        return await self._move(program_id, src["replica_id"], dst["replica_id"])

    async def _move(self, program_id: str, src: str, dst: str) -> dict | None:
        t0 = time.perf_counter()
        exported = self._call("export_program", src, program_id)  # stays in the object store
        res = await self._call("import_program", dst, exported)
        if not res["blocks"]:
            return None
        await self._call("end_program", src, program_id)
        dt = time.perf_counter() - t0
        self.homes[program_id] = dst
        while len(self.homes) > MAX_HOMES:
            self.homes.pop(next(iter(self.homes)))
        self.migrations.inc()
        self.num_migrations += 1
        self.blocks.inc(res["blocks"])
        self.bytes.inc(res["bytes"])
        self.seconds.observe(dt)
        self.last = {"program_id": program_id, "from": src, "to": dst, "blocks": res["blocks"],
                     "bytes": res["bytes"], "seconds": dt}
        log.info("migrated %s", self.last)
        return self.last

    def configure(self, changes: dict) -> dict:
        """Change policy fields (``POST /debug/migration``). Raises ValueError for an unknown field or a bad value."""
        known = asdict(self.policy)
        for k, v in changes.items():
            if k == "move":
                continue
            if k not in known:
                raise ValueError(f"unknown migration setting {k!r} (known: {', '.join(known)})")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{k} must be a number >= 0")
            setattr(self.policy, k, type(known[k])(v))
        return self.report()

    def report(self) -> dict:
        return {"policy": asdict(self.policy), "migrations": self.num_migrations, "last": self.last}

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()
