"""The model an agent talks to, as the agent loops see it: ``ChatModel`` (one chat turn, a streamed text turn, and
the engine link), the hints each call carries (``ProgramHints``) and what a turn returns (``ChatTurn``).

Two implementations: ``pitstop.agents.openai_model.OpenAIChatModel`` (any OpenAI-compatible endpoint through the
official ``openai`` client; the program extras only where the endpoint is pitstop) and
``pitstop.agents.local_model.LocalChatModel`` (the in-process ``pitstop.LLM``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]
"""An OpenAI chat message (``role``, ``content``, ``tool_calls``, ``tool_call_id``)."""


@dataclass(frozen=True)
class ProgramHints:
    """What the engine is told about one LLM call of an agent program (pitstop's request extras).

    Attributes:
        program_id: the run's program (one per agent run).
        is_last_turn: False while the program may run a tool after this call and call the model again: the engine
            may pin the call's KV cache (Continuum's TTL) until the next turn.
        tool_name: the tool the runtime runs after this call, when known before the call (a forced tool); None
            lets the engine take it from the call's parsed tool calls.
    """

    program_id: str
    is_last_turn: bool = False
    tool_name: str | None = None

    def extra_body(self) -> dict[str, Any]:
        """The request-body extras (``program_id``, ``is_last_turn`` and, when known, ``tool_name``)."""
        body: dict[str, Any] = {"program_id": self.program_id, "is_last_turn": self.is_last_turn}
        if self.tool_name is not None:
            body["tool_name"] = self.tool_name
        return body


@dataclass(frozen=True)
class ToolCallRequest:
    """One tool call the model made: its id, the tool's name and the arguments as JSON text (as the model wrote
    them; the tool validates)."""

    id: str
    name: str
    arguments: str

    def message_entry(self) -> dict[str, Any]:
        """The entry in the assistant message's ``tool_calls``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ChatTurn:
    """One chat completion of an agent.

    Attributes:
        content: the assistant's text ('' when it only called tools).
        tool_calls: the calls it made, in order.
        finish_reason: ``stop``, ``length``, ``tool_calls``.
        prompt_tokens, completion_tokens: tokens of the call (0 when the endpoint does not say).
        cached_tokens: prompt tokens served from the engine's prefix cache (0 when not reported).
    """

    content: str
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def message(self) -> Message:
        """The assistant message to append to the conversation."""
        msg: Message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.message_entry() for c in self.tool_calls]
        return msg


class ChatModel(Protocol):
    """A model an agent calls, and its link to the engine's program tracking.

    ``links_programs`` says whether the hints reach an engine: False for a plain OpenAI endpoint (the extras are
    left out of every request and ``report_tool`` / ``end_program`` do nothing).
    """

    async def links_programs(self) -> bool: ...

    async def chat(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                   tool_choice: str | dict[str, Any] | None = None,
                   program: ProgramHints | None = None) -> ChatTurn:
        """One chat turn with ``tools`` (OpenAI function definitions) offered under ``tool_choice``."""
        ...

    def stream(self, messages: list[Message], *, program: ProgramHints | None = None,
               grammar: str | None = None) -> AsyncIterator[str]:
        """One turn's text as deltas, without tools; ``grammar`` (a Lark grammar, llguidance syntax) constrains
        it where the engine supports structured outputs (pitstop), and is ignored elsewhere."""
        ...

    async def report_tool(self, program_id: str, tool_name: str, duration_s: float) -> None:
        """Tell the engine a tool run of the program finished (``duration_s`` seconds)."""
        ...

    async def program_stats(self, program_id: str) -> dict[str, Any] | None:
        """The program's counters now (None once it has ended, or where the engine does not track programs)."""
        ...

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        """End the program (its pinned KV is released); returns its counters as the engine had them just before
        (``GET /v1/programs/{id}``: turns, pins, pin hits, reused and re-prefilled tokens, tool reports), or None
        when the engine does not track programs or no longer knows it."""
        ...
