"""What every tool-call parser shares: parsed calls, stream events, and the two streaming extractors.

A parser turns the model's text into content and tool calls. Its non-streaming ``extract`` is the streaming
extractor fed the whole text at once, so a stream's deltas reassemble exactly to the non-streamed result for
every chunking of the text (tested with hypothesis in ``tests/test_tool_parsers.py``). Tagged calls (Hermes)
stream their arguments as they are written once the call's name is known (see :class:`TaggedExtractor`); the other
formats emit a call only once it is complete and parses. A call that is malformed before it starts becomes
content; every malformed call is counted in ``malformed``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pitstop.tools.call_scanner import CallScanner


@dataclass(frozen=True)
class ParsedCall:
    """One tool call as the model wrote it: the function name and its arguments as a JSON text."""

    name: str
    arguments: str


@dataclass
class StreamEvent:
    """What an extractor emits: ``content`` text; or, for call ``index`` (0-based), its start (``name`` set,
    once, before any of its arguments) or a fragment ``args`` of its arguments text."""

    content: str = ""
    index: int = -1
    name: str | None = None
    args: str | None = None

    @property
    def is_content(self) -> bool:
        return self.index < 0


def calls_of(events: list[StreamEvent]) -> list[ParsedCall]:
    """The calls the events describe, their argument fragments joined, by index."""
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    for e in events:
        if e.name is not None:
            names[e.index] = e.name
        if e.args is not None:
            args.setdefault(e.index, []).append(e.args)
    return [ParsedCall(names[i], "".join(args.get(i, []))) for i in sorted(names)]


def content_of(events: list[StreamEvent]) -> str | None:
    """The content the events carry (None when there is none and calls were made)."""
    content = "".join(e.content for e in events if e.is_content)
    return content if content or not any(e.name is not None for e in events) else None


@dataclass
class Extracted:
    """The result of a whole text: content (None when only calls were made), calls, malformed call count."""

    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)
    malformed: int = 0


def dump_arguments(args: Any) -> str:
    """Arguments as OpenAI sends them: a JSON text (non-ASCII kept, no trailing spaces)."""
    return json.dumps(args, ensure_ascii=False)


def call_from_object(obj: Any, tool_names: set[str] | None, args_keys: Sequence[str] = ("arguments",)
                     ) -> ParsedCall | None:
    """``{"name": str, "arguments": {...}}`` -> ParsedCall, or None if it is not a valid call (no name, a name
    not among ``tool_names`` when given, arguments not an object)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    if tool_names is not None and obj["name"] not in tool_names:
        return None
    key = next((k for k in args_keys if k in obj), None)
    args = {} if key is None else obj[key]
    if isinstance(args, str):  # some models write the arguments as a JSON text
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], dump_arguments(args))


class Extractor(ABC):
    """Incremental extractor of one completion: ``feed`` text deltas, then ``finish`` once."""

    def __init__(self) -> None:
        self.num_calls = 0
        self.malformed = 0
        self._pending_ws = ""
        self._streaming: CallScanner | None = None  # the call whose arguments are being streamed
        self._sent = 0  # characters of its arguments already sent

    @abstractmethod
    def feed(self, text: str) -> list[StreamEvent]:
        """Events made complete by ``text`` (content may be held back while it could start a call)."""

    @abstractmethod
    def finish(self) -> list[StreamEvent]:
        """Events of whatever is held at the end of the text (an unfinished call becomes content)."""

    def _content(self, text: str) -> list[StreamEvent]:
        """Content, with trailing whitespace held until more content follows (dropped before a call)."""
        text = self._pending_ws + text
        body = text.rstrip()
        self._pending_ws = text[len(body):]
        return [StreamEvent(content=body)] if body else []

    def _call(self, call: ParsedCall) -> list[StreamEvent]:
        """A complete call: its start and all of its arguments."""
        return self._start(call.name) + [StreamEvent(index=self.num_calls - 1, args=call.arguments)]

    def _stream_call(self, scan: CallScanner) -> list[StreamEvent]:
        """``scan``'s call while it is written: its start the first time it can stream, then the argument text
        not yet sent."""
        if not scan.streaming:
            return []
        events = []
        if scan is not self._streaming:
            self._streaming, self._sent = scan, 0
            events += self._start(scan.name or "")
        chunk = scan.args_text()[self._sent:]
        if chunk:
            self._sent += len(chunk)
            events.append(StreamEvent(index=self.num_calls - 1, args=chunk))
        return events

    def _start(self, name: str) -> list[StreamEvent]:
        """The start of the next call (its arguments follow as ``args`` events of the same index)."""
        self._pending_ws = ""
        self.num_calls += 1
        return [StreamEvent(index=self.num_calls - 1, name=name)]

    def _flush_ws(self) -> list[StreamEvent]:
        """At the end: held whitespace is content only when no call was made."""
        ws, self._pending_ws = self._pending_ws, ""
        return [StreamEvent(content=ws)] if ws and self.num_calls == 0 else []


