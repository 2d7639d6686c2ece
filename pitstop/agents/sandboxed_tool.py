"""A non-trusted Python function as a tool: its schema from its type hints (``make_tool``), each call in the
sandbox (:meth:`pitstop.agents.sandbox.Sandbox.run_callable`: a child Python under limits, without network where
the kernel allows it), from a worker thread so the event loop keeps running.

The function gets its validated arguments as JSON values (what pydantic's JSON mode makes of them) and its return
value comes back as JSON; a call that fails (an exception, a limit) is a ``ToolError`` with the sandbox's text.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from pitstop.agents.call_runner import load
from pitstop.agents.sandbox import Sandbox
from pitstop.agents.tools import FunctionTool, ToolError, make_tool, render_result


@dataclass
class SandboxedFunctionTool(FunctionTool):
    """``target`` (``module:function``) called in ``sandbox`` once per tool call.

    Attributes:
        target: what the child imports and calls.
        sandbox: the limits and isolation of every call.
    """

    target: str = ""
    sandbox: Sandbox = field(default_factory=Sandbox, repr=False)

    async def call(self, arguments: dict[str, Any] | str) -> str:
        """Validates ``arguments`` against the function's hints, runs the call in the sandbox; the return value
        as text (a string as it is, anything else as JSON).

        Raises:
            ToolError: invalid arguments, or the call failed (its exit, the limit hit, its stderr's end).
        """
        kwargs = pydantic_core.to_jsonable_python(self._validate(arguments))
        result = await asyncio.to_thread(self.sandbox.run_callable, self.target, kwargs)
        if not result.ok:
            raise ToolError(result.to_tool_message())
        return render_result(_decoded(result.stdout))


def _decoded(stdout: str) -> Any:
    """The child's JSON return value (the raw text when it is not JSON)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return stdout


def sandboxed_tool(target: str, sandbox: Sandbox) -> SandboxedFunctionTool:
    """The tool of ``target`` (``module:function``, imported here for its name, docstring and hints; the calls
    import it again in the child).

    Raises:
        ValueError: a malformed target. ImportError, AttributeError: it does not exist.
        TypeError: its hints have no JSON Schema, or it takes ``*args`` / ``**kwargs``.
    """
    schema = make_tool(load(target))
    return SandboxedFunctionTool(schema.name, schema.description, schema.parameters, fn=schema.fn,
                                 model=schema.model, target=target, sandbox=sandbox)
