"""pitstop.agents.tools: the JSON Schema the @tool decorator derives from a typed function (pydantic), argument
validation (ToolError), sync and async functions, the registry."""

from __future__ import annotations

import asyncio
import threading
from typing import Literal

import pydantic
import pytest

from pitstop.agents.tools import FunctionTool, ToolError, ToolRegistry, tool


class Point(pydantic.BaseModel):
    x: int
    y: int = 0


@tool
async def forecast(city: str, days: int = 3, tags: list[str] | None = None, unit: Literal["c", "f"] = "c",
                   at: Point | None = None) -> dict:
    """Weather forecast for a city.

    Uses the forecast service; this paragraph is not in the description.

    Args:
        city: the city's name,
            in English.
        days (int): how many days, 1 to 7.
        unit: degrees Celsius or Fahrenheit.
    """
    return {"city": city, "days": days, "tags": tags, "unit": unit, "at": at}


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


def test_schema_from_type_hints_and_docstring() -> None:
    assert isinstance(forecast, FunctionTool)
    assert forecast.name == "forecast"
    assert forecast.description == "Weather forecast for a city."
    p = forecast.parameters
    assert p["type"] == "object" and p["additionalProperties"] is False
    assert p["required"] == ["city"]
    props = p["properties"]
    assert list(props) == ["city", "days", "tags", "unit", "at"]
    assert props["city"] == {"type": "string", "description": "the city's name, in English."}
    assert props["days"] == {"type": "integer", "default": 3, "description": "how many days, 1 to 7."}
    assert props["tags"]["anyOf"] == [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]
    assert props["unit"]["enum"] == ["c", "f"] and props["unit"]["description"].startswith("degrees")
    assert props["at"]["anyOf"][0] == {"$ref": "#/$defs/Point"}
    point = p["$defs"]["Point"]
    assert point["required"] == ["x"] and set(point["properties"]) == {"x", "y"}
    assert "title" not in props["city"]


def test_openai_spec_shape() -> None:
    spec = forecast.openai_spec()
    assert spec == {"type": "function", "function": {"name": "forecast", "description": forecast.description,
                                                     "parameters": forecast.parameters}}


def test_call_validates_and_converts_arguments() -> None:
    out = _run(forecast.call({"city": "Oslo", "days": 2, "tags": ["a"], "at": {"x": 1}}))
    assert out == '{"city":"Oslo","days":2,"tags":["a"],"unit":"c","at":{"x":1,"y":0}}'
    assert _run(forecast.call('{"city": "Rome"}')).startswith('{"city":"Rome","days":3')  # JSON text works too


@pytest.mark.parametrize("args, where", [
    ({}, "city: Field required"),
    ({"city": "Oslo", "days": "many"}, "days:"),
    ({"city": "Oslo", "unit": "k"}, "unit:"),
    ({"city": "Oslo", "tags": "a"}, "tags:"),
    ({"city": "Oslo", "at": {"y": 1}}, "at.x: Field required"),
    ({"city": "Oslo", "country": "NO"}, "country: Extra inputs are not permitted"),
    ("not json", "not JSON"),
    ([1, 2], "expected an object"),
])
def test_invalid_arguments_raise_tool_error(args, where: str) -> None:  # noqa: ANN001
    with pytest.raises(ToolError, match="invalid arguments for tool 'forecast'") as e:
        _run(forecast.call(args))
    assert where in str(e.value)
    assert "errors.pydantic.dev" not in str(e.value)


def test_sync_tool_runs_off_the_event_loop_and_errors_become_tool_errors() -> None:
    @tool(name="divide", description="a / b")
    def div(a: float, b: float) -> float:
        assert threading.current_thread() is not threading.main_thread()
        return a / b

    assert div.name == "divide" and div.description == "a / b"
    assert div.parameters["required"] == ["a", "b"]
    assert _run(div.call({"a": 1, "b": 4})) == "0.25"
    with pytest.raises(ToolError, match="tool 'divide' failed: ZeroDivisionError") as e:
        _run(div.call({"a": 1, "b": 0}))
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_variadic_parameters_are_refused() -> None:
    with pytest.raises(TypeError, match=r"\*args"):
        @tool
        def f(*xs: int) -> int:
            return sum(xs)


def test_registry_lookup_duplicates_and_unknown_names() -> None:
    @tool
    def ping() -> str:
        """Pong."""
        return "pong"

    reg = ToolRegistry([forecast, ping])
    assert reg.names() == ["forecast", "ping"] and len(reg) == 2 and "ping" in reg
    assert ping.parameters == {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    assert _run(reg.call("ping", {})) == "pong"
    with pytest.raises(ValueError, match="duplicate tool name 'ping'"):
        reg.add(ping)
    with pytest.raises(ToolError, match="unknown tool 'pong'; the tools are: forecast, ping"):
        reg.get("pong")
    assert [s["function"]["name"] for s in reg.openai_specs()] == ["forecast", "ping"]


def test_callable_objects_and_bound_methods_are_tools() -> None:
    from dataclasses import dataclass

    from pitstop.agents.tools import make_tool

    @dataclass
    class Shell:
        prefix: str = "$ "

        def __call__(self, command: str, timeout_s: float = 5.0) -> str:
            """Runs one command.

            Args:
                command: the shell command.
            """
            return self.prefix + command

        def upper(self, text: str) -> str:
            """Upper-cases text."""
            return text.upper()

    sh = make_tool(Shell(), name="shell")
    assert sh.description == "Runs one command."
    assert sh.parameters["required"] == ["command"] and list(sh.parameters["properties"]) == ["command", "timeout_s"]
    assert sh.parameters["properties"]["command"]["description"] == "the shell command."
    assert _run(sh.call({"command": "ls"})) == "$ ls"
    up = make_tool(Shell().upper)
    assert (up.name, up.description, up.parameters["required"]) == ("upper", "Upper-cases text.", ["text"])
    assert _run(up.call({"text": "a"})) == "A"

    class Later:
        async def __call__(self, n: int) -> int:
            await asyncio.sleep(0)
            return n + 1

    assert _run(make_tool(Later()).call({"n": 1})) == "2"
