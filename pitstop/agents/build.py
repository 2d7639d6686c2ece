"""An ``AgentSpec`` made real: its model, its tools (MCP servers connected for the run), its permissions, and the
``Agent`` or ``PlannerAgent`` over them.

    async with build_agent(load_spec("calculator.yaml")) as agent:
        result = await agent.run("What is 12 times 7?")
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from pitstop.agents.agent import SYSTEM_PROMPT, Agent
from pitstop.agents.call_runner import load
from pitstop.agents.chat_model import ChatModel
from pitstop.agents.local_model import LocalChatModel
from pitstop.agents.mcp_client import MCPClient, MCPServer
from pitstop.agents.openai_model import OpenAIChatModel
from pitstop.agents.permissions import Permissions
from pitstop.agents.planner_agent import PlannerAgent
from pitstop.agents.sandbox import Sandbox
from pitstop.agents.sandboxed_tool import sandboxed_tool
from pitstop.agents.shell_tool import DESCRIPTION as SHELL_DESCRIPTION
from pitstop.agents.shell_tool import NAME as SHELL_NAME
from pitstop.agents.shell_tool import ShellTool
from pitstop.agents.spec import AgentSpec, MCPServerSpec, MCPToolSpec, PythonToolSpec, ShellToolSpec
from pitstop.agents.tools import Tool, ToolRegistry, make_tool
from pitstop.sampling_params import SamplingParams

AnyAgent = Agent | PlannerAgent


def build_model(spec: AgentSpec) -> ChatModel:
    """The spec's model: ``OpenAIChatModel`` for an endpoint, else ``LocalChatModel`` over a new in-process
    ``pitstop.LLM`` (loads the weights: seconds to minutes).

    Raises:
        ValueError: the endpoint's ``api_key_env`` is not set, or the engine refuses the settings.
        FileNotFoundError: the model path does not exist.
    """
    if spec.endpoint is not None:
        ep = spec.endpoint
        return OpenAIChatModel(ep.base_url, ep.model, api_key=ep.api_key(), engine_link=ep.engine_link,
                               max_tokens=spec.max_tokens, temperature=spec.temperature)
    from pitstop.entrypoints.llm import LLM  # torch and the weights: only when an in-process model is asked for

    assert spec.model is not None  # the spec's validator: exactly one of model and endpoint
    llm = LLM(model=spec.model_location(), dtype=spec.model.dtype, kv_cache_memory=spec.model.kv_cache_memory,
              max_model_len=spec.model.max_model_len, scheduling_policy=spec.model.scheduling_policy,
              ttl_policy=spec.model.ttl_policy)
    return LocalChatModel(llm, SamplingParams(temperature=spec.temperature, max_tokens=spec.max_tokens))


def mcp_server(spec: AgentSpec, server: MCPServerSpec) -> MCPServer:
    """How to reach ``server``: its working directory resolved against the spec's (default: the spec's
    directory), ``python`` / ``python3`` as this interpreter."""
    if server.url is not None:
        return MCPServer(url=server.url, headers=server.headers, timeout_s=server.timeout_s)
    command = sys.executable if server.command in ("python", "python3") else server.command
    cwd = spec.path(server.cwd) if server.cwd is not None else spec.base_dir
    return MCPServer(command=command, args=tuple(server.args), env=server.env, cwd=str(cwd),
                     timeout_s=server.timeout_s)


async def build_tools(spec: AgentSpec, stack: AsyncExitStack) -> ToolRegistry:
    """Every tool the spec lists, in its order; MCP servers are connected on ``stack`` (closed with it).

    The spec's directory goes on ``sys.path`` first, so that ``python:`` modules next to the spec import (here
    and in the sandbox's child).

    Raises:
        ValueError: two tools with one name, or a python target that cannot be imported or has no JSON Schema.
        mcp.McpError, OSError: an MCP server cannot be started or reached.
    """
    write_paths = tuple(spec.path(p) for p in spec.permissions.write_paths)
    sandbox = Sandbox(spec.sandbox.to_limits(), write_paths=write_paths)
    if str(spec.base_dir) not in sys.path:  # python: targets next to the spec (the sandbox's child gets sys.path)
        sys.path.insert(0, str(spec.base_dir))
    tools = ToolRegistry()
    for i, entry in enumerate(spec.tools):
        for t in await _entry_tools(spec, entry, sandbox, stack, i):
            tools.add(t)
    return tools


def python_tool(entry: PythonToolSpec, sandbox: Sandbox, index: int) -> Tool:
    """The tool of a ``python:`` entry: in process when trusted, else sandboxed per call.

    Raises:
        ValueError: the target cannot be imported, does not exist, or has no JSON Schema (the message names the
            entry, ``tools.N.python``).
    """
    try:
        return make_tool(load(entry.python)) if entry.trusted else sandboxed_tool(entry.python, sandbox)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"tools.{index}.python: {entry.python!r}: {type(e).__name__}: {e}") from e


async def _entry_tools(spec: AgentSpec, entry: PythonToolSpec | ShellToolSpec | MCPToolSpec, sandbox: Sandbox,
                       stack: AsyncExitStack, index: int) -> list[Tool]:
    if isinstance(entry, PythonToolSpec):
        return [python_tool(entry, sandbox, index)]
    if isinstance(entry, ShellToolSpec):
        shell_box = Sandbox(entry.shell.over(spec.sandbox).to_limits(), write_paths=sandbox.write_paths)
        return [make_tool(ShellTool(shell_box), name=SHELL_NAME, description=SHELL_DESCRIPTION)]
    client = await stack.enter_async_context(MCPClient(mcp_server(spec, entry.mcp)))
    return list(await client.list_tools())


def build_permissions(spec: AgentSpec, tools: ToolRegistry) -> Permissions:
    """The agent's allowlists: the spec's ``permissions.tools`` (default: every tool in ``tools``) and its paths,
    resolved against the spec's directory.

    Raises:
        ValueError: ``permissions.tools`` names a tool the spec does not list.
    """
    allowed = spec.permissions.tools if spec.permissions.tools is not None else tools.names()
    unknown = sorted(set(allowed) - set(tools.names()))
    if unknown:
        raise ValueError(f"permissions.tools: {', '.join(unknown)} not among the spec's tools "
                         f"({', '.join(tools.names()) or 'none'})")
    return Permissions(agent=spec.name, tools=frozenset(allowed),
                       read_paths=tuple(spec.path(p) for p in spec.permissions.read_paths),
                       write_paths=tuple(spec.path(p) for p in spec.permissions.write_paths))


def make_agent(spec: AgentSpec, model: ChatModel, tools: ToolRegistry, permissions: Permissions) -> AnyAgent:
    """The spec's loop over ``model`` and ``tools``: ``Agent`` (react) or ``PlannerAgent`` (planner; sequential:
    one task at a time).

    Raises:
        ValueError: a limit the loop refuses (see ``Agent`` and ``Planner``).
    """
    if spec.loop == "react":
        return Agent(model, tools, permissions, system_prompt=spec.system_prompt or SYSTEM_PROMPT,
                     max_turns=spec.max_turns, forced_tool_turns=spec.forced_tool_turns)
    return PlannerAgent(model, tools, permissions, max_replans=spec.max_replans,
                        sequential=spec.loop == "sequential")


@asynccontextmanager
async def build_agent(spec: AgentSpec, model: ChatModel | None = None) -> AsyncIterator[AnyAgent]:
    """The agent of ``spec``, for one ``async with``: the tools and permissions first (a bad tool fails before the
    model loads), then the model; MCP servers stay connected (and an endpoint's HTTP client open) until it exits.

    Args:
        spec: the agent.
        model: use this model instead of building the spec's (tests, or several agents on one engine); it is not
            closed on exit.

    Raises:
        the errors of ``build_model``, ``build_tools``, ``build_permissions`` and ``make_agent``.
    """
    async with AsyncExitStack() as stack:
        tools = await build_tools(spec, stack)
        permissions = build_permissions(spec, tools)
        if model is None:
            model = await asyncio.to_thread(build_model, spec)
            if isinstance(model, OpenAIChatModel):
                stack.push_async_callback(model.aclose)
        yield make_agent(spec, model, tools, permissions)
