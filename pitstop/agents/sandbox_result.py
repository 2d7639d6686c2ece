"""What a sandboxed call returns: :class:`SandboxResult`, built from how the supervised child ended."""

from __future__ import annotations

import os
import signal as signals
from dataclasses import dataclass
from typing import Literal

from pitstop.agents.limits import SandboxLimits
from pitstop.agents.supervisor import Supervised

LimitHit = Literal["cpu", "memory", "wall", "output", "processes"]

# What a process prints when an allocation fails under RLIMIT_AS (Python, C, C++, shells).
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
# What fork() failing under RLIMIT_NPROC looks like (Python, bash, dash).
_FORK_MARKERS = ("Resource temporarily unavailable", "Cannot fork", "can't fork")


@dataclass(frozen=True)
class SandboxResult:
    """One sandboxed call. A crash, a timeout or a limit breach is a result, never an exception.

    exit_code: the command's exit code, None when a signal ended it (then ``signal`` is its number).
    stdout, stderr: the output (UTF-8, undecodable bytes replaced), at most ``output_bytes`` bytes each;
        ``stdout_truncated`` / ``stderr_truncated`` when more was written.
    wall_seconds: wall-clock time of the call (seconds); cpu_seconds: CPU time (user + system, seconds) of
        the command and the descendants it waited for, None when unknown.
    limit_hit: the limit that stopped the call, if any. "wall", "output" and "processes" are the supervisor's
        own kills; "cpu" is SIGXCPU (or a shell's exit code 128 + SIGXCPU), or SIGKILL after the CPU limit; "memory" and a failed fork ("processes")
        are read from the command's error output, so they are best-effort.
    network_isolated: whether the call ran without network; writes_confined: whether paths outside its working
        directory and the allowed write paths were read-only to it.
    detail: one line saying how the call ended.
    """

    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_seconds: float
    cpu_seconds: float | None
    limit_hit: LimitHit | None
    network_isolated: bool
    writes_confined: bool
    detail: str

    @property
    def ok(self) -> bool:
        """Exit code 0, no limit hit."""
        return self.exit_code == 0 and self.limit_hit is None

    def to_tool_message(self, max_chars: int = 16_000) -> str:
        """The text the model gets: stdout when ``ok``; else ``error: <detail>``, then stdout and stderr.
        ``max_chars``: characters kept of each stream (the start of stdout, the end of stderr)."""
        if self.ok:
            return _clip(self.stdout, max_chars)
        parts = [f"error: {self.detail}"]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text.strip():
                parts.append(f"{name}:\n{_clip(text, max_chars, keep_end=name == 'stderr')}")
        return "\n".join(parts)


def _clip(text: str, max_chars: int, keep_end: bool = False) -> str:
    cut = len(text) - max_chars
    if cut <= 0:
        return text
    if keep_end:
        return f"[{cut} characters before ...]\n" + text[cut:]
    return text[:max_chars] + f"\n[... {cut} more characters]"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return str(number)


def _limit_hit(run: Supervised, code: int, stderr: str, limits: SandboxLimits) -> LimitHit | None:
    if run.stopped_for is not None:
        return run.stopped_for
    if code in (-signals.SIGXCPU, 128 + signals.SIGXCPU) or (
            code == -signals.SIGKILL and (run.cpu_seconds or 0.0) >= limits.cpu_rlimit[0]):
        return "cpu"
    if code != 0 and any(m in stderr for m in _MEMORY_MARKERS):
        return "memory"
    if code != 0 and any(m in stderr for m in _FORK_MARKERS):
        return "processes"
    return None


def _detail(limit: LimitHit | None, code: int, limits: SandboxLimits) -> str:
    if limit == "wall":
        return f"stopped at the wall-clock limit of {limits.wall_seconds:g} s"
    if limit == "cpu":
        return f"stopped at the CPU time limit of {limits.cpu_rlimit[0]} s"
    if limit == "memory":
        return f"ran out of memory (limit: {limits.memory_bytes} bytes of address space per process)"
    if limit == "output":
        return f"stopped: wrote more than {limits.output_bytes} bytes of output (the rest was dropped)"
    if limit == "processes":
        return f"stopped: more than {limits.processes} processes"
    if code < 0:
        return f"killed by signal {_signal_name(-code)}"
    return f"exited with code {code}"


def build_result(run: Supervised, status: int, limits: SandboxLimits, network_isolated: bool,
                 writes_confined: bool) -> SandboxResult:
    """The result of ``run``; ``status``: the command's raw wait status (the wrapper's when it had none)."""
    code = os.waitstatus_to_exitcode(status)
    stderr = _decode(run.stderr)
    limit = _limit_hit(run, code, stderr, limits)
    return SandboxResult(
        exit_code=code if code >= 0 else None, signal=-code if code < 0 else None, stdout=_decode(run.stdout),
        stderr=stderr, stdout_truncated=run.stdout_truncated, stderr_truncated=run.stderr_truncated,
        wall_seconds=run.wall_seconds, cpu_seconds=run.cpu_seconds, limit_hit=limit,
        network_isolated=network_isolated, writes_confined=writes_confined, detail=_detail(limit, code, limits))


def failed_start(message: str, network_isolated: bool, writes_confined: bool) -> SandboxResult:
    """The result of a command that could not be started (exit code 127, ``message`` on stderr)."""
    return SandboxResult(127, None, "", message, False, False, 0.0, None, None, network_isolated,
                         writes_confined, f"could not start: {message}")
