"""Run a started child to its end under the wall-clock, output and process limits, then kill its process group.

The child must lead its own process group (``start_new_session=True``). Every ``poll_seconds`` the supervisor
reads output (capped, see :mod:`pitstop.agents.capped_output`), checks whether the child ended (without reaping
it, so its group id cannot be reused before the group is killed), checks the wall clock and counts the live
processes of the group in ``/proc``. On a breach, and in any case when the child ends, it sends SIGKILL to the
whole group. A process that leaves the group (``setsid``, ``setpgid``) escapes the count and the final kill
unless the call also runs in its own PID namespace (see :mod:`pitstop.agents.isolation`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Literal

from pitstop.agents.capped_output import CappedReader
from pitstop.agents.limits import SandboxLimits

Stop = Literal["wall", "output", "processes"]


@dataclass
class Supervised:
    """How a supervised child ended: its raw wait ``status``, ``cpu_seconds`` (its own and its reaped
    descendants', from ``wait4``), the captured output, ``wall_seconds`` and ``stopped_for``: the limit the
    supervisor killed it for (None when it ended by itself)."""

    status: int
    cpu_seconds: float | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_seconds: float
    stopped_for: Stop | None


def group_size(pgid: int) -> int:
    """Live (not zombie) processes whose process group is ``pgid``, counted in ``/proc``."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            count += 1
    return count


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (no error when none is left)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _has_ended(pid: int) -> bool:
    """Whether child ``pid`` has ended, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _reap(pid: int) -> tuple[int, float | None]:
    """(raw wait status, CPU seconds) of ended child ``pid``; (exit code 255, None) when another waiter in this
    process reaped it first."""
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return 255 << 8, None
    return status, usage.ru_utime + usage.ru_stime


def _watch(proc: subprocess.Popen[bytes], reader: CappedReader, limits: SandboxLimits, overhead: int,
           started: float, poll_seconds: float) -> Stop | None:
    next_count = 0.0
    while True:
        reader.pump(poll_seconds)
        if reader.overflowed:
            return "output"
        if _has_ended(proc.pid):
            return None
        now = time.monotonic()
        if now - started >= limits.wall_seconds:
            return "wall"
        if now >= next_count:
            if group_size(proc.pid) - overhead > limits.processes:
                return "processes"
            next_count = now + 2 * poll_seconds


def supervise(proc: subprocess.Popen[bytes], limits: SandboxLimits, started: float, overhead: int = 0,
              poll_seconds: float = 0.05) -> Supervised:
    """Watch ``proc`` (started at ``time.monotonic()`` == ``started``, with piped stdout and stderr) until it
    ends or breaks a limit; kill its group, reap it and return how it ended. ``overhead``: processes of a
    wrapper in the group, not counted against ``limits.processes``. Never raises for the child's behaviour."""
    assert proc.stdout is not None and proc.stderr is not None
    reader = CappedReader(proc.stdout, proc.stderr, limits.output_bytes)
    try:
        stopped = _watch(proc, reader, limits, overhead, started, poll_seconds)
        kill_group(proc.pid)
        reader.drain(2.0)
    finally:
        kill_group(proc.pid)
        reader.close()
    status, cpu = _reap(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Supervised(status, cpu, bytes(reader.out.data), bytes(reader.err.data),
                      reader.out.truncated, reader.err.truncated, time.monotonic() - started, stopped)
