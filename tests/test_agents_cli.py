"""``pitstop agent run SPEC TASK``: the spec file (pitstop.agents.spec), the tools it builds (sandboxed, trusted,
MCP), the agent over a scripted endpoint, and the CLI end to end on the default model in process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from pitstop.agents.agent import Agent
from pitstop.agents.build import build_agent, build_permissions, build_tools, make_agent
from pitstop.agents.planner_agent import PlannerAgent
from pitstop.agents.sandboxed_tool import SandboxedFunctionTool
from pitstop.agents.spec import AgentSpec, load_spec
from pitstop.agents.tools import FunctionTool, ToolError, ToolRegistry
from pitstop.cli.agent import run_spec
from pitstop.cli.main import main

from test_agents_agent import ScriptedEndpoint  # noqa: E402 - tests/ is on sys.path (no __init__.py)

REPO = Path(__file__).resolve().parents[1]
ECHO_SERVER = Path(__file__).with_name("mcp_echo_server.py")

YAML_SPEC = """\
name: helper
model: {name: SmolLM2-135M-Instruct, dtype: float32, kv_cache_memory: 256MiB}
loop: react
max_turns: 4
forced_tool_turns: 1
tools:
  - python: mytools:double
    trusted: true
  - shell: {wall_seconds: 5}
  - mcp: {command: python, args: [server.py]}
permissions:
  tools: [double, shell]
  read_paths: [data]
sandbox: {cpu_seconds: 3, memory_mb: 256}
"""

TOML_SPEC = """\
name = "helper"
loop = "react"
max_turns = 4
forced_tool_turns = 1
model = { name = "SmolLM2-135M-Instruct", dtype = "float32", kv_cache_memory = "256MiB" }
permissions = { tools = ["double", "shell"], read_paths = ["data"] }
sandbox = { cpu_seconds = 3, memory_mb = 256 }

[[tools]]
python = "mytools:double"
trusted = true

[[tools]]
shell = { wall_seconds = 5 }

[[tools]]
mcp = { command = "python", args = ["server.py"] }
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_yaml_and_toml_give_the_same_spec(tmp_path: Path) -> None:
    a = load_spec(_write(tmp_path / "a.yaml", YAML_SPEC))
    b = load_spec(_write(tmp_path / "b.toml", TOML_SPEC))
    assert a == b
    assert a.model is not None and a.model.kv_cache_memory == "256MiB" and a.endpoint is None
    shell_limits = a.tools[1].shell.over(a.sandbox)  # type: ignore[union-attr]
    assert (shell_limits.wall_seconds, shell_limits.cpu_seconds, shell_limits.memory_mb) == (5, 3, 256)
    assert a.path(a.permissions.read_paths[0]) == tmp_path / "data"


@pytest.mark.parametrize("text, field", [
    ("model: m\nbogus: 1\n", "bogus"),
    ("model: m\nendpoint: {base_url: 'http://x/v1'}\n", "endpoint"),
    ("name: nothing\n", "model"),
    ("model: m\nloop: fastest\n", "loop"),
    ("model: m\ntools: [{python: 'a:b', shell: {}}]\n", "tools.0"),
    ("model: m\ntools: [{python: 'a:b', sandboxed: true}]\n", "sandboxed"),
    ("model: m\nsandbox: {memory_mb: 0}\n", "sandbox.memory_mb"),
    ("endpoint: {base_url: 'http://x/v1', api_key: 'sk-secret'}\n", "endpoint.api_key"),
])
def test_a_bad_spec_is_a_value_error_naming_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_both_or_neither_model_is_named_in_the_error(tmp_path: Path) -> None:
    for text in ("name: x\n", "model: m\nendpoint: {base_url: 'http://x/v1'}\n"):
        with pytest.raises(ValueError, match="exactly one of model .* or endpoint"):
            load_spec(_write(tmp_path / "s.yaml", text))


def _tools_module(directory: Path) -> str:
    """A tools module with a unique name (each test imports its own) in ``directory``."""
    name = f"spec_tools_{uuid.uuid4().hex[:8]}"
    _write(directory / f"{name}.py", """\
        import os


        def pid() -> int:
            \"\"\"The process id it runs in.\"\"\"
            return os.getpid()


        def fail(reason: str) -> str:
            \"\"\"Always fails.\"\"\"
            raise RuntimeError(f"refusing: {reason}")
        """)
    return name


def _tools_of(spec: AgentSpec) -> ToolRegistry:
    async def build() -> ToolRegistry:
        async with AsyncExitStack() as stack:
            return await build_tools(spec, stack)
    return asyncio.run(build())


