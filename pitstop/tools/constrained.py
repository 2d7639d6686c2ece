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

import json

from pitstop.tools.base import Extractor, StreamEvent


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
    """``[{"name": ..., "arguments": {...}}, ...]`` followed character by character; ``names``: the tools."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.text = ""
        self.pos = 0  # next character to scan
        self.depth = 0
        self.in_str = self.esc = False
        self.tok_start = 0
        self.failed = False
        self.done = False
        self._new_element()

    def _new_element(self) -> None:
        self.expect = "key"  # at depth 2: a key or a value comes next
        self.key: str | None = None
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.sent = 0  # characters of this element's arguments already sent
        self.started = False

    def feed(self, text: str) -> list[StreamEvent]:
        self.text += text
        events: list[StreamEvent] = []
        while self.pos < len(self.text) and not (self.failed or self.done):
            self._scan(self.text[self.pos])
            self.pos += 1
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

    def _emit(self) -> list[StreamEvent]:
        """A call's start once its name is known and its arguments began; then its new argument text."""
        if self.args_start is None or self.name is None or self.failed:
            return []
        events = []
        if not self.started:
            self.started = True
            events += self._start(self.name)
        end = self.args_end if self.args_end is not None else self.pos + 1
        chunk = self.text[self.args_start + self.sent:end]
        if chunk:
            self.sent += len(chunk)
            events.append(StreamEvent(index=self.num_calls - 1, args=chunk))
        return events

    def _scan(self, c: str) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif c == "\\":
                self.esc = True
            elif c == '"':
                self.in_str = False
                if self.depth == 2:
                    try:
                        self._string_at_element(json.loads(self.text[self.tok_start:self.pos + 1]))
                    except ValueError:
                        self.failed = True  # not a JSON string
            return
        if c == '"':
            self.in_str, self.tok_start = True, self.pos
        elif c in "[{":
            self._open(c)
        elif c in "]}":
            self._close(c)
        elif self.depth == 2 and c == ":":
            self.expect = "value"
        elif self.depth == 2 and c == ",":
            self.expect, self.key = "key", None
        elif self.depth == 0 and not c.isspace():
            self.failed = True  # not an array

    def _string_at_element(self, value: str) -> None:
        if self.expect == "key":
            self.key = value
        elif self.key == "name":
            self.name = value
            if value not in self.names:
                self.failed = True

    def _open(self, c: str) -> None:
        self.depth += 1
        if self.depth == 1 and c != "[":
            self.failed = True
        elif self.depth == 2:
            if c != "{":
                self.failed = True
            self._new_element()
        elif self.depth == 3 and self.expect == "value" and self.key == "arguments" and self.args_start is None:
            self.args_start = self.pos

    def _close(self, c: str) -> None:
        self.depth -= 1
        if self.depth == 2 and self.args_start is not None and self.args_end is None and self.key == "arguments":
            self.args_end = self.pos + 1
        elif self.depth == 1:  # an element closed
            if self.name is None or self.args_end is None:
                self.failed = True
        elif self.depth == 0:
            self.done = True
