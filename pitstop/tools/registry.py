"""The tool-call parsers by name (``--tool-call-parser``), and the one a chat template implies."""

from __future__ import annotations

from pitstop.tools.base import ToolParser
from pitstop.tools.hermes import HermesParser
from pitstop.tools.llama3_json import Llama3JsonParser
from pitstop.tools.pythonic import PythonicParser

PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesParser, Llama3JsonParser, PythonicParser)}
DEFAULT_PARSER = "hermes"


def get_parser(name: str) -> ToolParser:
    """The parser called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(sorted(PARSERS))}") from None


def infer_parser(chat_template: str | None) -> str:
    """The parser whose format ``chat_template`` writes: ``<tool_call>`` -> hermes, ``<|python_tag|>`` or a
    ``"parameters"`` call example -> llama3_json, a ``[func_name1(`` example -> pythonic; else hermes (the
    format pitstop then renders into the system prompt)."""
    t = chat_template or ""
    if "<tool_call>" in t:
        return "hermes"
    if "[func_name1(" in t or "[func_name(" in t:
        return "pythonic"
    if "<|python_tag|>" in t or '"parameters": dictionary' in t:
        return "llama3_json"
    return DEFAULT_PARSER


def template_has_tools(chat_template: str | None) -> bool:
    """The chat template renders a ``tools`` list itself (else pitstop writes them into the system prompt)."""
    return bool(chat_template) and "tools" in chat_template
