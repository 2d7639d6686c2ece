"""``POST /v1/completions`` (OpenAI legacy completions), streaming and not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pitstop.outputs import RequestOutput
from pitstop.server.async_engine import EngineDead, RequestHandle
from pitstop.server.errors import bad_request, error_body, field_error
from pitstop.server.protocol import CompletionRequest, random_id
from pitstop.server.serving_base import ServingBase
from pitstop.server.sse import SSEResponse, sse, until_disconnect
from pitstop.server.tenants import request_tenant


class ServingCompletions(ServingBase):
    """Turns a ``CompletionRequest`` into engine requests (one per prompt) and OpenAI responses."""

    def prompts(self, req: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt: text is tokenized as ``LLM.generate`` does (``tokenizer(text)``)."""
        p = req.prompt
        if isinstance(p, str):
            items: list = [p]
        elif p and all(isinstance(x, int) for x in p):
            items = [p]
        else:
            items = list(p)
        if not items:
            raise bad_request("prompt must not be empty", param="prompt")
        return [list(self.tokenizer(x).input_ids) if isinstance(x, str) else list(x) for x in items]

    async def create(self, req: CompletionRequest, raw: Request) -> Response:
        model = self.check_model(req.model)
        self.check_common(req)
        for name in ("echo", "suffix"):
            if getattr(req, name):
                raise bad_request(f"{name} is not supported by this server", param=name)
        if req.best_of not in (None, 1, req.n):
            raise bad_request("best_of must equal n (beam search / best-of is not supported)", param="best_of")
        prompts = self.prompts(req)
        max_tokens = self.max_tokens(req)
        for ids in prompts:
            self.check_prompt(ids, max_tokens)
        try:
            structured = req.structured()
        except ValueError as e:
            raise field_error(e) from None
        params = self.sampling_params(req, max_tokens, req.logprobs, structured)
        rid = random_id("cmpl")
        handles = self.admit(rid, prompts, params, req, request_tenant(raw))
        close = lambda: [h.close() for h in handles]  # noqa: E731
        if req.stream:
            return SSEResponse(self._stream(rid, model, req, handles), on_close=close)
        try:
            outs = await until_disconnect(raw, self._collect(handles))
        finally:
            close()
        if outs is None:
            return Response(status_code=499)  # client closed the connection
        return JSONResponse(self._body(rid, model, req, outs))

    async def _collect(self, handles: list[RequestHandle]) -> list[RequestOutput]:
        outs: dict[int, RequestOutput] = {}
        with self.stream_errors():
            async for t in self.merged(handles):
                if t.output is not None:
                    outs[t.prompt_index] = t.output
        return [outs[i] for i in range(len(handles))]

    def _body(self, rid: str, model: str, req: CompletionRequest, outs: list[RequestOutput]) -> dict:
        choices = []
        for p, out in enumerate(outs):
            for c in out.outputs:
                choices.append({
                    "index": p * req.n + c.index, "text": c.text,
                    "logprobs": self.completion_logprobs(c.token_ids, c.logprobs, req.logprobs or 0, 0)
                    if req.logprobs is not None else None,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})
                if req.return_token_ids:
                    choices[-1].update(prompt_token_ids=list(out.prompt_token_ids), token_ids=list(c.token_ids))
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": self.usage(outs)}

    async def _stream(self, rid: str, model: str, req: CompletionRequest,
                      handles: list[RequestHandle]) -> AsyncIterator[str]:
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        offsets: dict[int, int] = {}
        sent_prompt: set[int] = set()
        outs: list[RequestOutput] = []
        try:
            async for t in self.merged(handles):
                for d in t.deltas:
                    idx = t.prompt_index * req.n + d.index
                    lp = None
                    if req.logprobs is not None:
                        lp = self.completion_logprobs(d.token_ids, d.logprobs, req.logprobs, offsets.get(idx, 0))
                    offsets[idx] = offsets.get(idx, 0) + len(d.text)
                    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
                             "choices": [{"index": idx, "text": d.text, "logprobs": lp,
                                          "finish_reason": d.finish_reason, "stop_reason": d.stop_reason}]}
                    if req.return_token_ids:
                        chunk["choices"][0]["token_ids"] = list(d.token_ids)
                        if idx not in sent_prompt:
                            sent_prompt.add(idx)
                            chunk["choices"][0]["prompt_token_ids"] = list(handles[t.prompt_index].prompt_token_ids)
                    if include_usage:
                        chunk["usage"] = None
                    yield sse(chunk)
                if t.output is not None:
                    outs.append(t.output)
            if include_usage:
                yield sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                           "choices": [], "usage": self.usage(outs)})
        except (ValueError, RuntimeError, EngineDead) as e:
            yield sse(error_body(str(e), "server_error" if not isinstance(e, ValueError)
                                 else "invalid_request_error"))
        yield sse("[DONE]")
