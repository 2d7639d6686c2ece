"""The agent sandbox (pitstop/agents/sandbox.py): each limit stops its hog, nothing of the call outlives it,
the environment and the working directory are private, and the network is cut where the kernel allows it.

Bounds are generous (the machine may be busy): a limit must stop its hog well before the next, larger limit.
The fork bomb caps itself at 2000 forks and its children exit after 60 s, so a broken sandbox cannot take the
test machine down."""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from pitstop.agents import isolation
from pitstop.agents.permissions import Permissions
from pitstop.agents.sandbox import Sandbox, SandboxLimits
from pitstop.agents.shell_tool import ShellTool, parameters_schema, tool_spec

PY = sys.executable
MIB = 1024 * 1024

FORK_BOMB = r"""
import os, time
forks = 0
while forks < 2000:
    forks += 1
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.01)
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    """One isolated sandbox (probed once) with limits small enough for quick tests."""
    return Sandbox(SandboxLimits(cpu_seconds=1, memory_bytes=256 * MIB, wall_seconds=60, processes=16))


def _live_with(marker: str) -> list[int]:
    """PIDs of live (not zombie) processes whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rfind(b")") + 2:].split()[0] != b"Z":
            pids.append(int(entry))
    return pids


def test_cpu_hog_is_stopped_by_the_cpu_limit(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.run([PY, "-c", "while True: pass"])
    assert result.limit_hit == "cpu", result
    assert not result.ok and result.exit_code is None
    assert result.cpu_seconds is not None and result.cpu_seconds >= 0.9
    assert time.monotonic() - started < 50
    assert "CPU time limit" in result.to_tool_message()


def test_cpu_hog_under_a_shell_is_stopped_by_the_cpu_limit(sandbox: Sandbox) -> None:
    result = sandbox.run_shell(f"{PY} -c 'while True: pass'; exit $?")
    assert result.limit_hit == "cpu", result


def test_memory_hog_is_stopped_by_the_memory_limit(sandbox: Sandbox) -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    result = sandbox.run([PY, "-c", hog])
    assert result.limit_hit == "memory", result
    assert result.exit_code == 1 and "MemoryError" in result.stderr


@pytest.mark.parametrize("isolate", [True, False], ids=["namespaces", "process-group-only"])
def test_fork_bomb_is_stopped_and_leaves_no_process(isolate: bool) -> None:
    box = Sandbox(SandboxLimits(wall_seconds=60, processes=16), isolate=isolate)
    if not isolate:
        with pytest.warns(RuntimeWarning, match="no network isolation"):
            box.isolation()
    marker = f"pitstop-bomb-{uuid.uuid4().hex}"
    result = box.run([PY, "-c", FORK_BOMB, marker])
    assert result.limit_hit == "processes", result
    assert result.wall_seconds < 30
    deadline = time.monotonic() + 10
    while _live_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_with(marker) == []


@pytest.mark.parametrize("isolate", [True, False], ids=["namespaces", "process-group-only"])
@pytest.mark.filterwarnings("ignore:sandbox. no network isolation")
def test_background_processes_end_with_the_call(isolate: bool) -> None:
    box = Sandbox(isolate=isolate)
    marker = f"pitstop-bg-{uuid.uuid4().hex}"
    result = box.run_shell(f"{PY} -c 'import time; time.sleep(60)' {marker} & echo started")
    assert result.ok and result.stdout == "started\n"
    deadline = time.monotonic() + 10
    while _live_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_with(marker) == []


def test_sleeper_is_stopped_by_the_wall_limit() -> None:
    box = Sandbox(SandboxLimits(wall_seconds=1))
    started = time.monotonic()
    result = box.run_shell("sleep 30")
    assert time.monotonic() - started < 10
    assert result.limit_hit == "wall" and result.signal == 9, result
    assert "wall-clock limit of 1 s" in result.to_tool_message()


def test_100_mb_of_output_is_stopped_without_buffering_it(sandbox: Sandbox) -> None:
    writer = "import sys\nfor _ in range(100):\n    sys.stdout.buffer.write(b'x' * 1_000_000)"
    tracemalloc.start()
    try:
        result = sandbox.run([PY, "-c", writer])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.limit_hit == "output", result
    assert result.stdout_truncated and len(result.stdout) == sandbox.limits.output_bytes
    assert set(result.stdout) == {"x"}
    assert peak < 16 * MIB, f"the parent held {peak} bytes at its peak"


def test_network_is_unreachable_where_isolation_works(sandbox: Sandbox) -> None:
    found = sandbox.isolation()
    if not found.network_isolated:
        pytest.skip(f"no network isolation on this kernel: {found.reason}")
    connect = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    result = sandbox.run([PY, "-c", connect])
    assert result.network_isolated
    assert result.exit_code != 0 and "OSError" in result.stderr, result


def test_writes_outside_the_write_paths_fail_where_confined(sandbox: Sandbox, tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    result = sandbox.run_shell(f"touch here {allowed}/in; mount -o remount,rw / 2>/dev/null; "
                               f"touch {outside}/out; echo done", write_paths=[allowed])
    if not result.writes_confined:
        pytest.skip(f"writes are not confined here: {result.stderr.strip() or sandbox.isolation().reason}")
    assert result.ok and result.stdout == "done\n", result
    assert (allowed / "in").exists() and not (outside / "out").exists()
    assert "Read-only file system" in result.stderr


def test_without_isolation_results_say_so() -> None:
    box = Sandbox(isolate=False)
    with pytest.warns(RuntimeWarning, match="no network isolation"):
        result = box.run_shell("true")
    assert result.ok and not result.network_isolated and not result.writes_confined


def test_a_failing_probe_means_no_isolation_and_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "_TRIES", (("unshare", 2),))
    monkeypatch.setattr(isolation, "_UNSHARE_FLAGS", ["--pitstop-no-such-flag"])
    box = Sandbox()
    with pytest.warns(RuntimeWarning, match="no network isolation .*unshare"):
        found = box.isolation()
    assert found.kind == "none"
    result = box.run_shell("echo hi")
    assert result.ok and result.stdout == "hi\n" and not result.network_isolated


def test_isolation_is_probed_once_per_sandbox(sandbox: Sandbox) -> None:
    assert sandbox.isolation() is sandbox.isolation()


def test_parent_environment_is_not_visible(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITSTOP_TEST_SECRET", "hunter2-f81d4fae")
    result = sandbox.run_shell("env")
    assert result.ok
    assert "hunter2-f81d4fae" not in result.stdout and "PITSTOP_TEST_SECRET" not in result.stdout
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "PWD", "OLDPWD", "SHLVL", "_"}, names


def test_working_directory_is_private_and_removed(sandbox: Sandbox) -> None:
    result = sandbox.run_shell('pwd; echo "$HOME"; mkdir -p d/e; touch d/e/f; chmod 500 d')
    assert result.ok, result
    workdir, home = result.stdout.splitlines()
    assert workdir == home and Path(workdir).name.startswith("pitstop-sandbox-")
    assert Path(workdir) != Path.cwd() and not Path(workdir).exists()


def test_crash_is_a_result_with_an_error_text(sandbox: Sandbox) -> None:
    result = sandbox.run_shell("echo partial; echo boom >&2; kill -SEGV $$")
    assert result.signal == 11 and result.limit_hit is None
    message = result.to_tool_message()
    assert message.startswith("error: killed by signal SIGSEGV") and "boom" in message and "partial" in message
    long = sandbox.run_shell("seq 1 20000; seq 1 20000 >&2; exit 2").to_tool_message(max_chars=100)
    assert "\n1\n2\n" in long and "more characters]" in long
    assert long.endswith("19999\n20000\n") and "characters before ...]" in long


def test_missing_command_is_a_result(sandbox: Sandbox) -> None:
    result = sandbox.run(["pitstop-no-such-command"])
    assert result.exit_code == 127 and not result.ok


def test_callable_runs_by_import_path(sandbox: Sandbox) -> None:
    result = sandbox.run_callable("json:dumps", {"obj": {"a": [1, 2]}})
    assert result.ok, result
    assert result.stdout == '"{\\"a\\": [1, 2]}"'
    failing = sandbox.run_callable("json:loads", {"s": "not json"})
    assert failing.exit_code == 1 and "JSONDecodeError" in failing.stderr


def test_empty_command_is_the_caller_error(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="empty argv"):
        sandbox.run([])


def test_parent_files_are_not_inherited(sandbox: Sandbox, tmp_path: Path) -> None:
    with open(tmp_path / "secret.txt", "w") as secret:
        os.set_inheritable(secret.fileno(), True)
        result = sandbox.run_shell("ls /proc/self/fd")
    fds = set(result.stdout.split())
    assert fds <= {"0", "1", "2", "3"}, fds  # 3: the directory ls is reading
    assert sandbox.run([PY, "-c", "import sys; print(sys.stdin.read())"], stdin=b"hello").stdout == "hello\n"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)


def test_shell_tool(sandbox: Sandbox) -> None:
    tool = ShellTool(sandbox, Permissions(tools=frozenset({"shell"})))
    assert tool("echo hello") == "hello\n"
    assert tool("exit 4").startswith("error: exited with code 4")
    refused = ShellTool(sandbox, Permissions(agent="reader", tools=frozenset({"read_file"})))
    assert refused("echo hello").startswith("error: permission denied: agent 'reader' may not call tool 'shell'")
    assert parameters_schema() == {"type": "object", "properties": {"command": {"type": "string"}},
                                   "required": ["command"], "additionalProperties": False}
    assert tool_spec()["function"]["name"] == "shell"
