"""Tools an agent can call: a ``Tool`` (name, description, JSON Schema parameters, ``async call``), the ``@tool``
decorator that makes one of a typed Python function, and a ``ToolRegistry`` (name -> tool).

The parameters' JSON Schema comes from the signature's type hints through pydantic (a model with one field per
parameter, ``extra="forbid"`` -> ``additionalProperties: false``; required = the parameters without defaults),
their descriptions from the docstring's ``Args:`` section. ``call`` validates the arguments with the same pydantic
model, so what the schema promises is what the function gets.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

import pydantic
import pydantic_core
from pydantic.json_schema import GenerateJsonSchema

from pitstop.agents.docstring import arg_docs, summary


class ToolError(Exception):
    """A tool call that failed in a way the model should hear about: invalid arguments, an unknown tool, the tool
    raising, an MCP server's ``isError`` result. The message is written for the model."""


@dataclass
class Tool(ABC):
    """A callable tool (abstract: subclasses implement ``call``).

    Attributes:
        name: the name the model calls it by.
        description: what it does, for the model.
        parameters: the JSON Schema (an object schema) of its arguments.
    """

    name: str
    description: str
    parameters: dict[str, Any]

    def openai_spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {name, description, parameters}}``."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    @abstractmethod
    async def call(self, arguments: dict[str, Any]) -> str:
        """Runs the tool; its result as text.

        Raises:
            ToolError: invalid arguments, or the tool failed.
        """


class _NoFieldTitles(GenerateJsonSchema):
    """pydantic's JSON Schema without the per-field ``title`` (noise in a prompt)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


@dataclass
class FunctionTool(Tool):
    """A Python function (sync or async) as a tool. Sync functions run in a worker thread
    (``asyncio.to_thread``) so that a slow one does not stop the event loop (and other tools running beside it).

    Attributes:
        fn: the function.
        model: the pydantic model of its arguments (validation and ``parameters``).
    """

    fn: Callable[..., Any] = field(repr=False)
    model: type[pydantic.BaseModel] = field(repr=False)

    async def call(self, arguments: dict[str, Any] | str) -> str:
        """Validates ``arguments`` (a dict, or its JSON text) and runs the function; a non-string result is
        rendered as JSON.

        Raises:
            ToolError: the arguments are not JSON / not an object / do not validate (pydantic's message), or the
                function raised (its type and message; the exception is the ``__cause__``).
        """
        kwargs = self._validate(arguments)
        try:
            if _is_async(self.fn):
                result = await self.fn(**kwargs)
            else:
                result = await asyncio.to_thread(self.fn, **kwargs)
        except ToolError:
            raise
        except Exception as e:  # noqa: BLE001 - the model hears about any failure of the tool
            raise ToolError(f"tool {self.name!r} failed: {type(e).__name__}: {e}") from e
        return render_result(result)

    def _validate(self, arguments: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolError(f"invalid arguments for tool {self.name!r}: not JSON ({e})") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"invalid arguments for tool {self.name!r}: expected an object, "
                            f"got {type(arguments).__name__}")
        try:
            validated = self.model.model_validate(arguments)
        except pydantic.ValidationError as e:
            raise ToolError(f"invalid arguments for tool {self.name!r}: {_errors(e)}") from None
        return {name: getattr(validated, name) for name in self.model.model_fields}


def _is_async(fn: Callable[..., Any]) -> bool:
    """An ``async def`` function or method, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _errors(e: pydantic.ValidationError) -> str:
    """pydantic's errors, one per argument, without its documentation links."""
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def render_result(result: Any) -> str:
    """A tool's return value as text: strings as they are, ``None`` as '', anything else as JSON (pydantic
    serialises models, dataclasses, dates...)."""
    if isinstance(result, str):
        return result
    if result is None:
        return ""
    return pydantic_core.to_json(result).decode()


def _arguments_model(fn: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    """A pydantic model with one field per parameter of ``fn`` (missing hints are ``Any``).

    Raises:
        TypeError: ``fn`` takes ``*args`` or ``**kwargs`` (no fixed schema).
    """
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else fn.__call__  # a callable object
    sig = inspect.signature(target)
    hints = get_type_hints(target, include_extras=True)
    docs = arg_docs(target.__doc__)
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args / **kwargs have no JSON Schema; name each parameter")
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), pydantic.Field(default, description=docs.get(p.name)))
    config = pydantic.ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a parameter named like a BaseModel attribute ("json", "schema") is fine
        return pydantic.create_model(f"{name}_arguments", __config__=config, **fields)


def _schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_NoFieldTitles)
    schema.pop("title", None)
    schema.setdefault("required", [])
    schema["additionalProperties"] = False
    return schema


def make_tool(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> FunctionTool:
    """``fn`` (a function, a bound method, or an object with a typed ``__call__``) as a ``FunctionTool``: name
    (default ``fn.__name__``, else the class name), description (default the docstring's first
    paragraph), parameters from the type hints and the docstring's ``Args:``.

    Raises:
        TypeError: ``fn`` takes ``*args`` / ``**kwargs``, or a type hint has no JSON Schema (pydantic's message).
    """
    name = name or getattr(fn, "__name__", type(fn).__name__)
    model = _arguments_model(fn, name)
    try:
        parameters = _schema(model)
    except pydantic.PydanticInvalidForJsonSchema as e:
        raise TypeError(f"tool {name!r}: a parameter's type has no JSON Schema: {e}") from None
    doc = fn.__doc__ if inspect.isfunction(fn) or inspect.ismethod(fn) else (fn.__call__.__doc__ or fn.__doc__)
    desc = summary(doc) if description is None else description
    return FunctionTool(name=name, description=desc, parameters=parameters, fn=fn, model=model)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         description: str | None = None) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` turns a typed function into a
    ``FunctionTool`` (see ``make_tool``; the same errors)."""
    if fn is not None:
        return make_tool(fn)
    return lambda f: make_tool(f, name=name, description=description)


class ToolRegistry:
    """Tools by name.

    Raises:
        ValueError: (``add``, the constructor) two tools with the same name.
    """

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self._tools:
            raise ValueError(f"duplicate tool name {t.name!r}")
        self._tools[t.name] = t

    def get(self, name: str) -> Tool:
        """Raises ``ToolError`` (for the model) naming the known tools when ``name`` is not one."""
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(self._tools)}") from None

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """``get(name).call(arguments)``; raises ``ToolError`` as those do."""
        return await self.get(name).call(arguments)

    def openai_specs(self) -> list[dict[str, Any]]:
        return [t.openai_spec() for t in self._tools.values()]

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)
