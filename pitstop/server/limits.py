"""Per-request limits of the OpenAI server: each breach is a 400 (413 for the body) naming the limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pitstop.server.errors import APIError, bad_request


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what one request may ask for (``pitstop serve`` flags of the same names).

    Attributes:
        max_request_bytes: request body size (bytes); over it: 413.
        max_n: completions per request (``n``).
        max_logprobs: ``logprobs`` (completions) and ``top_logprobs`` (chat); OpenAI allows 0-20.
        max_stop: stop strings per request. max_stop_chars: characters of one stop string.
        max_logit_bias: entries of ``logit_bias``.
        max_tokens: the most tokens one request may ask to generate, and the default of a chat request
            that names none (None: up to the context length).
    """

    max_request_bytes: int = 8 * 2**20
    max_n: int = 16
    max_logprobs: int = 20
    max_stop: int = 16
    max_stop_chars: int = 1024
    max_logit_bias: int = 300
    max_tokens: int | None = None

    def check(self, req, logprobs: int | None, max_tokens: int | None) -> None:
        """Raise a 400 ``APIError`` naming the first field over its limit (``req``: a completion or chat body)."""
        self._at_most("n", req.n, self.max_n, "--max-n")
        param = "top_logprobs" if hasattr(req, "top_logprobs") else "logprobs"
        if logprobs is not None:
            self._at_most(param, logprobs, self.max_logprobs, "--max-logprobs")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        self._at_most("stop", len(stops), self.max_stop, "--max-stop", what="stop strings")
        longest = max((len(s) for s in stops), default=0)
        self._at_most("stop", longest, self.max_stop_chars, "--max-stop-chars", what="characters in a stop string")
        self._at_most("logit_bias", len(req.logit_bias or {}), self.max_logit_bias, "--max-logit-bias",
                      what="logit_bias entries")
        if self.max_tokens is not None and max_tokens is not None:
            self._at_most("max_tokens", max_tokens, self.max_tokens, "--max-tokens-limit")

    @staticmethod
    def _at_most(param: str, value: int, limit: int, flag: str, what: str | None = None) -> None:
        if value > limit:
            raise bad_request(f"{what or param} must be <= {limit} on this server ({flag}), got {value}",
                              param=param, code="limit_exceeded")


def body_too_large(limit: int) -> APIError:
    """The 413 answer for a body over ``limit`` bytes."""
    return APIError(413, f"request body larger than {limit} bytes (--max-request-bytes)",
                    "invalid_request_error", None, "request_too_large")


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None once it exceeds ``limit`` bytes."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
