"""The FastAPI app: routes, API-key check, HTTP metrics, engine thread lifecycle.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /metrics`` (Prometheus text), and with ``debug_endpoints`` ``GET /debug/kv`` (KV accounting,
checked in the engine thread between steps; used by the tests) and ``GET /debug/memory`` (RSS, live objects).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pitstop.engine.llm_engine import LLMEngine
from pitstop.server.async_engine import AsyncEngine
from pitstop.server.debug_memory import memory_report
from pitstop.server.errors import APIError, error_body, install_handlers
from pitstop.server.limits import RequestLimits, body_too_large, read_body
from pitstop.server.metrics import ServerMetrics
from pitstop.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, ToolResult
from pitstop.server.serving_chat import ServingChat
from pitstop.server.serving_completions import ServingCompletions
from pitstop.server.tenants import CACHE_ISOLATION, request_tenant, scoped_program, tenant_of

_OPEN_PATHS = {"/health", "/metrics"}


class _AuthAndMetrics:
    """ASGI middleware: 401 without ``Authorization: Bearer <api_key>`` on /v1 and /debug routes (when a
    key is set), and a count of responses by endpoint and status code."""

    def __init__(self, app: ASGIApp, api_keys: list[str], metrics: ServerMetrics,
                 max_request_bytes: int = RequestLimits.max_request_bytes) -> None:
        self.app, self.api_keys, self.metrics = app, api_keys, metrics
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                    "/metrics", "/debug/kv") else "other"
        if self.api_keys and path not in _OPEN_PATHS and scope.get("method") != "OPTIONS":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            tenant = tenant_of(token, self.api_keys)
            scope.setdefault("state", {})["tenant"] = tenant
            if tenant is None:
                self.metrics.http_requests.labels(endpoint, "401").inc()
                msg = "missing API key" if not token else "invalid API key"
                resp = JSONResponse(error_body(f"{msg}: send 'Authorization: Bearer <key>'",
                                               "authentication_error", None, "invalid_api_key"), status_code=401)
                await resp(scope, receive, send)
                return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        bounded = await self._bounded_receive(scope, receive)
        if bounded is None:
            await body_too_large(self.max_request_bytes).response()(scope, receive, send_wrapper)
            return
        await self.app(scope, bounded, send_wrapper)

    async def _bounded_receive(self, scope: Scope, receive: Receive) -> Receive | None:
        """``receive`` for a body within ``max_request_bytes``, or None (answer 413). A body without
        Content-Length (chunked) is read here up to the limit and replayed to the app."""
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit():
            return receive if int(declared) <= self.max_request_bytes else None
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return receive
        body = await read_body(receive, self.max_request_bytes)
        if body is None:
            return None
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replaying() -> Message:
            return replay.pop() if replay else await receive()
        return replaying


def create_app(engine: LLMEngine, model_names: list[str], api_key: str | list[str] | None = None,
               max_queue: int = 256, debug_endpoints: bool = False, limits: RequestLimits | None = None,
               cache_isolation: str = "none", on_engine_death: Callable[[BaseException], None] | None = None,
               tool_call_parser: str | None = None, tool_history: str = "generated") -> FastAPI:
    """Build the app around a loaded engine. The engine thread starts and stops with the app's lifespan.

    Args:
        engine: a built ``LLMEngine``.
        model_names: names accepted in requests' ``model`` field; the first is listed by /v1/models.
        api_key: one key or several (one per tenant); if set, /v1/* and /debug/* need
            ``Authorization: Bearer <key>``, and programs are scoped per key (``pitstop.server.tenants``).
        max_queue: requests allowed to wait beyond ``max_num_seqs`` before 429.
        debug_endpoints: expose ``GET /debug/kv``, and for tests ``POST /debug/fault`` (fault injection) and
            ``POST /debug/engine`` (pause the engine between steps, or give each step a minimum duration).
        limits: per-request bounds (body size, n, logprobs, stop, logit_bias, max_tokens).
        cache_isolation: ``none`` or ``per-key`` (tenants never share prefix-cache blocks).
        on_engine_death: called (in the engine thread) if the engine thread dies.
        tool_call_parser: ``hermes``, ``llama3_json`` or ``pythonic`` (None: inferred from the chat template).
        tool_history: how an assistant message with ``tool_calls`` this server returned is rendered when it comes
            back in a later request: ``generated`` (the text the model generated, so the previous turn's KV cache
            is reused to its end; ``pitstop.tools.raw_turns``) or ``template`` (the chat template's rendering).

    Raises:
        ValueError: an unknown ``cache_isolation``, ``tool_call_parser`` or ``tool_history``.
    """
    limits = limits or RequestLimits()
    if cache_isolation not in CACHE_ISOLATION:
        raise ValueError(f"cache_isolation must be one of {CACHE_ISOLATION}, got {cache_isolation!r}")
    api_keys = [api_key] if isinstance(api_key, str) else list(api_key or [])
    holder: dict = {}

    def stats() -> dict:
        return holder["engine"].stats if "engine" in holder else {}

    metrics = ServerMetrics(stats)
    async_engine = AsyncEngine(engine, max_queue=max_queue, on_finish=metrics.on_finish, on_death=on_engine_death)
    holder["engine"] = async_engine
    completions = ServingCompletions(async_engine, model_names, metrics, limits, cache_isolation)
    chat = ServingChat(async_engine, model_names, metrics, limits, cache_isolation, tool_parser=tool_call_parser,
                       tool_history=tool_history)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        async_engine.start()
        try:
            yield
        finally:
            async_engine.shutdown()

    app = FastAPI(title="pitstop", lifespan=lifespan)
    app.state.async_engine = async_engine
    app.state.metrics = metrics
    install_handlers(app)
    app.add_middleware(_AuthAndMetrics, api_keys=api_keys, metrics=metrics,
                       max_request_bytes=limits.max_request_bytes)

    @app.get("/health")
    async def health() -> Response:
        if not async_engine.is_running:
            return JSONResponse(error_body("engine not running", "server_error"), status_code=503)
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_names[0], root=str(engine.model_dir or model_names[0]),
                                         max_model_len=engine.max_model_len)])

    @app.post("/v1/completions")
    async def create_completion(req: CompletionRequest, raw: Request) -> Response:
        return await completions.create(req, raw)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(req: ChatCompletionRequest, raw: Request) -> Response:
        return await chat.create(req, raw)

    @app.post("/v1/programs/{program_id}/tool_result")
    async def tool_result(program_id: str, body: ToolResult, raw: Request) -> dict:
        if not (body.duration_s >= 0 and body.duration_s != float("inf")):
            raise APIError(400, f"duration_s must be a finite number >= 0, got {body.duration_s}",
                           "invalid_request_error", "duration_s", "invalid_value")
        pid = scoped_program(request_tenant(raw), program_id)
        await async_engine.call(lambda e: e.report_tool_result(pid, body.tool_name, body.duration_s))
        return {"program_id": program_id, "tool_name": body.tool_name, "duration_s": body.duration_s}

    @app.delete("/v1/programs/{program_id}")
    async def end_program(program_id: str, raw: Request) -> dict:
        pid = scoped_program(request_tenant(raw), program_id)
        found = await async_engine.call(lambda e: e.end_program(pid))
        if not found:
            raise APIError(404, f"no live program {program_id!r}", "invalid_request_error", "program_id",
                           "program_not_found")
        return {"id": program_id, "object": "program", "deleted": True}

    @app.get("/v1/programs/{program_id}")
    async def program_stats(program_id: str, raw: Request) -> dict:
        pid = scoped_program(request_tenant(raw), program_id)
        stats = await async_engine.call(lambda e: e.program_stats(pid))
        if stats is None:
            raise APIError(404, f"no live program {program_id!r}", "invalid_request_error", "program_id",
                           "program_not_found")
        return {"id": program_id, "object": "program", **stats}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if debug_endpoints:
        @app.post("/debug/fault")
        async def debug_fault(body: dict) -> dict:
            kind = body.get("kind")
            if kind not in ("step", "thread"):
                raise APIError(400, f"kind must be 'step' or 'thread', got {kind!r}", param="kind")
            async_engine.inject_fault(kind)
            return {"injected": kind}

        @app.post("/debug/engine")
        async def debug_engine(body: dict) -> dict:
            """Test-only engine controls: ``{"paused": bool}``, ``{"step_delay_s": float}``."""
            if "paused" in body:
                async_engine.set_paused(bool(body["paused"]))
            if "step_delay_s" in body:
                async_engine.set_step_delay(float(body["step_delay_s"]))
            await async_engine.call(lambda e: None)  # applied once this returns
            return {k: body[k] for k in ("paused", "step_delay_s") if k in body}

        @app.post("/reset_prefix_cache")
        async def reset_prefix_cache() -> dict:
            """Forget the prefix cache (vLLM's dev-mode endpoint): every cached free block becomes free."""
            return {"blocks_dropped": await async_engine.call(lambda e: e.reset_prefix_cache())}

        @app.get("/debug/memory")
        async def debug_memory(top: int = 25, trim: bool = False) -> dict:
            """RSS, live Python objects by type and tracemalloc sites (``server/debug_memory.py``)."""
            return memory_report(top=max(1, min(top, 200)), trim=trim)

        @app.get("/debug/kv")
        async def debug_kv() -> dict:
            def inspect(eng: LLMEngine) -> dict:
                kv, sched = eng.kv_manager, eng.scheduler
                try:
                    sched.check_kv_accounting()
                    ok, err = True, None
                except AssertionError as e:
                    ok, err = False, str(e) or "assertion failed"
                return {"ok": ok, "error": err, "num_blocks": kv.num_blocks, "num_free_blocks": kv.num_free_blocks,
                        "num_used_blocks": kv.num_blocks - kv.num_free_blocks, "num_running": sched.num_running,
                        "num_waiting": sched.num_waiting, "num_held": len(kv.req_blocks),
                        "num_outstanding": async_engine.num_outstanding,
                        "num_preemptions": sched.num_preemptions, "num_pinned_blocks": kv.num_pinned_blocks,
                        "num_programs": len(sched.programs.programs),
                        "num_grammars": eng.structured_outputs.num_live if eng.structured_outputs is not None else 0}
            return await async_engine.call(inspect)

    return app
