"""Extractors of constrained tool output, which stream each call's arguments as the model writes them.

- ``tool_choice`` naming a tool: the whole output is the arguments; the call starts with the first text.
- ``tool_choice="required"``: the output is a JSON array ``[{"name": ..., "arguments": {...}}, ...]``. A
  character scanner (strings, escapes, nesting) follows it: a call starts once its ``name`` is read and its
  ``arguments`` object begins, and the arguments' raw text is then sent as it arrives. An element whose
  ``arguments`` come before its ``name`` is sent whole when it closes.

The arguments are the model's own JSON text (the grammar guarantees it parses; compact, as the constraint allows
no free whitespace), so the streamed fragments join to exactly the non-streamed ``arguments``. Output that is
not such an array (no constraint, or one not followed) is content; a truncated call stays as far as it got
(``finish_reason`` ``length`` tells).
"""

from __future__ import annotations

from pitstop.tools.base import Extractor, StreamEvent
from pitstop.tools.call_scanner import CallScanner


class NamedExtractor(Extractor):
    """The whole output is the arguments of ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def feed(self, text: str) -> list[StreamEvent]:
        if not text:
            return []
        events = self._start(self.name) if self.num_calls == 0 else []
        return events + [StreamEvent(index=0, args=text)]

    def finish(self) -> list[StreamEvent]:
        return []


class JsonCallsExtractor(Extractor):
    """``[{"name": ..., "arguments": {...}}, ...]`` followed character by character (each element by a
    :class:`~pitstop.tools.call_scanner.CallScanner`); ``names``: the tools."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.text = ""
        self.state = "open"  # "open": before "["; "element": before an element; "call": in one; "next": after one
        self.call: CallScanner | None = None
        self.failed = self.done = False

    def feed(self, text: str) -> list[StreamEvent]:
        self.text += text
        events: list[StreamEvent] = []
        for c in text:
            if self.failed or self.done:
                break
            self._step(c)
            events += self._emit()
        return events

    def finish(self) -> list[StreamEvent]:
        if self.num_calls == 0:
            if self.text.lstrip().startswith("["):
                self.malformed += 1
            return self._content(self.text) + self._flush_ws()
        if self.failed:
            self.malformed += 1
        return []

    def _step(self, c: str) -> None:
        if self.state == "call":
            assert self.call is not None
            self.call.feed(c)
            self.failed = self.call.failed
            if self.call.done and not self.failed:
                self.state = "next"
        elif c.isspace():
            return
        elif self.state == "open":
            self.state, self.failed = "element", c != "["
        elif self.state == "element" and c == "{":
            self.call, self.state = CallScanner(self.names), "call"
            self.call.feed(c)
        elif self.state == "next" and c in ",]":
            self.state, self.done = "element", c == "]"
        else:
            self.failed = True

    def _emit(self) -> list[StreamEvent]:
        """A call's start once its name is known and its arguments began; then its new argument text."""
        return self._stream_call(self.call) if self.call is not None else []
