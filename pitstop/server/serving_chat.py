"""``POST /v1/chat/completions``: the tokenizer's chat template, then the engine; streaming and not.

The prompt ids are built exactly as ``LLM.chat`` builds them (``apply_chat_template(tokenize=False)``
then ``tokenizer(text, add_special_tokens=False)``), so greedy output through the server equals
``LLM.chat`` for the same messages.

Function calling (``pitstop.tools``): ``tools`` go through the chat template (or the system prompt when the
template has no tools section); ``tool_choice`` ``required`` / a named tool constrain decoding, ``auto``
decodes freely and the tool-call parser extracts the calls. Stream: per call ``index`` a delta with ``id``,
``type``, ``function.name`` and empty arguments, then argument fragments; under ``required`` / a named tool the
fragments are the model's text as it comes (``pitstop.tools.constrained``), under ``auto`` a call is sent once
it is complete and parses. Either way the stream reassembles exactly to the non-streamed message. A call under
``auto`` that does not parse is content (``pitstop_tool_calls_malformed_total``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pitstop.outputs import RequestOutput
from pitstop.sampling_params import StructuredOutputsParams
from pitstop.server.async_engine import EngineDead, RequestHandle, StreamUpdate
from pitstop.server.errors import APIError, bad_request, error_body, field_error
from pitstop.server.protocol import ChatCompletionRequest, random_id
from pitstop.server.serving_base import ServingBase
from pitstop.server.sse import SSEResponse, sse, until_disconnect
from pitstop.server.tenants import request_tenant, scoped_program
from pitstop.tools.base import Extractor, ParsedCall, StreamEvent, ToolParser, calls_of, content_of
from pitstop.tools.chat import apply_chat_template
from pitstop.tools.choice import ToolChoice, constraint, extractor_for, normalize_tools, parse_tool_choice
from pitstop.tools.raw_turns import raw_turns_for
from pitstop.tools.registry import DEFAULT_PARSER, get_parser, infer_parser

log = logging.getLogger(__name__)


def tool_call_id() -> str:
    """An OpenAI-style tool call id, ``call_`` and 24 random hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolSetup:
    """The tools of one request: checked definitions, the choice, the constraint, and who parses the text."""

    tools: list[dict]
    choice: ToolChoice
    structured: StructuredOutputsParams | None

    @property
    def offered(self) -> bool:
        return self.choice.mode != "none"


