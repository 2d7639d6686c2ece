"""A tiny MCP server for tests/test_agents_mcp.py (stdio): ``add(a, b)`` and ``echo(text)``."""

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
    server.run("stdio")
