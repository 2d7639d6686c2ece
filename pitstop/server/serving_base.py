"""What completions and chat completions share: model check, validation, admission, usage, logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pitstop.outputs import Logprob, RequestOutput
from pitstop.sampling_params import SamplingParams, StructuredOutputsParams
from pitstop.engine.program_manager import TooManyPrograms
from pitstop.server.async_engine import AsyncEngine, CompletionDelta, EngineDead, QueueFull, RequestHandle
from pitstop.server.errors import APIError, bad_request, from_value_error
from pitstop.server.limits import RequestLimits
from pitstop.server.tenants import scoped_program, scoped_salt
from pitstop.server.metrics import ServerMetrics
from pitstop.server.protocol import _SamplingRequest

RETRY_AFTER_S = 1
"""Seconds a 429 asks the client to wait (``Retry-After``)."""


@dataclass
class Tagged:
    """An update of sub-request ``prompt_index`` (completions may carry several prompts)."""

    prompt_index: int
    deltas: list[CompletionDelta]
    output: RequestOutput | None


class ServingBase:
    """Shared request handling.

    Args:
        engine: the async engine.
        model_names: names accepted in the ``model`` field (the first is reported).
        metrics: the server's metrics.
    """

    def __init__(self, engine: AsyncEngine, model_names: list[str], metrics: ServerMetrics,
                 limits: RequestLimits | None = None, cache_isolation: str = "none") -> None:
        self.engine = engine
        self.limits = limits or RequestLimits()
        self.cache_isolation = cache_isolation
        self.model_names = model_names
        self.metrics = metrics
        self.tokenizer = engine.engine.tokenizer
        self.max_model_len = engine.engine.max_model_len

    def check_model(self, model: str | None) -> str:
        if model is None or model in self.model_names:
            return self.model_names[0]
        raise APIError(400, f"The model `{model}` does not exist; this server serves {self.model_names}.",
                       "invalid_request_error", "model", "model_not_found")

    @staticmethod
    @contextmanager
    def stream_errors() -> Iterator[None]:
        """Map errors posted on a request's stream to API errors: 400 (ValueError), 429 (too many
        programs), 503, 500."""
        try:
            yield
        except ValueError as e:
            raise from_value_error(e) from None
        except TooManyPrograms as e:
            raise APIError(429, f"{e}; retry later or end programs (DELETE /v1/programs/{{id}})",
                           "rate_limit_exceeded", "program_id", "too_many_programs",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineDead as e:
            raise APIError(503, str(e), "server_error", None, "unavailable") from None
        except RuntimeError:
            # the cause is in the server log (logged where it happened); the body names no paths
            raise APIError(500, "internal error while running the request; see the server log",
                           "server_error") from None

    def check_common(self, req: _SamplingRequest) -> None:
        """400 for a field over its limit (``RequestLimits``) or an unsupported one."""
        chat = hasattr(req, "top_logprobs")
        logprobs = req.top_logprobs if chat else req.logprobs
        self.limits.check(req, logprobs, _asked_max_tokens(req) if _explicit_max_tokens(req) else None)
        if req.logit_bias:
            raise bad_request("logit_bias is not supported by this server", param="logit_bias")

    def max_tokens(self, req: _SamplingRequest) -> int | None:
        """Tokens to generate: what the request asked for; a default (not asked) is capped by
        ``--max-tokens-limit``, which is also the default where the request has none."""
        asked, limit = _asked_max_tokens(req), self.limits.max_tokens
        if limit is None or asked is None:
            return asked if limit is None else limit
        return asked if _explicit_max_tokens(req) else min(asked, limit)

    def sampling_params(self, req: _SamplingRequest, max_tokens: int | None, logprobs: int | None,
                        structured: StructuredOutputsParams | None = None) -> SamplingParams:
        try:
            return req.sampling_params(max_tokens, logprobs, structured)
        except ValueError as e:
            raise from_value_error(e) from None

    def check_prompt(self, ids: list[int], max_tokens: int | None, param: str = "prompt") -> None:
        """400 for an empty / too long / out-of-vocab prompt, or prompt + max_tokens over the context."""
        try:
            self.engine.engine.validate_prompt(ids)
        except ValueError as e:
            err = from_value_error(e)
            err.param = param
            raise err from None
        if max_tokens is not None and len(ids) + max_tokens > self.max_model_len:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                                f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
                                f"{max_tokens} for the completion). Reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")

    def admit(self, request_id: str, prompts: list[list[int]], params: SamplingParams,
              req: _SamplingRequest, tenant: str | None = None,
              is_last_turn: bool | None = None) -> list[RequestHandle]:
        """Add one engine request per prompt, all or none (429 when the queue is full); the program and
        cache salt are scoped to ``tenant`` (``pitstop.server.tenants``); ``is_last_turn`` (when not None)
        overrides the body's."""
        try:
            self.engine.check_admission(len(prompts))
        except QueueFull as e:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(429, f"server overloaded: {e}; retry later", "rate_limit_exceeded", None,
                           "queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineDead as e:
            raise APIError(503, str(e), "server_error", None, "unavailable") from None
        program = req.program_kwargs()
        program["program_id"] = scoped_program(tenant, program["program_id"])
        if is_last_turn is not None:
            program["is_last_turn"] = is_last_turn
        salt = scoped_salt(tenant, req.cache_salt, self.cache_isolation)
        return [self.engine.add_request(request_id if len(prompts) == 1 else f"{request_id}-p{i}", ids, params,
                                        priority=req.priority, cache_salt=salt, **program)
                for i, ids in enumerate(prompts)]

    @staticmethod
    async def merged(handles: list[RequestHandle]) -> AsyncIterator[Tagged]:
        """Updates of several requests interleaved as they come; raises the first error."""
        if len(handles) == 1:
            async for u in handles[0].updates():
                yield Tagged(0, u.deltas, u.output)
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, h: RequestHandle) -> None:
            try:
                async for u in h.updates():
                    await queue.put(Tagged(i, u.deltas, u.output))
            except BaseException as e:  # noqa: BLE001 - forwarded
                await queue.put(e)
            finally:
                await queue.put(None)

        tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    def usage(self, outputs: list[RequestOutput]) -> dict:
        prompt = sum(len(o.prompt_token_ids) for o in outputs)
        completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        cached = sum(o.num_cached_tokens for o in outputs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def chat_logprobs(self, token_ids: list[int], lps: list[dict[int, Logprob]] | None, top: int) -> dict | None:
        """OpenAI chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
        if lps is None:
            return None
        content = []
        for tid, entry in zip(token_ids, lps):
            tok = self.token_text(tid)
            lp = entry.get(tid)
            ranked = sorted(entry.items(), key=lambda kv: (kv[1].rank or 1 << 30, -kv[1].logprob))[:top]
            content.append({"token": tok, "logprob": max(lp.logprob, -9999.0) if lp else -9999.0,
                            "bytes": list(tok.encode()),
                            "top_logprobs": [{"token": (t := self.token_text(i)), "logprob": max(v.logprob, -9999.0),
                                              "bytes": list(t.encode())} for i, v in ranked]})
        return {"content": content}

    def completion_logprobs(self, token_ids: list[int], lps: list[dict[int, Logprob]] | None, top: int,
                            offset: int) -> dict | None:
        """OpenAI legacy ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset."""
        if lps is None:
            return None
        tokens, token_lps, tops, offsets = [], [], [], []
        for tid, entry in zip(token_ids, lps):
            tok = self.token_text(tid)
            lp = entry.get(tid)
            ranked = sorted(entry.items(), key=lambda kv: (kv[1].rank or 1 << 30, -kv[1].logprob))[:top]
            tokens.append(tok)
            token_lps.append(lp.logprob if lp else None)
            tops.append({self.token_text(i): v.logprob for i, v in ranked} if top else None)
            offsets.append(offset)
            offset += len(tok)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _asked_max_tokens(req: _SamplingRequest) -> int | None:
    """``max_completion_tokens`` (chat) or ``max_tokens``, as the body gives them (with their defaults)."""
    newer = getattr(req, "max_completion_tokens", None)
    return newer if newer is not None else req.max_tokens


def _explicit_max_tokens(req: _SamplingRequest) -> bool:
    """The body itself gave a (non-null) ``max_tokens`` or ``max_completion_tokens``."""
    return any(getattr(req, f, None) is not None for f in ("max_tokens", "max_completion_tokens")
               if f in req.model_fields_set)
