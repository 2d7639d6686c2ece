"""What a sandboxed tool call may use: :class:`SandboxLimits`, and the rlimits that enforce part of it.

``RLIMIT_CPU``, ``RLIMIT_AS`` and ``RLIMIT_NOFILE`` are per process: every process of a call gets the full
amount (a call that forks can use more in total; the wall-clock limit and the process limit bound that).
``RLIMIT_NPROC`` counts every process of the user, so it is only set inside a new user namespace (see
:mod:`pitstop.agents.child_init`); the process limit is otherwise enforced by the supervisor counting the
call's process group (:mod:`pitstop.agents.supervisor`).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed call.

    cpu_seconds: CPU time of each process (``RLIMIT_CPU`` soft limit, in whole seconds, rounded up; the hard
        limit, a SIGKILL, is one second later).
    memory_bytes: address space of each process (``RLIMIT_AS``, bytes); an allocation past it fails.
    wall_seconds: wall-clock time of the whole call (seconds); then its process group is killed.
    output_bytes: bytes kept of stdout and of stderr, each; one more byte and the call is killed.
    processes: processes the call may have at once (counted in its process group), itself included.
    open_files: file descriptors of each process (``RLIMIT_NOFILE``).

    Raises ValueError (from ``__post_init__``) when a limit is not positive.
    """

    cpu_seconds: float = 10.0
    memory_bytes: int = 512 * MIB
    wall_seconds: float = 30.0
    output_bytes: int = 1 * MIB
    processes: int = 64
    open_files: int = 256

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "wall_seconds", "output_bytes", "processes", "open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def cpu_rlimit(self) -> tuple[int, int]:
        """(soft, hard) ``RLIMIT_CPU`` in whole seconds."""
        soft = max(1, int(-(-self.cpu_seconds // 1)))
        return soft, soft + 1


def apply_rlimits(limits: SandboxLimits) -> None:
    """Set this process's rlimits from ``limits`` (CPU, address space, open files; no core dumps).

    Meant for ``subprocess.Popen(preexec_fn=...)``: it runs in the child between fork and exec.
    Raises ValueError or OSError (from ``resource.setrlimit``) when a limit is above the current hard limit.
    """
    resource.setrlimit(resource.RLIMIT_CPU, limits.cpu_rlimit)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = limits.open_files if hard == resource.RLIM_INFINITY else min(limits.open_files, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
