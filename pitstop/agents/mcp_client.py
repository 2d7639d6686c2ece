"""Tools from MCP (Model Context Protocol, https://modelcontextprotocol.io) servers, through the official ``mcp``
package (``mcp>=1.9,<2``): ``mcp.ClientSession`` over ``mcp.client.stdio.stdio_client`` (a subprocess speaking
JSON-RPC on stdin/stdout) or ``mcp.client.streamable_http.streamablehttp_client`` (a URL).

    async with MCPClient(MCPServer(command="python", args=("server.py",))) as client:
        tools = await client.list_tools()          # pitstop Tools; call() goes to the server
        print(await tools[0].call({"a": 1}))
"""

from __future__ import annotations

import json
import warnings
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import mcp
from mcp import types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamablehttp_client

from pitstop.agents.tools import Tool, ToolError


@dataclass(frozen=True)
class MCPServer:
    """How to reach one MCP server: a subprocess (``command`` + ``args`` + ``env``; ``env`` None = the ``mcp``
    package's default safe environment) or a streamable-HTTP ``url`` (+ ``headers``).

    Attributes:
        timeout_s: per request (seconds): how long a tool call may take before it fails.

    Raises:
        ValueError: neither or both of ``command`` and ``url``.
    """

    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError("MCPServer: give exactly one of command (stdio) or url (streamable HTTP)")


@dataclass
class MCPTool(Tool):
    """A tool of a connected MCP server; ``call`` is the server's ``tools/call``."""

    session: mcp.ClientSession = field(repr=False)
    timeout_s: float = 60.0

    async def call(self, arguments: dict[str, Any]) -> str:
        """The server's result content as text (``render_content``).

        Raises:
            ToolError: the result has ``isError`` (the server's message: FastMCP reports invalid arguments this
                way), or the request itself failed (``mcp.McpError``: unknown tool, timeout).
        """
        try:
            result = await self.session.call_tool(self.name, arguments,
                                                  read_timeout_seconds=timedelta(seconds=self.timeout_s))
        except mcp.McpError as e:
            raise ToolError(f"tool {self.name!r} failed: {e}") from e
        text = render_content(result)
        if result.isError:
            raise ToolError(text or f"tool {self.name!r} failed")
        return text


def _part(c: Any) -> str:
    if isinstance(c, types.TextContent):
        return c.text
    if isinstance(c, types.EmbeddedResource):
        r = c.resource
        return r.text if isinstance(r, types.TextResourceContents) else f"[resource {r.uri} ({r.mimeType})]"
    mime = getattr(c, "mimeType", None)
    uri = getattr(c, "uri", None)
    return f"[{c.type}{' ' + str(uri) if uri else ''}{' (' + mime + ')' if mime else ''}]"


def render_content(result: types.CallToolResult) -> str:
    """The text parts joined by newlines (embedded text resources count as text; images, audio and links become a
    ``[kind uri (mime)]`` marker); with no content, the structured content as JSON."""
    if not result.content and result.structuredContent is not None:
        return json.dumps(result.structuredContent)
    return "\n".join(_part(c) for c in result.content)


class MCPClient:
    """An async context manager: connects to ``server`` (starts the subprocess / opens the HTTP session),
    initialises the MCP session, and closes both on exit.

    Raises:
        mcp.McpError, OSError: (on enter) the server cannot be started or reached, or its handshake fails.
    """

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self._stack: AsyncExitStack | None = None
        self._session: mcp.ClientSession | None = None

    async def __aenter__(self) -> MCPClient:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            read, write = await stack.enter_async_context(self._transport())
            self._session = await stack.enter_async_context(mcp.ClientSession(read, write))
            await self._session.initialize()
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack, self._session = self._stack, None, None
        if stack is not None:
            await stack.__aexit__(*exc)  # type: ignore[arg-type]

    def _transport(self) -> Any:
        s = self.server
        if s.command is not None:
            return stdio_client(StdioServerParameters(command=s.command, args=list(s.args), env=s.env, cwd=s.cwd))
        with warnings.catch_warnings():
            # deprecated in late 1.x for streamable_http_client (which wants an httpx client); the one API of the
            # whole >=1.9 range
            warnings.simplefilter("ignore", DeprecationWarning)
            return _http_pair(streamablehttp_client(s.url, headers=s.headers))  # type: ignore[arg-type]

    @property
    def session(self) -> mcp.ClientSession:
        """Raises ``RuntimeError`` outside ``async with``."""
        if self._session is None:
            raise RuntimeError("MCPClient is not connected; use it as 'async with MCPClient(...)'")
        return self._session

    async def list_tools(self) -> list[MCPTool]:
        """Every tool of the server (all pages), as pitstop tools bound to this session."""
        out: list[MCPTool] = []
        cursor: str | None = None
        while True:
            page = await (self.session.list_tools(cursor) if cursor else self.session.list_tools())
            out.extend(MCPTool(name=t.name, description=t.description or "", parameters=t.inputSchema,
                               session=self.session, timeout_s=self.server.timeout_s) for t in page.tools)
            cursor = page.nextCursor
            if not cursor:
                return out


class _http_pair:  # noqa: N801 - used like the context manager it wraps
    """``streamablehttp_client`` yields (read, write, get_session_id); this keeps (read, write)."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm

    async def __aenter__(self) -> tuple[Any, Any]:
        read, write, _ = await self._cm.__aenter__()
        return read, write

    async def __aexit__(self, *exc: object) -> Any:
        return await self._cm.__aexit__(*exc)