class ServingChat(ServingBase):
    """Turns a ``ChatCompletionRequest`` into one engine request and OpenAI chat responses.

    ``tool_parser``: the ``--tool-call-parser`` name (None: inferred from the chat template).
    """

    def __init__(self, *args, tool_parser: str | None = None, tool_history: str = "generated", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        name = tool_parser or infer_parser(getattr(self.tokenizer, "chat_template", None)) or DEFAULT_PARSER
        self.parser: ToolParser = get_parser(name)
        self.raw_turns = raw_turns_for(tool_history)

    def tool_setup(self, req: ChatCompletionRequest) -> ToolSetup:
        """400 naming the field for a bad tool, tool_choice or structured-output request."""
        try:
            tools = normalize_tools(req.tools)
            choice = parse_tool_choice(req.tool_choice, tools)
            structured = req.structured()
            tool_constraint = constraint(tools, choice, req.parallel_tool_calls, self.parser)
        except ValueError as e:
            raise field_error(e) from None
        if tool_constraint is not None and structured is not None:
            raise bad_request("tool_choice 'required', a named tool or strict tools under 'auto' cannot be combined "
                              "with response_format or structured outputs", param="tool_choice")
        return ToolSetup(tools, choice, tool_constraint or structured)

    def prompt_ids(self, req: ChatCompletionRequest, setup: ToolSetup | None = None,
                   tenant: str | None = None) -> list[int]:
        conv = [m.as_dict() for m in req.messages]  # roles, fields and text-only parts: checked by the schema
        if self.raw_turns is not None:
            conv = self.raw_turns.restore(tenant, conv)
        tools = setup.tools if setup is not None and setup.offered else []
        try:
            text = apply_chat_template(self.tokenizer, conv, tools, self.parser,
                                       add_generation_prompt=req.add_generation_prompt,
                                       **(req.chat_template_kwargs or {}))
        except Exception as e:  # noqa: BLE001 - template errors are the caller's messages
            raise bad_request(f"cannot apply the chat template: {e}", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def extractor(self, setup: ToolSetup) -> Extractor | None:
        return extractor_for(setup.choice, self.parser, setup.tools)

    async def create(self, req: ChatCompletionRequest, raw: Request) -> Response:
        model = self.check_model(req.model)
        self.check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")
        setup = self.tool_setup(req)
        max_tokens = self.max_tokens(req)
        top = req.top_logprobs or 0
        tenant = request_tenant(raw)
        ids = self.prompt_ids(req, setup, tenant)
        self.check_prompt(ids, max_tokens, param="messages")
        params = self.sampling_params(req, max_tokens, top if req.logprobs else None, setup.structured)
        rid = random_id("chatcmpl")
        decide_last = setup.offered and req.is_last_turn is None and req.is_last_step is None
        handles = self.admit(rid, [ids], params, req, tenant, is_last_turn=False if decide_last else None)
        close = lambda: [h.close() for h in handles]  # noqa: E731
        program = scoped_program(tenant, req.program_kwargs()["program_id"])
        turn = _Turn(self, program, decide_last, tag=req.tool_name is None)
        if req.stream:
            first = None
            if setup.structured is not None:  # an unsupported schema/grammar is a 400, not an SSE error
                try:
                    first = await until_disconnect(raw, self._first(handles[0]))
                except BaseException:
                    close()
                    raise
                if first is None:
                    close()
                    return Response(status_code=499)  # client closed the connection
            return SSEResponse(self._stream(rid, model, req, handles[0], setup, turn, first, tenant), on_close=close)
        try:
            out = await until_disconnect(raw, self._collect(handles[0]))
        finally:
            close()
        if out is None:
            return Response(status_code=499)  # client closed the connection
        body = self._body(rid, model, req, out, setup, tenant)
        await turn.finished([tc["function"]["name"] for ch in body["choices"]
                             for tc in ch["message"].get("tool_calls") or []])
        return JSONResponse(body)

    async def _first(self, handle: RequestHandle) -> StreamUpdate:
        """The request's first update (so an error at admission becomes the response's status)."""
        with self.stream_errors():
            async for u in handle.updates():
                return u
        log.error("request %s: its stream ended without an update", handle.request_id)
        raise RuntimeError("the request's stream ended without an update")

    async def _collect(self, handle: RequestHandle) -> RequestOutput:
        out = None
        with self.stream_errors():
            async for u in handle.updates():
                out = u.output or out
        assert out is not None
        return out

    def _message(self, text: str, finish_reason: str | None, setup: ToolSetup,
                 tenant: str | None = None) -> tuple[dict, str | None]:
        """The assistant message of one completion and its finish reason (``tool_calls`` when it made calls and
        stopped by itself; ``length`` stays ``length``: the last call may be cut short)."""
        ex = self.extractor(setup)
        if ex is None:
            return {"role": "assistant", "content": text}, finish_reason
        events = ex.feed(text) + ex.finish()
        self._count(ex, setup)
        content, calls = content_of(events), calls_of(events)
        if not calls:
            return {"role": "assistant", "content": content}, finish_reason
        ids = [tool_call_id() for _ in calls]
        self._remember(tenant, text, content, calls, ids)
        return ({"role": "assistant", "content": content,
                 "tool_calls": [_call_json(c, cid) for c, cid in zip(calls, ids)]}, _finish(finish_reason))

    def _remember(self, tenant: str | None, text: str, content: str | None, calls: list[ParsedCall],
                  ids: list[str]) -> None:
        """Keep the generated text of a turn that made ``calls`` (handed out as ``ids``) for ``--tool-history
        generated``."""
        if self.raw_turns is not None and len(ids) == len(calls):
            self.raw_turns.remember(tenant, text, content, [(i, c.name, c.arguments) for i, c in zip(ids, calls)])

    def _count(self, ex: Extractor, setup: ToolSetup) -> None:
        self.metrics.tool_calls.inc(ex.num_calls)
        if ex.malformed:
            label = self.parser.name if setup.choice.mode == "auto" else "constrained"
            self.metrics.tool_calls_malformed.labels(label).inc(ex.malformed)

    def _body(self, rid: str, model: str, req: ChatCompletionRequest, out: RequestOutput, setup: ToolSetup,
              tenant: str | None = None) -> dict:
        top = req.top_logprobs or 0
        choices = []
        for c in out.outputs:
            message, finish = self._message(c.text, c.finish_reason, setup, tenant)
            choices.append({"index": c.index, "message": message,
                            "logprobs": self.chat_logprobs(c.token_ids, c.logprobs, top) if req.logprobs else None,
                            "finish_reason": finish, "stop_reason": c.stop_reason})
        body = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": self.usage([out])}
        if req.return_token_ids:
            body["prompt_token_ids"] = list(out.prompt_token_ids)
            for ch, c in zip(choices, out.outputs):
                ch["token_ids"] = list(c.token_ids)
        return body

    async def _stream(self, rid: str, model: str, req: ChatCompletionRequest, handle: RequestHandle,
                      setup: ToolSetup, turn: "_Turn", first: StreamUpdate | None,
                      tenant: str | None = None) -> AsyncIterator[str]:
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        top = req.top_logprobs or 0
        extractors = [self.extractor(setup) for _ in range(req.n)]
        called: list[list[str]] = [[] for _ in range(req.n)]
        call_ids: list[list[str]] = [[] for _ in range(req.n)]

        def chunk(choices: list[dict], usage: dict | None = None, last: bool = False, **extra: object) -> str:
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **extra}
            if include_usage:
                c["usage"] = usage if last else None
            return sse(c)

        async def updates() -> AsyncIterator[StreamUpdate]:
            if first is not None:
                yield first
                if first.finished:
                    return
            async for u in handle.updates():
                yield u

        try:
            extra = {"prompt_token_ids": list(handle.prompt_token_ids)} if req.return_token_ids else {}
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(req.n)], **extra)
            out = None
            async for u in updates():
                for d in u.deltas:
                    lp = self.chat_logprobs(d.token_ids, d.logprobs, top) if req.logprobs else None
                    ex = extractors[d.index]
                    if ex is None:
                        deltas = [{"content": d.text}] if d.text or d.finish_reason is None else [{}]
                    else:
                        events = ex.feed(d.text) + (ex.finish() if d.finish_reason is not None else [])
                        deltas = self._event_deltas(events, called[d.index], call_ids[d.index])
                        if d.finish_reason is not None:
                            self._count(ex, setup)
                    finish = d.finish_reason
                    if finish is not None and called[d.index]:
                        finish = _finish(finish)
                    if not deltas and (finish is not None or lp is not None or req.return_token_ids):
                        deltas = [{}]
                    for k, delta in enumerate(deltas):
                        end = k == len(deltas) - 1
                        ch = {"index": d.index, "delta": delta, "logprobs": lp if end else None,
                              "finish_reason": finish if end else None, "stop_reason": d.stop_reason if end else None}
                        if req.return_token_ids:
                            ch["token_ids"] = list(d.token_ids) if end else []
                        yield chunk([ch])
                out = u.output or out
            await turn.finished([n for names in called for n in names])
            if out is not None:
                self._remember_streamed(tenant, out, setup, call_ids)
            if include_usage and out is not None:
                yield chunk([], self.usage([out]), last=True)
        except (ValueError, RuntimeError, EngineDead) as e:
            yield sse(error_body(str(e), "server_error" if not isinstance(e, ValueError)
                                 else "invalid_request_error"))
        yield sse("[DONE]")

    def _remember_streamed(self, tenant: str | None, out: RequestOutput, setup: ToolSetup,
                           call_ids: list[list[str]]) -> None:
        """``_remember`` for streamed completions: their calls, parsed again from the whole text (the stream's
        extractor gives the same, a tested property), with the ids the stream handed out."""
        for c in out.outputs:
            ex = self.extractor(setup)
            if ex is not None and c.index < len(call_ids) and call_ids[c.index]:
                events = ex.feed(c.text) + ex.finish()
                self._remember(tenant, c.text, content_of(events), calls_of(events), call_ids[c.index])

    @staticmethod
    def _event_deltas(events: list[StreamEvent], called: list[str], ids: list[str] | None = None) -> list[dict]:
        """OpenAI deltas of extractor events: content; a call's start (id, type, name, empty arguments); a
        fragment of its arguments."""
        deltas = []
        for e in events:
            if e.is_content:
                deltas.append({"content": e.content})
            elif e.name is not None:
                called.append(e.name)
                cid = tool_call_id()
                if ids is not None:
                    ids.append(cid)
                deltas.append({"tool_calls": [{"index": e.index, **_call_json(ParsedCall(e.name, ""), cid)}]})
            elif e.args:
                deltas.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.args}}]})
        return deltas


def _finish(reason: str | None) -> str | None:
    """The finish reason of a completion that made calls: ``tool_calls`` if it stopped by itself."""
    return "tool_calls" if reason == "stop" else reason


def _call_json(call: ParsedCall, cid: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class _Turn:
    """A program's turn that offered tools: once it ends, its calls tag the turn's tool for the TTL policy
    (unless the client named it: ``tag`` false); when the client did not say whether the turn is the last
    (``decide_last``), it was added as non-final and a turn without calls ends the program (the agent has its
    answer)."""

    def __init__(self, serving: ServingChat, program_id: str | None, decide_last: bool, tag: bool = True) -> None:
        self.serving, self.program_id, self.decide_last, self.tag = serving, program_id, decide_last, tag

    async def finished(self, tool_names: list[str]) -> None:
        pid = self.program_id
        if pid is None:
            return
        engine = self.serving.engine
        try:
            if tool_names:
                if self.tag:
                    await engine.call(lambda e: e.tag_turn_tools(pid, tool_names))
            elif self.decide_last:
                await engine.call(lambda e: e.end_program(pid))
        except EngineDead:
            pass
