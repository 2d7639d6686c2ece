"""``POST /v1/chat/completions``: the tokenizer's chat template, then the engine; streaming and not.

The prompt ids are built exactly as ``LLM.chat`` builds them (``apply_chat_template(tokenize=False)``
then ``tokenizer(text, add_special_tokens=False)``), so greedy output through the server equals
``LLM.chat`` for the same messages.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pitstop.outputs import RequestOutput
from pitstop.server.async_engine import EngineDead, RequestHandle
from pitstop.server.errors import bad_request, error_body
from pitstop.server.protocol import ChatCompletionRequest, random_id
from pitstop.server.serving_base import ServingBase
from pitstop.server.sse import SSEResponse, sse, until_disconnect
from pitstop.server.tenants import request_tenant


class ServingChat(ServingBase):
    """Turns a ``ChatCompletionRequest`` into one engine request and OpenAI chat responses."""

    def prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
        conv = []
        for i, m in enumerate(req.messages):
            content = m.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise bad_request(f"messages[{i}].content: only text parts are supported",
                                          param=f"messages.{i}.content")
                    parts.append(part["text"])
                content = "".join(parts)
            conv.append({"role": m.role, "content": content or ""})
        try:
            text = self.tokenizer.apply_chat_template(conv, tokenize=False,
                                                      add_generation_prompt=req.add_generation_prompt,
                                                      **(req.chat_template_kwargs or {}))
        except Exception as e:  # noqa: BLE001 - template errors are the caller's messages
            raise bad_request(f"cannot apply the chat template: {e}", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    async def create(self, req: ChatCompletionRequest, raw: Request) -> Response:
        model = self.check_model(req.model)
        self.check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")
        max_tokens = self.max_tokens(req)
        top = req.top_logprobs or 0
        ids = self.prompt_ids(req)
        self.check_prompt(ids, max_tokens, param="messages")
        params = self.sampling_params(req, max_tokens, top if req.logprobs else None)
        rid = random_id("chatcmpl")
        handles = self.admit(rid, [ids], params, req, request_tenant(raw))
        close = lambda: [h.close() for h in handles]  # noqa: E731
        if req.stream:
            return SSEResponse(self._stream(rid, model, req, handles[0]), on_close=close)
        try:
            out = await until_disconnect(raw, self._collect(handles[0]))
        finally:
            close()
        if out is None:
            return Response(status_code=499)  # client closed the connection
        return JSONResponse(self._body(rid, model, req, out))

    async def _collect(self, handle: RequestHandle) -> RequestOutput:
        out = None
        with self.stream_errors():
            async for u in handle.updates():
                out = u.output or out
        assert out is not None
        return out

    def _body(self, rid: str, model: str, req: ChatCompletionRequest, out: RequestOutput) -> dict:
        top = req.top_logprobs or 0
        choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "logprobs": self.chat_logprobs(c.token_ids, c.logprobs, top) if req.logprobs else None,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason} for c in out.outputs]
        body = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": self.usage([out])}
        if req.return_token_ids:
            body["prompt_token_ids"] = list(out.prompt_token_ids)
            for ch, c in zip(choices, out.outputs):
                ch["token_ids"] = list(c.token_ids)
        return body

    async def _stream(self, rid: str, model: str, req: ChatCompletionRequest,
                      handle: RequestHandle) -> AsyncIterator[str]:
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        top = req.top_logprobs or 0

        def chunk(choices: list[dict], usage: dict | None = None, last: bool = False, **extra: object) -> str:
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **extra}
            if include_usage:
                c["usage"] = usage if last else None
            return sse(c)

        try:
            extra = {"prompt_token_ids": list(handle.prompt_token_ids)} if req.return_token_ids else {}
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(req.n)], **extra)
            out = None
            async for u in handle.updates():
                for d in u.deltas:
                    delta = {"content": d.text} if d.text or d.finish_reason is None else {}
                    lp = self.chat_logprobs(d.token_ids, d.logprobs, top) if req.logprobs else None
                    ch = {"index": d.index, "delta": delta, "logprobs": lp,
                          "finish_reason": d.finish_reason, "stop_reason": d.stop_reason}
                    if req.return_token_ids:
                        ch["token_ids"] = list(d.token_ids)
                    yield chunk([ch])
                out = u.output or out
            if include_usage and out is not None:
                yield chunk([], self.usage([out]), last=True)
        except (ValueError, RuntimeError, EngineDead) as e:
            yield sse(error_body(str(e), "server_error" if not isinstance(e, ValueError)
                                 else "invalid_request_error"))
        yield sse("[DONE]")
