"""A tiny MCP server for tests/test_agents_mcp.py: ``add(a, b)`` and ``echo(text)``; stdio, or streamable HTTP on
127.0.0.1 with the port as the argument."""

import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("pitstop-test-echo", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Returns the text unchanged."""
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1:
        server.settings.port = int(sys.argv[1])
        server.run("streamable-http")
    else:
        server.run("stdio")
