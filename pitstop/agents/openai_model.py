"""An OpenAI-compatible endpoint as an agent's ``ChatModel``, through the official ``openai`` client.

Against pitstop (``pitstop serve``: its ``/v1/models`` cards say ``owned_by: pitstop``) every request carries the
program extras (``program_id``, ``is_last_turn``, ``tool_name``), tool runs are reported with
``POST /v1/programs/{id}/tool_result`` and the program is ended with ``DELETE /v1/programs/{id}`` (after
``GET /v1/programs/{id}`` for its counters). Against any other endpoint the extras are left out and the link calls
do nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import openai

from pitstop.agents.chat_model import ChatTurn, Message, ProgramHints, ToolCallRequest


class OpenAIChatModel:
    """``ChatModel`` over ``base_url`` (ending in ``/v1``).

    Args:
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name sent with each request (default: the first of ``GET /models``).
        api_key: sent as a bearer token (``"EMPTY"`` when the endpoint needs none).
        engine_link: ``"auto"`` (on when the endpoint is pitstop), True or False.
        max_tokens: per chat turn (tokens).
        temperature: sampling temperature (0: greedy).
        http_client: the ``httpx.AsyncClient`` for every request (tests pass one with a mock transport).

    Raises:
        openai.APIError (and subclasses), httpx.HTTPError: from the endpoint, unchanged.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str = "EMPTY",
                 engine_link: bool | Literal["auto"] = "auto", max_tokens: int = 256, temperature: float = 0.0,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self._http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, http_client=self._http,
                                         max_retries=0)
        self._link: bool | None = None if engine_link == "auto" else bool(engine_link)

    async def _resolve(self) -> None:
        if self.model is not None and self._link is not None:
            return
        cards = (await self.client.models.list()).data
        if self.model is None:
            if not cards:
                raise ValueError(f"{self.base_url}/models lists no model; pass model=")
            self.model = cards[0].id
        if self._link is None:
            self._link = any(getattr(c, "owned_by", None) == "pitstop" for c in cards)

    async def links_programs(self) -> bool:
        await self._resolve()
        return bool(self._link)

    def _extra(self, program: ProgramHints | None, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        body = dict(extra or {})
        if program is not None and self._link:
            body.update(program.extra_body())
        return body or None

    async def chat(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                   tool_choice: str | dict[str, Any] | None = None,
                   program: ProgramHints | None = None) -> ChatTurn:
        await self._resolve()
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs.update(tools=tools, tool_choice=tool_choice or "auto")
        resp = await self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
            extra_body=self._extra(program), **kwargs)  # type: ignore[arg-type]
        choice = resp.choices[0]
        calls = [ToolCallRequest(c.id, c.function.name, c.function.arguments or "{}")
                 for c in choice.message.tool_calls or [] if getattr(c, "function", None) is not None]
        usage = resp.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
        return ChatTurn(content=choice.message.content or "", tool_calls=calls, finish_reason=choice.finish_reason,
                        prompt_tokens=usage.prompt_tokens if usage else 0,
                        completion_tokens=usage.completion_tokens if usage else 0,
                        cached_tokens=(getattr(details, "cached_tokens", None) or 0) if details else 0)

    async def stream(self, messages: list[Message], *, program: ProgramHints | None = None,
                     grammar: str | None = None) -> AsyncIterator[str]:
        await self._resolve()
        extra = {"structured_outputs": {"grammar": grammar}} if grammar is not None and self._link else None
        stream = await self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
            stream=True, extra_body=self._extra(program, extra))  # type: ignore[arg-type]
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            await stream.close()

    async def report_tool(self, program_id: str, tool_name: str, duration_s: float) -> None:
        if not await self.links_programs():
            return
        r = await self._http.post(f"{self.base_url}/programs/{program_id}/tool_result", headers=self._headers,
                                  json={"tool_name": tool_name, "duration_s": max(0.0, duration_s)})
        r.raise_for_status()

    async def program_stats(self, program_id: str) -> dict[str, Any] | None:
        """The program's counters now (``GET /v1/programs/{id}``); None when it has ended (or was never seen) or
        the endpoint does not track programs. Raises httpx.HTTPError when the request fails."""
        if not await self.links_programs():
            return None
        got = await self._http.get(f"{self.base_url}/programs/{program_id}", headers=self._headers)
        return got.json() if got.status_code == 200 else None

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        if not await self.links_programs():
            return None
        stats = await self.program_stats(program_id)
        gone = await self._http.delete(f"{self.base_url}/programs/{program_id}", headers=self._headers)
        if gone.status_code not in (200, 404):  # 404: the engine ended it already (a final turn, idle timeout)
            gone.raise_for_status()
        return stats

    async def aclose(self) -> None:
        await self._http.aclose()
