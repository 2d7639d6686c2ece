"""A character scanner for one JSON tool call ``{"name": ..., "arguments": {...}}`` as a model writes it, so a call's
arguments can be streamed while they are generated.

It follows strings (with escapes) and nesting only -- enough to know the call's ``name`` once that string closes,
where the ``arguments`` object begins and where it ends; it does not validate the JSON (the caller parses the
finished arguments with ``json``). Used for the constrained ``required`` array (``constrained.py``) and for
Hermes calls under ``auto`` (``hermes.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence


class CallScanner:
    """One call object, fed character by character from its ``{`` (leading whitespace allowed).

    Args:
        names: the tools (a name outside them fails the scan); None: any name.
        args_keys: the keys that hold the arguments (``arguments``; Hermes models also write ``parameters``).

    Attributes:
        text: every character fed.
        name: the call's name once read (the first ``name`` key), else None.
        args_start, args_end: where the arguments object starts in ``text`` and ends (exclusive), once known.
        failed: not a call object (a non-object, or a name outside ``names``).
        done: the call object closed.
    """

    def __init__(self, names: set[str] | None, args_keys: Sequence[str] = ("arguments",)) -> None:
        self.names, self.args_keys = names, tuple(args_keys)
        self.text = ""
        self.depth = 0
        self.in_str = self.esc = False
        self.tok_start = 0
        self.expect = "key"  # at depth 1: a key or a value comes next
        self.key: str | None = None
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.failed = self.done = False

    def feed(self, text: str) -> None:
        """Scan ``text`` (nothing more is scanned once ``failed`` or ``done``; the text is still kept)."""
        start = len(self.text)
        self.text += text
        for pos in range(start, len(self.text)):
            if self.failed or self.done:
                break
            self._scan(self.text[pos], pos)

    @property
    def streaming(self) -> bool:
        """The name is known and the arguments object has begun: its text can be sent."""
        return self.name is not None and self.args_start is not None and not self.failed

    def args_text(self) -> str:
        """The arguments' text so far (all of it once ``args_end`` is set)."""
        if self.args_start is None:
            return ""
        return self.text[self.args_start:self.args_end if self.args_end is not None else len(self.text)]

    def args_complete(self) -> bool:
        """The arguments object closed and parses as a JSON object."""
        if self.args_end is None:
            return False
        try:
            return isinstance(json.loads(self.args_text()), dict)
        except ValueError:
            return False

    def _scan(self, c: str, pos: int) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif c == "\\":
                self.esc = True
            elif c == '"':
                self.in_str = False
                if self.depth == 1:
                    self._string(self.text[self.tok_start:pos + 1])
            return
        if c == '"':
            if self.depth == 0:
                self.failed = True
            self.in_str, self.tok_start = True, pos
        elif c in "[{":
            self._open(c, pos)
        elif c in "]}":
            self._close(pos)
        elif self.depth == 1 and c == ":":
            self.expect = "value"
        elif self.depth == 1 and c == ",":
            self.expect, self.key = "key", None
        elif self.depth == 0 and not c.isspace():
            self.failed = True  # not an object

    def _string(self, literal: str) -> None:
        try:
            value = json.loads(literal)
        except ValueError:
            self.failed = True  # not a JSON string
            return
        if self.expect == "key":
            self.key = value
        elif self.key == "name" and self.name is None:
            self.name = value
            if self.names is not None and value not in self.names:
                self.failed = True

    def _open(self, c: str, pos: int) -> None:
        self.depth += 1
        if self.depth == 1 and c != "{":
            self.failed = True
        elif (self.depth == 2 and c == "{" and self.expect == "value" and self.key in self.args_keys
              and self.args_start is None):
            self.args_start = pos

    def _close(self, pos: int) -> None:
        self.depth -= 1
        if self.depth == 1 and self.args_start is not None and self.args_end is None:
            self.args_end = pos + 1
        elif self.depth == 0:
            self.done = True
            if self.name is None or self.args_end is None:
                self.failed = True
        elif self.depth < 0:
            self.failed = True
