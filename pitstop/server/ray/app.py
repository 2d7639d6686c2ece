"""Build the Ray Serve application (ingress + engine replicas + pitstop request router) and run it.

``build_app`` binds the deployments; ``serve_forever`` starts (or joins) Ray and Serve, runs the application on
``host:port`` and blocks until SIGINT/SIGTERM, then shuts Serve (and a Ray it started) down.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from pitstop.server.ray.ingress import Ingress
from pitstop.server.ray.replica import EngineReplica
from pitstop.server.ray.request_router import PitstopRequestRouter

APP_NAME = "pitstop"
ROUTING_STATS_PERIOD_S = 0.5  # how often replicas report their live state to the router, seconds
MAX_ONGOING = 100_000  # per replica: never queue in Ray; the replica's own limits answer 429 as the single server


def build_app(engine_config: dict[str, Any], app_kwargs: dict[str, Any], num_replicas: int,
              router: str = "program-affinity", router_kwargs: dict[str, Any] | None = None,
              migration: dict[str, Any] | None = None):
    """The bound application.

    Args:
        engine_config: ``EngineConfig`` keyword arguments, the same for every replica (threads, KV memory...).
        app_kwargs: ``create_app`` keyword arguments (see ``EngineReplica``); ``limits`` as a dict.
        num_replicas: engine replicas (>= 1).
        router: a ``pitstop.sim.routers`` name. router_kwargs: its constructor arguments (JSON-serializable;
            ``{"index": "exact"}`` turns on the replicas' KV events and the ingress' prompt hashing).
        migration: ``pitstop.sim.routers.migration.MigrationPolicy`` arguments: move waiting programs' pinned KV
            between replicas (Llumnix); None: off.

    Raises:
        ValueError / TypeError: an unknown router name or bad router arguments, or ``num_replicas < 1``.
    """
    from pitstop.sim.routers import get_router
    get_router(router, **(router_kwargs or {}))  # an unknown name or bad arguments: ValueError / TypeError now
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    exact = (router_kwargs or {}).get("index") == "exact"
    if migration is not None:
        from pitstop.sim.routers.migration import MigrationPolicy
        MigrationPolicy(**migration)  # bad arguments: TypeError now
    engine_config = dict(engine_config, enable_kv_cache_events=exact)
    engine = serve.deployment(
        EngineReplica, name="PitstopEngine", num_replicas=num_replicas, max_ongoing_requests=MAX_ONGOING,
        ray_actor_options={"num_cpus": 0}, health_check_period_s=5.0, graceful_shutdown_timeout_s=10.0,
        request_router_config=RequestRouterConfig(
            request_router_class=PitstopRequestRouter,
            request_router_kwargs={"router": router, "router_kwargs": router_kwargs or {}},
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S, request_routing_stats_timeout_s=5.0),
    ).bind(engine_config, app_kwargs)
    limits = app_kwargs.get("limits", {})
    from pitstop.server.limits import RequestLimits
    max_bytes = limits.get("max_request_bytes", RequestLimits.max_request_bytes)
    ingress = serve.deployment(serve.ingress()(Ingress), name="PitstopIngress", num_replicas=1,
                               max_ongoing_requests=MAX_ONGOING, ray_actor_options={"num_cpus": 0})
    hasher = None
    if exact:  # the ingress names each prompt's KV blocks as the replicas' engines will
        hasher = {"model": engine_config.get("model", "SmolLM2-135M-Instruct"),
                  "block_size": engine_config.get("block_size", 16),
                  "tool_call_parser": app_kwargs.get("tool_call_parser"), "api_keys": _keys(app_kwargs.get("api_key")),
                  "cache_isolation": app_kwargs.get("cache_isolation", "none")}
    return ingress.bind(engine, num_replicas, max_bytes, bool(app_kwargs.get("debug_endpoints")),
                        _keys(app_kwargs.get("api_key")), hasher, migration)


def _keys(api_key: str | list[str] | None) -> list[str]:
    return [api_key] if isinstance(api_key, str) else list(api_key or [])


def worktree_path() -> str:
    """The folder holding the ``pitstop`` package (put on the Ray workers' PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[3])


def serve_forever(app, host: str, port: int, ray_address: str | None = None, log_level: str = "warning") -> int:
    """Start Ray (a local instance when ``ray_address`` is None; else join ``auto`` or an address), run ``app``
    on ``host:port`` and block until SIGINT/SIGTERM, then remove it (and shut down Serve and Ray when they were
    started here). Returns the exit code (0). On a joined cluster whose Serve already runs, Serve's HTTP options
    (host, port) are the running ones.

    Raises:
        ConnectionError / RuntimeError: Ray or Serve could not start.
    """
    import ray

    path = os.pathsep.join(p for p in (worktree_path(), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PITSTOP_CACHE"):
        if k in os.environ:
            env[k] = os.environ[k]
    ray.init(address=ray_address, runtime_env={"env_vars": env}, include_dashboard=False,
             logging_level=log_level.upper(), log_to_driver=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        print(f"pitstop: serving on http://{host}:{port}/v1 (Ray Serve)", flush=True)
        stop.wait()
    finally:
        try:
            if ray_address is None:
                serve.shutdown()  # the local instance's Serve, then Ray, go with us
            else:
                serve.delete(APP_NAME)  # leave a joined cluster's Serve (and other apps) running
        finally:
            ray.shutdown()
    return 0
