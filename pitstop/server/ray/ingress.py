"""The HTTP front of the Ray Serve application: the paths of ``pitstop.server.app.create_app``, forwarded.

A raw ASGI app (``Ingress.__serve_build_asgi_app__``). Every request's body is read here (bounded by
``max_request_bytes``: 413 as the single server), its routing keys are computed (``routing.route_info``) and it
is sent to one engine replica through a streaming DeploymentHandle call; the replica's ASGI messages are relayed
as they come, so status, headers, bodies and SSE streams are the replica app's own (401, 400, 429... included).

Answered here from every replica: ``GET /health`` (200 when every replica's is; else 503 with each replica's
status), ``GET /metrics`` (each replica's Prometheus text with a ``replica="i"`` label on every sample),
``GET /debug/kv`` (summed counts, ``ok`` when every replica's is, ``replicas``: each live replica's report with its
``replica`` index, ``replica_id`` and process ``pid``, and ``replicas_missing``: configured replicas not running), ``POST /debug/engine`` (to every replica), and with debug endpoints
``POST /debug/router`` (``{"router": NAME}``: the pitstop router used from now on; tests), ``POST
/debug/router-state`` (a completion body: what the request router knows, and with the exact index how many
leading KV blocks of its prompt each replica holds), ``POST /debug/migration`` (change the migration policy's
settings) and ``POST /reset_prefix_cache`` (to every replica). ``/metrics`` adds the migration controller's
counters (no replica label) when migration is on. Replica index ``i`` is
the position in the replicas sorted by Ray Serve id.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from typing import Any

from pitstop.server.limits import body_too_large, read_body
from pitstop.server.tenants import tenant_of
from pitstop.server.ray.routing import (KIND_PROGRAM, KIND_REPLICA, KIND_STATE, RouteInfo, bearer_token, program_key,
                                       route_info)

_GENERATE = ("/v1/completions", "/v1/chat/completions")
_PROGRAMS = "/v1/programs/"
_SUMMED = ("num_blocks", "num_free_blocks", "num_used_blocks", "num_running", "num_waiting", "num_held",
           "num_outstanding", "num_preemptions", "num_pinned_blocks", "num_programs", "num_grammars")


def label_metrics(text: str, index: int) -> list[str]:
    """Prometheus text lines with ``replica="index"`` added to every sample (comment lines unchanged)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            out.append(line)
            continue
        name, _, rest = line.partition(" ")
        if "{" in name:
            base, _, labels = name.partition("{")
            name = f'{base}{{replica="{index}",{labels}'
        else:
            name = f'{name}{{replica="{index}"}}'
        out.append(f"{name} {rest}")
    return out


def merge_metrics(texts: list[str]) -> str:
    """One Prometheus text from the replicas' (``# HELP`` / ``# TYPE`` once per metric)."""
    seen: set[str] = set()
    families: dict[str, list[str]] = {}
    order: list[str] = []
    for index, text in enumerate(texts):
        current = None
        for line in label_metrics(text, index):
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                current = line.split(" ")[2]
                if current not in families:
                    families[current] = []
                    order.append(current)
                if line not in seen:
                    seen.add(line)
                    families[current].append(line)
            elif line and current is not None:
                families[current].append(line)
    return "\n".join(line for name in order for line in families[name]) + "\n"


