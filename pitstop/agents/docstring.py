"""Google-style docstrings -> a tool's description and its parameters' descriptions.

``summary`` is the first paragraph (lines up to the first blank line, joined by spaces); ``arg_docs`` reads the
``Args:`` section (``Arguments:`` and ``Parameters:`` too): ``name: text`` or ``name (type): text``, continuation
lines indented deeper than the name, the section ending at the first non-blank line indented no deeper than its
header.
"""

from __future__ import annotations

import inspect
import re

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^(\s*)\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def summary(doc: str | None) -> str:
    """The docstring's first paragraph on one line ('' for no docstring)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    return " ".join(first)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def arg_docs(doc: str | None) -> dict[str, str]:
    """Each documented parameter's description (continuation lines joined by spaces)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    header = next((i for i, line in enumerate(lines) if _SECTION.match(line)), None)
    if header is None:
        return out
    base = _indent(lines[header])
    entry_indent: int | None = None
    name: str | None = None
    for line in lines[header + 1:]:
        if not line.strip():
            continue
        if _indent(line) <= base:
            break
        m = _ENTRY.match(line)
        if m and (entry_indent is None or _indent(line) == entry_indent):
            entry_indent, name = _indent(line), m.group(2)
            out[name] = m.group(3).strip()
        elif name is not None:
            out[name] = f"{out[name]} {line.strip()}".strip()
    return out