class TaggedExtractor(Extractor):
    """Calls between ``start`` and ``end`` tags (Hermes ``<tool_call>...</tool_call>``); text outside them is
    content, streamed as it comes except a tail that could be the start of ``start``.

    A call whose body is a JSON object is followed by a :class:`~pitstop.tools.call_scanner.CallScanner`: once its
    ``name`` (one of ``names``) is read and its arguments object has begun, the call starts and its arguments' raw
    text is sent as it arrives (except a tail that could be the start of ``end``). Such a call ends valid when its
    arguments object closes and parses, whatever follows it before ``end``; otherwise (the text stops, or the JSON
    breaks, after the start was sent) it keeps the arguments sent so far and counts in ``malformed``. A body that
    never starts a call (no known name before the arguments end, arguments written as a string, not JSON) is
    parsed whole at ``end`` by ``parse``: a call, or content counted in ``malformed``.
    """

    def __init__(self, start: str, end: str, parse: Callable[[str], list[ParsedCall] | None],
                 names: set[str] | None = None, args_keys: Sequence[str] = ("arguments",)) -> None:
        super().__init__()
        self.start, self.end, self.parse = start, end, parse
        self.names, self.args_keys = names, tuple(args_keys)
        self._buf = ""
        self._in_call = False
        self._scan: CallScanner | None = None

    def feed(self, text: str) -> list[StreamEvent]:
        self._buf += text
        events: list[StreamEvent] = []
        while True:
            if not self._in_call:
                i = self._buf.find(self.start)
                if i < 0:
                    keep = _partial_suffix(self._buf, self.start)
                    events += self._content(self._buf[:len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    return events
                events += self._content(self._buf[:i])
                self._buf, self._in_call = self._buf[i + len(self.start):], True
            j = self._buf.find(self.end)
            if j < 0:
                return events + self._follow(self._buf[:len(self._buf) - _partial_suffix(self._buf, self.end)])
            events += self._follow(self._buf[:j]) + self._close(self._buf[:j], self.end)
            self._buf, self._in_call = self._buf[j + len(self.end):], False

    def finish(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._in_call:
            events += self._follow(self._buf) + self._close(self._buf, "")
        else:
            events += self._content(self._buf)
        self._buf, self._in_call = "", False
        return events + self._flush_ws()

    def _follow(self, body: str) -> list[StreamEvent]:
        """Scan the call body seen so far; the call's start and new argument text once they can be sent."""
        if self._scan is None:
            self._scan = CallScanner(self.names, self.args_keys)
        self._scan.feed(body[len(self._scan.text):])
        return self._stream_call(self._scan)

    def _close(self, body: str, end: str) -> list[StreamEvent]:
        scan, self._scan = self._scan, None
        if scan is not None and scan is self._streaming:  # the call started: its arguments were sent
            if not scan.args_complete():
                self.malformed += 1
            return []
        calls = self.parse(body)
        if not calls:
            self.malformed += 1
            return self._content(self.start + body + end)
        return [e for c in calls for e in self._call(c)]


class WholeExtractor(Extractor):
    """The whole completion is the call list when it starts (after whitespace) with one of ``prefixes``
    (pythonic ``[f(x=1)]``, Llama 3 JSON ``{"name": ...}``, a constrained JSON array): then it is held to the
    end and parsed; otherwise it is content, streamed as it comes."""

    def __init__(self, prefixes: Sequence[str], parse: Callable[[str], list[ParsedCall] | None]) -> None:
        super().__init__()
        self.prefixes, self.parse = tuple(prefixes), parse
        self._buf = ""
        self._mode: str | None = None  # None: undecided, "calls" or "content"

    def feed(self, text: str) -> list[StreamEvent]:
        if self._mode == "content":
            return self._content(text)
        self._buf += text
        if self._mode is None:
            head = self._buf.lstrip()
            if any(head.startswith(p) for p in self.prefixes):
                self._mode = "calls"
            elif head and not any(p.startswith(head) for p in self.prefixes):
                self._mode = "content"
                buf, self._buf = self._buf, ""
                return self._content(buf)
        return []

    def finish(self) -> list[StreamEvent]:
        buf, self._buf = self._buf, ""
        if self._mode == "calls":
            calls = self.parse(buf)
            if calls:
                return [e for c in calls for e in self._call(c)]
            self.malformed += 1
        return self._content(buf) + self._flush_ws()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def collect(extractor: Extractor, text: str) -> Extracted:
    """Run ``extractor`` over the whole ``text``: the non-streaming result."""
    events = extractor.feed(text) + extractor.finish()
    return Extracted(content_of(events), calls_of(events), extractor.malformed)


class ToolParser(ABC):
    """A model family's tool-call format: how calls are written, parsed, and described in a prompt.

    Attributes:
        name: the registry name (``--tool-call-parser``).
    """

    name: str = ""

    @abstractmethod
    def extractor(self, tool_names: set[str] | None = None) -> Extractor:
        """A fresh streaming extractor; calls to names outside ``tool_names`` (when given) are malformed."""

    def extract(self, text: str, tool_names: set[str] | None = None) -> Extracted:
        """Content and calls of a whole completion (the streaming extractor fed all of ``text``)."""
        return collect(self.extractor(tool_names), text)

    @abstractmethod
    def system_prompt(self, tools: list[dict]) -> str:
        """Instructions and tool definitions for a chat template without a tools section."""

    @abstractmethod
    def render_calls(self, calls: list[ParsedCall]) -> str:
        """An earlier assistant turn's calls, as this format writes them (for templates without tools)."""

    def auto_grammar(self, call_schema: dict, parallel: bool) -> str | None:
        """A Lark grammar (llguidance's dialect) of a reply under ``tool_choice="auto"``: free text with calls in
        this format, each call's JSON constrained by ``call_schema`` (at most one call unless ``parallel``).
        None: this format has no such grammar (then ``strict`` tools cannot be enforced under ``auto``)."""
        return None

    def render_result(self, content: str, name: str | None) -> dict:
        """A ``role: tool`` message for a template without tools: a user turn wrapping the result."""
        label = f' name="{name}"' if name else ""
        return {"role": "user", "content": f"<tool_response{label}>\n{content}\n</tool_response>"}


def tool_list_json(tools: list[dict]) -> str:
    """One JSON line per tool (OpenAI's ``{"type": "function", "function": {...}}``)."""
    return "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def functions_prompt(tools: list[dict], how_to_call: str) -> str:
    """A plain tool prompt: the tools, one JSON line each, then ``how_to_call``, else plain text."""
    return ("You have access to the following functions, one JSON object per line:\n" + tool_list_json(tools) +
            "\n\n" + how_to_call + " Otherwise answer in plain text.")
