"""What one agent may do: which tools it may call and which paths it may read and write.

:class:`Permissions` is frozen (tuples and frozensets inside): nothing an agent reads, a tool's output included,
can widen it; :func:`untrusted` marks tool outputs as data for the model's context.

Paths are compared after ``Path.resolve()`` (absolute, ``..`` removed, symlinks followed), so neither ``..``
nor a symlink leads outside an allowed directory. Relative paths resolve against the current directory. The
check happens before the tool runs: a symlink swapped in between the check and the use is not caught.

Where this holds: for tools that take paths as arguments and check them before the call. An arbitrary shell
command (:mod:`pitstop.agents.shell_tool`) cannot be checked before the call: it is confined to its write
paths (and its temporary directory) only where the sandbox has its own mount namespace
(``SandboxResult.writes_confined``); otherwise it can write wherever the server's user can. Read paths are not
enforced for shell commands at all.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Action = Literal["call tool", "read", "write"]


class PermissionDenied(PermissionError):
    """A refused tool call or file access (a tool error: the model is told, the agent loop goes on).

    agent: whose permissions refused; action: "call tool", "read" or "write"; target: the tool name or the
    resolved path; reason: why, in words.
    """

    def __init__(self, agent: str, action: Action, target: str, reason: str) -> None:
        self.agent, self.action, self.target, self.reason = agent, action, target, reason
        super().__init__(f"permission denied: agent {agent!r} may not {action} {target!r}: {reason}")


def _resolved(paths: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in paths)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


@dataclass(frozen=True)
class Permissions:
    """One agent's allowlists (anything not listed is refused).

    agent: a name for messages and logs. tools: tool names it may call. read_paths / write_paths:
    directories (or files) it may read / write, with everything below them; a write path is also readable.
    Paths are resolved at construction (``Path.resolve()``); any iterable of ``str`` or ``PathLike`` works.
    """

    agent: str = "agent"
    tools: frozenset[str] = field(default_factory=frozenset)
    read_paths: tuple[Path, ...] = ()
    write_paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", frozenset(self.tools))
        object.__setattr__(self, "read_paths", _resolved(self.read_paths))
        object.__setattr__(self, "write_paths", _resolved(self.write_paths))

    def check_tool(self, name: str) -> None:
        """Raises PermissionDenied unless tool ``name`` is allowed."""
        if name not in self.tools:
            allowed = ", ".join(sorted(self.tools)) or "none"
            raise PermissionDenied(self.agent, "call tool", name, f"not in its tools ({allowed})")

    def check_read(self, path: str | os.PathLike[str]) -> Path:
        """``path`` resolved, when it is under a read or write path; else raises PermissionDenied."""
        resolved = Path(path).resolve()
        if not _inside(resolved, self.read_paths + self.write_paths):
            raise PermissionDenied(self.agent, "read", str(resolved), "outside its read paths")
        return resolved

    def check_write(self, path: str | os.PathLike[str]) -> Path:
        """``path`` resolved, when it is under a write path; else raises PermissionDenied."""
        resolved = Path(path).resolve()
        if not _inside(resolved, self.write_paths):
            raise PermissionDenied(self.agent, "write", str(resolved), "outside its write paths")
        return resolved


def refusal_message(denied: PermissionDenied, log: logging.Logger | None = None) -> str:
    """The tool error text the model gets for ``denied``; the refusal is logged (WARNING) on ``log``."""
    (log or logger).warning("agent %r refused: %s %s (%s)", denied.agent, denied.action, denied.target,
                            denied.reason)
    return f"error: {denied}"


_MARKER = re.compile(r"<(\s*/?\s*tool_output)", re.IGNORECASE)


def untrusted(text: str, tool_name: str) -> str:
    """``text`` (a tool's output) wrapped for the model's context as data:
    ``<tool_output tool="NAME" trust="untrusted">TEXT</tool_output>``. Any opening or closing
    ``tool_output`` tag inside ``text`` has its ``<`` escaped (``&lt;``), so the output cannot end its own
    block or open one with another trust; quotes and ``&<>`` in the tool name are escaped."""
    name = (tool_name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))
    body = _MARKER.sub(r"&lt;\1", text)
    return f'<tool_output tool="{name}" trust="untrusted">{body}</tool_output>'
