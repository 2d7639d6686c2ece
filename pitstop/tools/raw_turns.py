"""Assistant turns that called tools, rendered back as the model generated them.

An agent sends each turn's reply back in the next request: an assistant message with ``tool_calls`` (the parsed
calls), then the tool results. The chat template re-renders those calls in its own format (Hermes ``<tool_call>``
blocks, ``tojson`` spacing), which is rarely the text the model wrote (``tool_choice="required"`` writes a JSON
array; a model's own spacing differs). The next turn's prompt then leaves the previous turn's tokens at that
message, so the KV cache of the previous turn (pinned across the tool call for exactly this reuse) matches only
up to it, and the model reads a history it did not write.

``RawToolTurns`` remembers, by the call ids handed to the client, the text each such turn generated. When a later
request's history holds an assistant message whose calls (ids, names, arguments) and content are exactly those
of a remembered turn, the message is rendered as that text (``{"role": "assistant", "content": text}``); any
difference (a client that edits the history) leaves the message to the template. Entries are scoped (by tenant:
one tenant's ids never restore another's text) and bounded (least recently used first out).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pitstop.tools.chat import content_text


@dataclass(frozen=True)
class RawTurn:
    """One generated turn: ``text`` as generated, ``content`` the client got ('' when only calls), ``calls``
    ``(id, name, arguments JSON text)`` in order."""

    text: str
    content: str
    calls: tuple[tuple[str, str, str], ...]


def _same_arguments(a: Any, b: str) -> bool:
    """``a`` (the message's arguments: JSON text or an object) means the same as ``b`` (the turn's JSON text)."""
    if isinstance(a, str) and a == b:
        return True
    try:
        return (json.loads(a) if isinstance(a, str) else a) == json.loads(b)
    except (TypeError, ValueError):
        return False


class RawToolTurns:
    """Generated texts of tool-calling turns by ``(scope, call id)``.

    Args:
        capacity: turns kept (the least recently used go first).

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._turns: OrderedDict[tuple[str | None, str], RawTurn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._turns)

    def remember(self, scope: str | None, text: str, content: str | None,
                 calls: list[tuple[str, str, str]]) -> None:
        """A turn that generated ``text`` and was returned with ``content`` and ``calls`` (id, name, arguments)."""
        if not calls:
            return
        turn = RawTurn(text, content or "", tuple(calls))
        key = (scope, calls[0][0])
        self._turns[key] = turn
        self._turns.move_to_end(key)
        while len(self._turns) > self.capacity:
            self._turns.popitem(last=False)

    def restore(self, scope: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with each assistant message that is exactly a remembered turn replaced by
        ``{"role": "assistant", "content": <the generated text>}``; a new list, the input is not modified."""
        out = []
        for m in messages:
            turn = self._match(scope, m)
            out.append({"role": "assistant", "content": turn.text} if turn is not None else m)
        return out

    def _match(self, scope: str | None, m: dict[str, Any]) -> RawTurn | None:
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        if not calls or not isinstance(calls, list) or not isinstance(calls[0], dict):
            return None
        turn = self._turns.get((scope, str(calls[0].get("id"))))
        if turn is None or len(calls) != len(turn.calls) or content_text(m.get("content")).strip() != turn.content.strip():
            return None
        for tc, (cid, name, args) in zip(calls, turn.calls):
            fn = tc.get("function") if isinstance(tc, dict) else None
            if (not isinstance(fn, dict) or tc.get("id") != cid or fn.get("name") != name
                    or not _same_arguments(fn.get("arguments", "{}"), args)):
                return None
        self._turns.move_to_end((scope, turn.calls[0][0]))
        return turn


TOOL_HISTORY = ("generated", "template")


def raw_turns_for(tool_history: str) -> RawToolTurns | None:
    """The turn memory ``tool_history`` asks for: a ``RawToolTurns`` for ``generated``, None for ``template``.

    Raises:
        ValueError: another value.
    """
    if tool_history not in TOOL_HISTORY:
        raise ValueError(f"tool_history must be 'generated' or 'template', got {tool_history!r}")
    return RawToolTurns() if tool_history == "generated" else None
