"""The built-in ``shell`` tool: one shell command, run in the sandbox (:mod:`pitstop.agents.sandbox`).

Its output is stdout when the command succeeds, else an ``error: ...`` text (exit code or signal, the limit
hit, the ends of stdout and stderr): a failure is what the model reads, never an exception. The command runs
in a fresh temporary directory; see :mod:`pitstop.agents.permissions` for how far write permissions hold.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pitstop.agents.permissions import Permissions, PermissionDenied, refusal_message
from pitstop.agents.sandbox import Sandbox

NAME = "shell"
DESCRIPTION = ("Run one POSIX shell command (/bin/sh -c) in a fresh temporary directory, without network "
               "where available, under CPU, memory, time and output limits. Returns its stdout, or an error.")
_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"command": {"type": "string"}},
    "required": ["command"],
    "additionalProperties": False,
}


def parameters_schema() -> dict[str, Any]:
    """The JSON Schema of the tool's arguments (a fresh copy)."""
    return copy.deepcopy(_PARAMETERS)


def tool_spec() -> dict[str, Any]:
    """The tool as an OpenAI ``tools`` entry."""
    return {"type": "function",
            "function": {"name": NAME, "description": DESCRIPTION, "parameters": parameters_schema()}}


@dataclass
class ShellTool:
    """The ``shell`` tool bound to a sandbox and, optionally, an agent's permissions: ``check_tool("shell")``
    before each call, and its write paths are the command's (everything else read-only only where the result
    says ``writes_confined``; a shell command's paths cannot be checked before the call)."""

    sandbox: Sandbox = field(default_factory=Sandbox)
    permissions: Permissions | None = None

    def __call__(self, command: str) -> str:
        """Run ``command``; stdout or the error text. Never raises for the command or a refusal."""
        if self.permissions is not None:
            try:
                self.permissions.check_tool(NAME)
            except PermissionDenied as denied:
                return refusal_message(denied)
        writable = None if self.permissions is None else self.permissions.write_paths
        return self.sandbox.run_shell(command, write_paths=writable).to_tool_message()


def shell(command: str, sandbox: Sandbox | None = None) -> str:
    """Run ``command`` in ``sandbox`` (a new default one, which probes isolation, when None); stdout or the
    error text."""
    return ShellTool(sandbox or Sandbox())(command)
