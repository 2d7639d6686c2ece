"""MCP tools through pitstop.agents.mcp_client: a FastMCP server (tests/mcp_echo_server.py) over stdio."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from pitstop.agents.mcp_client import MCPClient, MCPServer  # noqa: E402
from pitstop.agents.tools import ToolError, ToolRegistry  # noqa: E402

SERVER = MCPServer(command=sys.executable, args=(str(Path(__file__).with_name("mcp_echo_server.py")),),
                   timeout_s=20.0)


async def _session_checks(server: MCPServer) -> None:
    async with MCPClient(server) as client:
        tools = ToolRegistry(await client.list_tools())
        assert sorted(tools.names()) == ["add", "echo"]
        add, echo = tools.get("add"), tools.get("echo")
        assert add.description == "Adds two integers."
        assert add.parameters["type"] == "object"
        assert add.parameters["required"] == ["a", "b"]
        assert {k: v["type"] for k, v in add.parameters["properties"].items()} == {"a": "integer", "b": "integer"}
        assert echo.parameters["required"] == ["text"]
        assert echo.parameters["properties"]["text"]["type"] == "string"
        assert add.openai_spec()["function"]["name"] == "add"

        assert await add.call({"a": 2, "b": 40}) == "42"
        assert await echo.call({"text": "hi there"}) == "hi there"
        # both calls in flight on one session at once
        assert await asyncio.gather(add.call({"a": 1, "b": 1}), echo.call({"text": "x"})) == ["2", "x"]
        with pytest.raises(ToolError, match="a"):
            await add.call({"a": "not a number", "b": 1})
        with pytest.raises(ToolError):
            await add.call({"b": 1})
        assert await echo.call({"text": "still alive"}) == "still alive"  # the session survived the errors


def test_mcp_stdio_server_tools_list_and_call() -> None:
    asyncio.run(_session_checks(SERVER))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the MCP HTTP server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"MCP HTTP server not listening on {port}")


def test_mcp_streamable_http_server_tools_list_and_call() -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, SERVER.args[0], str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        asyncio.run(_session_checks(MCPServer(url=f"http://127.0.0.1:{port}/mcp", timeout_s=20.0)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_mcp_server_config_needs_exactly_one_transport() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MCPServer()
    with pytest.raises(ValueError, match="exactly one"):
        MCPServer(command="x", url="http://localhost:1/mcp")


def test_mcp_client_outside_async_with_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="not connected"):
        MCPClient(SERVER).session


async def _plan_over_mcp() -> None:
    from pitstop.agents.planner import Planner

    def scripted(replies: list[str], seen: list[list[dict[str, str]]]):  # noqa: ANN202
        """A fake model streaming ``replies`` (one per call, the last repeating) line by line."""

        async def llm(messages: list[dict[str, str]]):  # noqa: ANN202
            seen.append(messages)
            for line in replies[min(len(seen), len(replies)) - 1].splitlines(keepends=True):
                yield line
        return llm

    joiner_seen: list[list[dict[str, str]]] = []
    plan = '1. add(2, 3)\n2. add($1, b=10)\n3. echo("sum is $2")\n4. add("x", 1)\n5. join()\n'
    async with MCPClient(SERVER) as client:
        tools = ToolRegistry(await client.list_tools())
        planner = Planner(scripted([plan], []), tools, joiner=scripted(["Final Answer: 15"], joiner_seen))
        res = await planner.run("what is 2 + 3 + 10?")
    t = res.rounds[0].tasks
    assert [r.result for r in t[:3]] == ["5", "15", "sum is 15"]
    assert t[1].arguments == {"a": "5", "b": 10}  # a result is text; the server's schema coerces it
    assert t[3].error is not None and "a" in t[3].error
    assert res.answer == "15" and "3. echo -> sum is 15" in joiner_seen[0][-1]["content"]


def test_planner_runs_a_plan_over_mcp_tools() -> None:
    asyncio.run(_plan_over_mcp())
