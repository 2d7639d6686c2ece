"""The FastAPI app: routes, API-key check, HTTP metrics, engine thread lifecycle.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /metrics`` (Prometheus text), and with ``debug_endpoints`` ``GET /debug/kv`` (KV accounting,
checked in the engine thread between steps; used by the tests).
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pitstop.engine.llm_engine import LLMEngine
from pitstop.server.async_engine import AsyncEngine
from pitstop.server.errors import APIError, error_body, install_handlers
from pitstop.server.metrics import ServerMetrics
from pitstop.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, ToolResult
from pitstop.server.serving_chat import ServingChat
from pitstop.server.serving_completions import ServingCompletions

_OPEN_PATHS = {"/health", "/metrics"}


class _AuthAndMetrics:
    """ASGI middleware: 401 without ``Authorization: Bearer <api_key>`` on /v1 and /debug routes (when a
    key is set), and a count of responses by endpoint and status code."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: ServerMetrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                    "/metrics", "/debug/kv") else "other"
        if self.api_key and path not in _OPEN_PATHS and scope.get("method") != "OPTIONS":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
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

        await self.app(scope, receive, send_wrapper)


def create_app(engine: LLMEngine, model_names: list[str], api_key: str | None = None, max_queue: int = 256,
               debug_endpoints: bool = False) -> FastAPI:
    """Build the app around a loaded engine. The engine thread starts and stops with the app's lifespan.

    Args:
        engine: a built ``LLMEngine``.
        model_names: names accepted in requests' ``model`` field; the first is listed by /v1/models.
        api_key: if set, /v1/* and /debug/* need ``Authorization: Bearer <api_key>``.
        max_queue: requests allowed to wait beyond ``max_num_seqs`` before 429.
        debug_endpoints: expose ``GET /debug/kv``.
    """
    holder: dict = {}

    def stats() -> dict:
        return holder["engine"].stats if "engine" in holder else {}

    metrics = ServerMetrics(stats)
    async_engine = AsyncEngine(engine, max_queue=max_queue, on_finish=metrics.on_finish)
    holder["engine"] = async_engine
    completions = ServingCompletions(async_engine, model_names, metrics)
    chat = ServingChat(async_engine, model_names, metrics)

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
    app.add_middleware(_AuthAndMetrics, api_key=api_key, metrics=metrics)

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
    async def tool_result(program_id: str, body: ToolResult) -> dict:
        if not (body.duration_s >= 0 and body.duration_s != float("inf")):
            raise APIError(400, f"duration_s must be a finite number >= 0, got {body.duration_s}",
                           "invalid_request_error", "duration_s", "invalid_value")
        await async_engine.call(lambda e: e.report_tool_result(program_id, body.tool_name, body.duration_s))
        return {"program_id": program_id, "tool_name": body.tool_name, "duration_s": body.duration_s}

    @app.delete("/v1/programs/{program_id}")
    async def end_program(program_id: str) -> dict:
        found = await async_engine.call(lambda e: e.end_program(program_id))
        if not found:
            raise APIError(404, f"no live program {program_id!r}", "invalid_request_error", "program_id",
                           "program_not_found")
        return {"id": program_id, "object": "program", "deleted": True}

    @app.get("/v1/programs/{program_id}")
    async def program_stats(program_id: str) -> dict:
        stats = await async_engine.call(lambda e: e.program_stats(program_id))
        if stats is None:
            raise APIError(404, f"no live program {program_id!r}", "invalid_request_error", "program_id",
                           "program_not_found")
        return {"id": program_id, "object": "program", **stats}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if debug_endpoints:
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
                        "num_programs": len(sched.programs.programs)}
            return await async_engine.call(inspect)

    return app
