"""The engine deployment: each replica builds its own engine and serves the single-process app around it.

A replica holds one ``LLMEngine`` (its own torch threads and KV cache) and the FastAPI app of
``pitstop.server.app.create_app`` around it -- API keys, limits, program endpoints, metrics and errors are that
app's, unchanged. The ingress forwards each HTTP request as (scope fields, body); ``handle`` drives the app
in-process over ASGI and yields the app's ASGI messages as they come (``http.response.start``, then body parts),
so streamed responses (SSE) stream through. A closed generator (client gone) makes the app's ``receive`` return
``http.disconnect``, which aborts the engine request as in the single server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger(__name__)

REPLICA_HEADER = b"x-pitstop-replica"  # response header: the replica's id
PID_HEADER = b"x-pitstop-replica-pid"  # response header: the replica's process id (fault tests kill it)


def _replica_id() -> str:
    """This replica's Ray Serve id ("local" outside Ray Serve)."""
    try:
        from ray import serve
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a replica (unit use)
        return "local"


class EngineReplica:
    """One pitstop engine behind the single-process app.

    Args:
        engine_config: ``pitstop.config.EngineConfig`` keyword arguments (model, num_threads, kv_cache_memory...).
        app_kwargs: ``create_app`` keyword arguments other than the engine (model_names, api_key, max_queue,
            debug_endpoints, limits as a dict of ``RequestLimits`` fields, cache_isolation, tool_call_parser,
            tool_history).

    Raises:
        pitstop.model.resolve.ModelNotFoundError / ValueError: as ``build_engine`` and ``create_app``.
    """

    def __init__(self, engine_config: dict[str, Any], app_kwargs: dict[str, Any]) -> None:
        from pitstop.config import EngineConfig
        from pitstop.entrypoints.engine_builder import build_engine
        from pitstop.server.app import create_app
        from pitstop.server.limits import RequestLimits

        from pitstop.sim.routers.kv_index import KVEventPublisher

        self.replica_id = _replica_id()
        self.engine = build_engine(EngineConfig(**engine_config), keep_step_history=False)
        self.kv_events = KVEventPublisher() if self.engine.config.enable_kv_cache_events else None
        kwargs = dict(app_kwargs)
        kwargs["limits"] = RequestLimits(**kwargs.get("limits", {}))
        self.died: list[BaseException] = []
        self.app = create_app(self.engine, on_engine_death=self.died.append, **kwargs)
        self.async_engine = self.app.state.async_engine
        self.async_engine.start()  # the app's lifespan startup, run here: the app is driven without a server
        logger.info("pitstop replica %s: KV blocks=%d", self.replica_id, self.engine.kv_manager.num_blocks)

    async def handle(self, route: dict, request: dict) -> AsyncIterator[dict]:
        """Serve one HTTP request through the app; yields its ASGI send messages.

        Args:
            route: the ``RouteInfo`` dict (read by the request router; its ``moved`` is counted here).
            request: ``method``, ``path``, ``query_string`` (bytes), ``headers`` (list of (bytes, bytes)),
                ``body`` (bytes).
        """
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request["method"],
                 "scheme": "http", "path": request["path"], "raw_path": request["path"].encode(),
                 "query_string": request.get("query_string", b""), "root_path": "",
                 "headers": [(bytes(k), bytes(v)) for k, v in request.get("headers", [])],
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
        if route.get("kind") == "state":  # the request router's state, written into the call (debug)
            body = json.dumps(route.get("state")).encode()
            yield {"type": "http.response.start", "status": 200,
                   "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
            yield {"type": "http.response.body", "body": body, "more_body": False}
            return
        if route.get("moved"):
            self.app.state.metrics.program_moves_in.labels(route["moved"]).inc()
        out: asyncio.Queue = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.get("body", b""), "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", []))
                               + [(REPLICA_HEADER, self.replica_id.encode()), (PID_HEADER, str(os.getpid()).encode())])
            await out.put(message)

        async def run_app() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                await out.put(None)

        task = asyncio.ensure_future(run_app())
        try:
            while True:
                message = await out.get()
                if message is None:
                    break
                yield message
            await task  # re-raise the app's error, if any
        finally:
            gone.set()
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
                except (asyncio.TimeoutError, Exception):
                    task.cancel()

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve's routing-stats hook: this replica's live engine state for the request router (counts;
        ``kv_capacity_tokens`` in tokens; ``kv_usage`` in 0..1; ``kv_events``: a ``KVEventPublisher`` report of the
        prefix cache's events when the engine publishes them)."""
        s = self.async_engine.stats or {}
        events = None
        if self.kv_events is not None:
            self.kv_events.publish(self.engine.take_kv_events())
            events = self.kv_events.report()
        return {"kv_events": events, "replica_id": self.replica_id, "num_outstanding": self.async_engine.num_outstanding,
                "num_running": s.get("num_running", 0), "num_waiting": s.get("num_waiting", 0),
                "kv_usage": s.get("kv_usage", 0.0), "kv_pinned_blocks": s.get("kv_pinned_blocks", 0),
                "num_programs": s.get("num_programs", 0),
                "kv_capacity_tokens": self.engine.kv_manager.num_blocks * self.engine.config.block_size}

    async def migration_state(self, route: dict) -> dict[str, Any]:
        """Load (outstanding requests), free KV blocks and waiting pinned programs ``[(program id, blocks)]``,
        for the ingress' migration controller."""
        st = await self.async_engine.call(lambda e: {"free_blocks": e.kv_manager.num_free_blocks,
                                                     "programs": e.waiting_programs()})
        return dict(st, replica_id=self.replica_id, load=self.async_engine.num_outstanding)

    async def export_program(self, route: dict, program_id: str):
        """``LLMEngine.export_program_kv`` on the engine thread (None: nothing to move)."""
        return await self.async_engine.call(lambda e: e.export_program_kv(program_id))

    async def import_program(self, route: dict, kv) -> dict[str, int]:
        """``LLMEngine.import_program_kv`` of an exported program (``kv`` resolved from Ray's object store):
        ``{"blocks": pinned here, "bytes": K/V bytes received}``."""
        if kv is None:
            return {"blocks": 0, "bytes": 0}
        n = await self.async_engine.call(lambda e: e.import_program_kv(kv))
        return {"blocks": n, "bytes": kv.num_bytes if n else 0}

    async def end_program(self, route: dict, program_id: str) -> bool:
        """``LLMEngine.end_program`` (the source's pin after a migration)."""
        return await self.async_engine.call(lambda e: e.end_program(program_id))

    def check_health(self) -> None:
        """Ray Serve's health hook. Raises RuntimeError once the engine thread died (Serve replaces the replica)."""
        if self.died:
            raise RuntimeError(f"engine thread died: {self.died[0]!r}")

    def __del__(self) -> None:
        engine = getattr(self, "async_engine", None)
        if engine is not None:
            engine.shutdown()
