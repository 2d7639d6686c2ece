"""The in-process ``pitstop.LLM`` as an agent's ``ChatModel``.

``LLM`` is synchronous and runs its engine on the calling thread, so calls go through one worker thread at a time
(a lock): concurrent agents in one process take turns on the engine rather than batching (run ``pitstop serve``
and ``OpenAIChatModel`` for batched concurrent runs). The program hints reach the engine directly: each call is
added with ``program_id`` / ``is_last_turn`` / ``tool_name``, the turn's parsed tool calls tag the pin's tool
(``LLMEngine.tag_turn_tools``), tool runs are ``report_tool_result`` and the run's end is ``end_program``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pitstop.agents.chat_model import ChatTurn, Message, ProgramHints, ToolCallRequest
from pitstop.sampling_params import SamplingParams, StructuredOutputsParams

if TYPE_CHECKING:
    from pitstop.entrypoints.llm import LLM


class LocalChatModel:
    """``ChatModel`` over an in-process ``LLM``.

    Args:
        llm: the engine (``pitstop.LLM(...)``).
        sampling_params: for every call (default: greedy, ``max_tokens=256``).
    """

    def __init__(self, llm: LLM, sampling_params: SamplingParams | None = None) -> None:
        self.llm = llm
        self.sampling_params = sampling_params or SamplingParams(temperature=0.0, max_tokens=256)
        self._lock = threading.Lock()

    async def links_programs(self) -> bool:
        return True

    def _locked(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)

    @staticmethod
    def _hints(program: ProgramHints | None) -> dict[str, Any]:
        if program is None:
            return {}
        return {"program_id": program.program_id, "is_last_turn": program.is_last_turn,
                "tool_name": program.tool_name}

    async def chat(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                   tool_choice: str | dict[str, Any] | None = None,
                   program: ProgramHints | None = None) -> ChatTurn:
        out = await asyncio.to_thread(self._chat, messages, tools, tool_choice, program)
        c = out.outputs[0]
        calls = [ToolCallRequest(t.id, t.name, t.arguments) for t in c.tool_calls or []]
        return ChatTurn(content=c.content if c.content is not None else c.text, tool_calls=calls,
                        finish_reason="tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason,
                        prompt_tokens=len(out.prompt_token_ids), completion_tokens=len(c.token_ids),
                        cached_tokens=out.num_cached_tokens)

    def _chat(self, messages: list[Message], tools: list[dict[str, Any]] | None, tool_choice: Any,
              program: ProgramHints | None) -> Any:
        with self._lock:
            out = self.llm.chat(messages, self.sampling_params, use_tqdm=False, tools=tools or None,
                                tool_choice=(tool_choice or "auto") if tools else None, **self._hints(program))[0]
            names = [t.name for t in out.outputs[0].tool_calls or []]
            if program is not None and names and program.tool_name is None:
                self.llm.llm_engine.tag_turn_tools(program.program_id, names)
            return out

    async def stream(self, messages: list[Message], *, program: ProgramHints | None = None,
                     grammar: str | None = None) -> AsyncIterator[str]:
        """The whole turn as one delta (the in-process engine is not streamed to the caller)."""
        sp = self.sampling_params
        if grammar is not None:
            sp = replace(sp, structured_outputs=StructuredOutputsParams(grammar=grammar))
        out = await asyncio.to_thread(self._locked, self.llm.chat, messages, sp, use_tqdm=False,
                                      **self._hints(program))
        yield out[0].outputs[0].text

    async def report_tool(self, program_id: str, tool_name: str, duration_s: float) -> None:
        engine = self.llm.llm_engine
        await asyncio.to_thread(self._locked, engine.report_tool_result, program_id, tool_name, max(0.0, duration_s))

    async def program_stats(self, program_id: str) -> dict[str, Any] | None:
        """The program's counters now; None once it has ended (or was never seen)."""
        return await asyncio.to_thread(self._locked, self.llm.llm_engine.program_stats, program_id)

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        engine = self.llm.llm_engine
        stats = await self.program_stats(program_id)
        await asyncio.to_thread(self._locked, engine.end_program, program_id)
        return stats

