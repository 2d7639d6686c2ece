"""OpenAI error bodies and the exception handlers that produce them.

Body shape (OpenAI API reference, "Error codes"): ``{"error": {"message", "type", "param", "code"}}``.
Status codes: 400 invalid request (bad JSON, wrong types, bad values, unknown model, prompt too long),
401 missing or wrong API key, 413 body too large, 429 admission queue full or too many programs (with
``Retry-After``), 500 engine failure (the cause goes to the server log; bodies carry no tracebacks or
paths), 503 server shutting down.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("pitstop.server")


class APIError(Exception):
    """An error that becomes an OpenAI error response.

    Args:
        status: HTTP status code.
        message: human-readable explanation.
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``, ...).
        param: the offending request field, if any.
        code: machine-readable code (``model_not_found``, ``context_length_exceeded``, ...).
        headers: extra response headers (``Retry-After`` for 429).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def from_value_error(err: ValueError) -> APIError:
    """A 400 from an engine/SamplingParams ``ValueError``; the field name is taken from the message."""
    msg = str(err)
    m = re.match(r"SamplingParams\.(\w+)", msg)
    if m:
        return bad_request(msg, param=m.group(1))
    if "max_model_len" in msg:
        return bad_request(msg, param="prompt", code="context_length_exceeded")
    if msg.startswith("structured_outputs:"):  # the engine could not compile the request's grammar (in time)
        return bad_request(msg, param="structured_outputs", code="invalid_grammar")
    return bad_request(msg)


def field_error(err: ValueError) -> APIError:
    """A 400 whose ``param`` is the field a ``pitstop.tools`` / protocol message starts with (``tools.0.x: ...``)."""
    msg = str(err)
    head = msg.split(":", 1)[0]
    if head and " " not in head and ":" in msg:
        return bad_request(msg, param=head)
    return from_value_error(err)


_ROLE_TAGS = frozenset({"system", "developer", "user", "assistant", "tool"})


def _loc(loc: tuple) -> str:
    """A field path from pydantic's ``loc``, without ``body`` and the tags pydantic adds inside unions (a
    message's role after its index, ``str`` / ``list[...]`` for the union member tried)."""
    out: list[str] = []
    for i, x in enumerate(loc):
        if x == "body" or (isinstance(x, str) and (x == "str" or x.startswith("list["))):
            continue
        if x in _ROLE_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(str(x))
    return ".".join(out) or "body"


def install_handlers(app: FastAPI) -> None:
    """Map validation errors (invalid JSON, wrong types) to 400 and every error to OpenAI's body."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return bad_request(f"invalid JSON body: {first.get('msg', '')}", code="invalid_json").response()
        parts = [f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errs[:5]]
        param = _loc(tuple(first.get("loc", ()))) if first else None
        return bad_request("; ".join(parts) or "invalid request", param=param).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)  # the cause goes to the log, never to the client
        return JSONResponse(error_body("internal server error; see the server log", "server_error", None,
                                       "internal_error"), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
        return JSONResponse(error_body(str(exc.detail or phrase), "invalid_request_error", None, exc.status_code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
