"""Infer which tool an agent will run from the text of its turn, when the client did not say.

Recognised formats (first match wins): Hermes/Qwen ``<tool_call>{"name": "X", ...}</tool_call>``,
OpenAI-style JSON ``{"name": "X", "arguments": ...}``, and ReAct ``Action: X``.
"""

from __future__ import annotations

import re

_PATTERNS = [
    re.compile(r"<tool_call>\s*\{\s*\"name\"\s*:\s*\"([^\"]+)\""),
    re.compile(r"\{\s*\"name\"\s*:\s*\"([^\"]+)\"\s*,\s*\"(?:arguments|parameters)\""),
    re.compile(r"^\s*Action\s*:\s*([A-Za-z_][\w.-]*)", re.MULTILINE),
]


def infer_tool_name(text: str) -> str | None:
    """The tool named by a tool call in ``text``, or None if no recognisable call is there."""
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None