def test_relative_python_tools_resolve_and_untrusted_ones_run_in_a_child(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _tools_module(tmp_path / "agent")
    spec_file = _write(tmp_path / "agent" / "spec.yaml", f"""\
        model: m
        tools:
          - python: {mod}:pid
          - python: {mod}:fail
        sandbox: {{wall_seconds: 20}}
        """)
    monkeypatch.chdir(tmp_path)  # elsewhere than the spec: the module is found through the spec's directory
    tools = _tools_of(load_spec(spec_file.relative_to(tmp_path)))
    assert tools.names() == ["pid", "fail"] and all(isinstance(t, SandboxedFunctionTool) for t in tools)
    child = int(asyncio.run(tools.call("pid", {})))
    assert child > 0 and child != os.getpid()
    with pytest.raises(ToolError, match="RuntimeError: refusing: no reason"):
        asyncio.run(tools.call("fail", {"reason": "no reason"}))
    with pytest.raises(ToolError, match="invalid arguments"):  # validated here, before any child starts
        asyncio.run(tools.call("fail", {"why": 1}))


def test_a_trusted_python_tool_runs_in_process(tmp_path: Path) -> None:
    mod = _tools_module(tmp_path)
    spec = load_spec(_write(tmp_path / "spec.toml", f'model = "m"\n[[tools]]\npython = "{mod}:pid"\n'
                                                    'trusted = true\n'))
    tool = _tools_of(spec).get("pid")
    assert isinstance(tool, FunctionTool) and not isinstance(tool, SandboxedFunctionTool)
    assert int(asyncio.run(tool.call({}))) == os.getpid()


def test_a_python_target_that_does_not_import_is_a_value_error_naming_the_entry(tmp_path: Path) -> None:
    mod = _tools_module(tmp_path)
    for target in ("no_such_module_xyz:f", f"{mod}:no_such_function"):
        spec = load_spec(_write(tmp_path / "s.yaml", f"model: m\ntools: [{{shell: {{}}}}, {{python: '{target}'}}]\n"))
        with pytest.raises(ValueError, match=f"tools.1.python: '{target}'"):
            _tools_of(spec)


def test_the_loop_names_pick_the_agent(tmp_path: Path) -> None:
    ep = ScriptedEndpoint([])
    kinds = {}
    for loop in ("react", "planner", "sequential"):
        spec = load_spec(_write(tmp_path / f"{loop}.yaml", f"model: m\nloop: {loop}\nmax_turns: 2\n"))
        tools = ToolRegistry()
        kinds[loop] = make_agent(spec, ep.model(), tools, build_permissions(spec, tools))
    assert isinstance(kinds["react"], Agent) and kinds["react"].max_turns == 2
    assert isinstance(kinds["planner"], PlannerAgent) and not kinds["planner"].sequential
    assert isinstance(kinds["sequential"], PlannerAgent) and kinds["sequential"].sequential


def test_permissions_naming_an_unlisted_tool_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "s.yaml", "model: m\ntools: [{shell: {}}]\npermissions: {tools: [shel]}\n"))

    async def enter() -> None:
        async with build_agent(spec, ScriptedEndpoint([]).model()):
            pass
    with pytest.raises(ValueError, match="permissions.tools: shel"):
        asyncio.run(enter())


def test_an_mcp_server_from_the_spec_is_listed_and_called(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "mcp.yaml", f"""\
        name: mcp-user
        endpoint: {{base_url: "http://scripted.test/v1"}}
        tools:
          - mcp: {{command: python, args: ["{ECHO_SERVER}"], timeout_s: 20}}
        permissions: {{tools: [echo]}}
        """))
    ep = ScriptedEndpoint([{"calls": [("echo", {"text": "hello from the mcp server"})]}, {"content": "done"}])
    done = asyncio.run(run_spec(spec, "Say hello.", model=ep.model()))
    res = done.result
    assert res.outcome == "answer" and res.answer == "done", res.error
    offered = [t["function"]["name"] for t in ep.requests[0]["tools"]]
    assert offered == ["echo"]  # add is listed by the server but not permitted: not offered
    tool_msg = ep.requests[1]["messages"][3]
    assert tool_msg["role"] == "tool" and "hello from the mcp server" in tool_msg["content"]
    assert [r.name for r in res.tool_runs] == ["echo"] and res.tool_runs[0].error is None
    assert res.program_stats is not None and res.program_stats["turns"] == 2
    assert done.program_ended is True


def test_cli_end_to_end_on_the_default_model(tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pitstop.cli.main", "agent", "run",
                           "examples/agents/calculator.yaml", "What is 12 times 7?", "--trace", str(trace_file),
                           "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    if proc.returncode == 0:
        assert report["outcome"] == "answer" and report["error"] is None
    else:  # a limit or an error, and the report says which
        assert report["outcome"] in ("max_turns", "error")
        assert report["outcome"] != "error" or report["error"]
    assert len(report["turns"]) >= 1 and len(report["tool_runs"]) >= 1  # forced_tool_turns: 1
    stats = report["program_stats"]
    assert stats is not None and stats["turns"] >= 1 and stats["tool_reports"] >= 1
    assert report["program_ended"] is True  # counters read first, then the program was ended
    trace = json.loads(trace_file.read_text())
    tracks = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {"LLM", "tools 1"} <= tracks
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert any(e["cat"] == "llm" for e in spans) and any(e["cat"] == "tool" for e in spans)


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.yaml",
    lambda d: _write(d / "bad.yaml", "model: m\nunknown_key: 1\n"),
])
def test_cli_bad_or_missing_spec_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       make) -> None:
    path = make(tmp_path)
    assert main(["agent", "run", str(path), "a task"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pitstop: error:") and str(path.name) in err[0]