class Ingress:
    """The ingress deployment.

    Args:
        engine: DeploymentHandle of the ``EngineReplica`` deployment.
        num_replicas: engine replicas (the broadcasts ask this many).
        max_request_bytes: body size limit, bytes (413 over it).
        debug_endpoints: serve ``POST /debug/router``.
        api_keys: keys accepted by ``/debug/router`` (the replicas check every other path themselves).
        hasher: ``PromptHasher`` arguments: compute each generation request's KV block hashes (the router's exact
            index); None: do not.
        migration: ``MigrationPolicy`` arguments: run the migration controller (``migration``); None: do not.
    """

    def __init__(self, engine: Any, num_replicas: int, max_request_bytes: int, debug_endpoints: bool = False,
                 api_keys: list[str] | None = None, hasher: dict | None = None,
                 migration: dict | None = None) -> None:
        self.engine = engine.options(method_name="handle", stream=True)  # one handle: one router
        self.num_replicas = num_replicas
        self.max_request_bytes = max_request_bytes
        self.debug_endpoints = debug_endpoints
        self.api_keys = list(api_keys or [])
        self.router: str | None = None  # /debug/router override
        self.hasher = None
        if hasher is not None:
            from pitstop.server.ray.prompt_hashes import PromptHasher
            self.hasher = PromptHasher(**hasher)
        self.migration = None
        if migration is not None:
            from pitstop.server.ray.migration import MigrationController
            from pitstop.sim.routers.migration import MigrationPolicy
            self.migration = MigrationController(engine, num_replicas, MigrationPolicy(**migration))

    def __serve_build_asgi_app__(self) -> "_ASGI":
        return _ASGI(self.asgi)

    async def asgi(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if self.migration is not None:
            self.migration.start()
        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
        declared = dict(headers).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            body = None
        else:
            body = await read_body(receive, self.max_request_bytes)
        if body is None:
            await body_too_large(self.max_request_bytes).response()(scope, receive, send)
            return
        request = {"method": method, "path": path, "query_string": scope.get("query_string", b""),
                   "headers": [(k, v) for k, v in headers if k.lower() != b"host"], "body": body}
        rid = uuid.uuid4().hex
        if method == "GET" and path in ("/health", "/metrics", "/debug/kv") or (
                method == "POST" and path in ("/debug/engine", "/reset_prefix_cache")):
            await self._broadcast(path, request, send)
            return
        if method == "POST" and path == "/debug/router" and self.debug_endpoints:
            if self.api_keys and bearer_token(headers) not in self.api_keys:
                await _json(send, 401, {"error": {"message": "invalid API key", "type": "authentication_error",
                                                  "param": None, "code": "invalid_api_key"}})
                return
            await self._set_router(body, send)
            return
        if method == "POST" and path == "/debug/router-state" and self.debug_endpoints:
            if self.api_keys and bearer_token(headers) not in self.api_keys:
                await _json(send, 401, {"error": {"message": "invalid API key", "type": "authentication_error",
                                                  "param": None, "code": "invalid_api_key"}})
                return
            info = RouteInfo(kind=KIND_STATE, request_id=rid, router=self.router)
            if self.hasher is not None:  # the body is a completion request: its prompt's blocks are matched
                info.block_hashes = self.hasher.block_hashes("/v1/completions", body, bearer_token(headers))
            await self._relay(info, request, send)
            return
        if method == "POST" and path == "/debug/migration" and self.debug_endpoints:
            await self._configure_migration(headers, body, send)
            return
        token = bearer_token(headers)
        tenant = tenant_of(token, self.api_keys) if token and self.api_keys else None
        if path in _GENERATE and method == "POST":
            info = route_info(path, body, tenant, rid)
            if self.migration is not None and info.program_key:
                info.home = self.migration.homes.pop(info.program_key, None)
            if self.hasher is not None:
                n, info.block_hashes = await asyncio.to_thread(self.hasher.hash_prompt, path, body, token)
                info.prompt_len = n if n is not None else info.prompt_len  # real tokens, not the text estimate
                info.kv_block_tokens = self.hasher.block_size
        elif path.startswith(_PROGRAMS):
            pid = path[len(_PROGRAMS):].split("/", 1)[0]
            info = RouteInfo(kind=KIND_PROGRAM, request_id=rid, program_key=program_key(tenant, pid))
            if self.migration is not None:
                info.home = self.migration.homes.get(info.program_key)
        else:
            info = RouteInfo(request_id=rid)
        info.router = self.router
        await self._relay(info, request, send)

    async def _relay(self, info: RouteInfo, request: dict, send) -> None:
        """Send ``request`` to the replica the router picks and relay its ASGI messages.

        A replica that fails before its response starts (it died; Ray Serve then drops it from the router's
        candidates): the request is sent again, to the replica the router picks now, up to once per replica;
        then 503. One that fails mid-response: a stream (SSE) ends with an ``error`` event and ``[DONE]``, any other
        body ends where it stopped; the client never waits on a dead replica."""
        for attempt in range(max(1, self.num_replicas)):
            started, streaming = False, False
            try:
                async for message in self.engine.remote(info.to_dict(), request):
                    if message["type"] == "http.response.start":
                        started = True
                        ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                        streaming = ctype.startswith(b"text/event-stream")
                    await send(message)
                return
            except Exception as e:  # noqa: BLE001 - the replica died or failed
                error = f"replica failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if not started:
                    if attempt + 1 < max(1, self.num_replicas):
                        continue
                    await _json(send, 503, {"error": {"message": error, "type": "server_error", "param": None,
                                                      "code": "replica_failed"}})
                    return
                tail = b""
                if streaming:
                    event = {"error": {"message": error, "type": "server_error", "param": None,
                                       "code": "replica_failed"}}
                    tail = b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                return

    async def _collect(self, index: int, request: dict) -> tuple[int, dict, bytes]:
        """(status, headers, body) of ``request`` answered by replica ``index``."""
        info = RouteInfo(kind=KIND_REPLICA, request_id=uuid.uuid4().hex, replica_index=index)
        status, hdrs, parts = 500, {}, []
        try:
            async for message in self.engine.remote(info.to_dict(), request):
                if message["type"] == "http.response.start":
                    status = message["status"]
                    hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                elif message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))
        except Exception as e:
            return 503, {}, json.dumps({"error": {"message": f"replica failed: {e}", "type": "server_error"}}).encode()
        return status, hdrs, b"".join(parts)

    async def _broadcast(self, path: str, request: dict, send) -> None:
        # One replica after the other: Ray 2.60 gives concurrent handle calls made while serving one HTTP request
        # the same internal request id, and its router then never fulfils all but one of them.
        answers = [await self._collect(i, request) for i in range(self.num_replicas)]
        seen: set[str] = set()
        for i, (status, hdrs, _) in enumerate(answers):  # fewer live replicas than configured: an index answered
            rid = hdrs.get("x-pitstop-replica")       # twice by one replica stands for a missing one
            if rid is not None and rid in seen:
                answers[i] = (503, {}, json.dumps({"error": {"message": "replica unavailable (restarting?)",
                                                             "type": "server_error"}}).encode())
            elif rid is not None:
                seen.add(rid)
        if path == "/metrics":
            answers = [a for a in answers if a[0] == 200] or answers[:1]
            texts = [body.decode() for status, _, body in answers]
            text = merge_metrics(texts) + (self.migration.metrics_text() if self.migration is not None else "")
            await _send(send, 200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")
            return
        if path == "/health":
            if all(status == 200 for status, _, _ in answers):
                await _send(send, 200, b"", None)
            else:
                await _json(send, 503, {"error": {"message": "a replica is not healthy", "type": "server_error",
                                                  "param": None, "code": None},
                                        "replicas": [{"replica": i, "status": status,
                                                      "replica_id": h.get("x-pitstop-replica")}
                                                     for i, (status, h, _) in enumerate(answers)]})
            return
        missing = sum(1 for a in answers if a[0] == 503)
        answers = [a for a in answers if a[0] != 503] or answers
        bad = next((a for a in answers if a[0] != 200), None)
        if bad is not None:  # 401 and the like: the replica's answer
            await _send(send, bad[0], bad[2], bad[1].get("content-type", "application/json").encode())
            return
        reports = [json.loads(body) for _, _, body in answers]
        if path == "/debug/kv":
            out: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in reports) for k in _SUMMED}
            out["ok"] = all(r.get("ok") for r in reports)
            out["error"] = next((r.get("error") for r in reports if not r.get("ok")), None)
            out["replicas"] = [dict(r, replica=i, replica_id=h.get("x-pitstop-replica"),
                                    pid=int(h.get("x-pitstop-replica-pid", 0)))
                               for i, (r, (_, h, _)) in enumerate(zip(reports, answers))]
            out["replicas_missing"] = missing
            await _json(send, 200, out)
        else:
            await _json(send, 200, reports[0])

    async def _configure_migration(self, headers: list, body: bytes, send) -> None:
        """``POST /debug/migration``: change the migration policy's settings (a JSON object; ``{}`` reads them;
        ``{"move": PROGRAM_ID}`` moves that program's waiting pin to the least loaded other replica now)."""
        if self.api_keys and bearer_token(headers) not in self.api_keys:
            await _json(send, 401, {"error": {"message": "invalid API key", "type": "authentication_error",
                                              "param": None, "code": "invalid_api_key"}})
            return
        if self.migration is None:
            await _json(send, 400, {"error": {"message": "migration is off (pitstop serve --migration-config)",
                                              "type": "invalid_request_error", "param": None, "code": None}})
            return
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            report = self.migration.configure(changes)
            if "move" in changes:  # move this program now (its engine id); "moved": None when it holds no pin
                token = bearer_token(headers)
                tenant = tenant_of(token, self.api_keys) if token and self.api_keys else None
                # in a fresh context: the move's two concurrent handle calls must not share this request's id
                report["moved"] = await asyncio.get_running_loop().create_task(
                    self.migration.move(program_key(tenant, str(changes["move"]))), context=contextvars.Context())
            await _json(send, 200, report)
        except ValueError as e:
            await _json(send, 400, {"error": {"message": str(e), "type": "invalid_request_error", "param": None,
                                              "code": None}})

    async def _set_router(self, body: bytes, send) -> None:
        from pitstop.sim.routers import ROUTERS
        try:
            name = json.loads(body).get("router")
        except (ValueError, AttributeError):
            name = None
        if name is not None and name not in ROUTERS:
            await _json(send, 400, {"error": {"message": f"unknown router {name!r} (known: {', '.join(ROUTERS)})",
                                              "type": "invalid_request_error", "param": "router", "code": None}})
            return
        self.router = name
        await _json(send, 200, {"router": name})


class _ASGI:
    """An ASGI 3 callable around a coroutine function (uvicorn takes a bound method for ASGI 2)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    async def __call__(self, scope: dict, receive, send) -> None:
        await self.fn(scope, receive, send)


async def _send(send, status: int, body: bytes, content_type: bytes | None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send, status: int, obj: Any) -> None:
    await _send(send, status, json.dumps(obj).encode(), b"application/json")
