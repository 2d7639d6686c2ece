"""Run a non-trusted tool call (a command, or a Python callable) in a child process with limits.

What is enforced, per call (:class:`~pitstop.agents.limits.SandboxLimits`):

* CPU time and address space of each process (``RLIMIT_CPU``, ``RLIMIT_AS``), open files (``RLIMIT_NOFILE``),
  no core dumps. A memory breach is an allocation failure inside the command, recognised from its error output.
* wall-clock time, output size (stdout and stderr read with a cap; one byte more kills the call) and the
  number of live processes of the call's process group (counted in ``/proc`` by the parent every ~0.1 s, so a
  fast fork loop can briefly exceed it). The group is always killed (SIGKILL) when the command ends.
* a private working directory, also ``HOME`` and ``TMPDIR``, removed after the call; an environment of only
  ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG`` (nothing of the parent's, so no secrets); no open file of the
  parent's but stdin (a copy of the given bytes), stdout and stderr (pipes).
* no network where the kernel allows it (:mod:`pitstop.agents.isolation`, probed once per :class:`Sandbox`).
  There the call also has its own PID namespace: every process it started dies with it, even one that left
  its process group. Without it, a warning is emitted and ``network_isolated`` is False in every result.

The rlimits are set by ``preexec_fn`` between fork and exec (only ``resource.setrlimit`` calls, no locks taken,
so it is safe in a threaded server as far as CPython allows).

* writes only to the working directory and the write paths, where the call has its own mount namespace
  (``writes_confined`` in the result): everything else is read-only and the command has no capabilities to
  remount it.

What is weaker: ``RLIMIT_NPROC`` is per user (and ignored for root), so it is only set inside a user
namespace; the process count above is the real bound. Per-process rlimits let a call that forks use N times
the CPU and memory (the wall-clock and process limits bound this). Without a mount namespace a command can
write wherever the server's user can; file-path permissions then hold only for tools that take paths as
arguments and check them before the call (:mod:`pitstop.agents.permissions`). Reads are not confined (a
command can read what the server's user can, except the environment). Disk use is not limited (a call can
fill its temporary directory's file system until the wall clock stops it). No cgroups, no seccomp filter.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitstop.agents import call_runner
from pitstop.agents.isolation import Isolation, probe
from pitstop.agents.limits import SandboxLimits, apply_rlimits
from pitstop.agents.sandbox_result import SandboxResult, build_result, failed_start
from pitstop.agents.supervisor import supervise

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

__all__ = ["Sandbox", "SandboxLimits", "SandboxResult"]


@dataclass
class Sandbox:
    """Runs calls under ``limits``. The isolation probe runs once, at the first call, and is kept here.

    write_paths: directories the call may write besides its working directory (only enforced where the
        result says ``writes_confined``). isolate: False never tries namespaces (the calls warn as when the
        kernel refuses them). path: the ``PATH`` the call gets.
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    write_paths: tuple[Path, ...] = ()
    isolate: bool = True
    path: str = DEFAULT_PATH
    _isolation: Isolation | None = field(default=None, init=False, repr=False, compare=False)

    def isolation(self) -> Isolation:
        """What this kernel allows (probed at the first call; warns with ``RuntimeWarning`` when no network
        isolation is available)."""
        if self._isolation is None:
            found = probe() if self.isolate else Isolation("none", "isolation disabled by the caller")
            if not found.network_isolated:
                warnings.warn(f"sandbox: no network isolation ({found.reason}); tool calls can reach the "
                              "network", RuntimeWarning, stacklevel=3)
            self._isolation = found
        return self._isolation

    def run_shell(self, command: str, write_paths: Sequence[Path] | None = None) -> SandboxResult:
        """Run ``command`` with ``/bin/sh -c``. See :meth:`run`."""
        return self.run(["/bin/sh", "-c", command], write_paths=write_paths)

    def run_callable(self, target: str, args: Mapping[str, Any] | None = None) -> SandboxResult:
        """Call ``target`` (``"package.module:function"``) with keyword ``args`` in a child Python; its return
        value comes back as JSON text in ``stdout``. The child sees this process's ``sys.path``.
        Raises TypeError (or ValueError, for a circular reference) when ``args`` is not JSON-serialisable;
        everything else, the callable's exceptions included (exit code 1, traceback on stderr), is in the
        result."""
        search = [p or os.getcwd() for p in sys.path]
        request = json.dumps({"target": target, "args": dict(args or {}), "path": search})
        return self.run([sys.executable, "-I", call_runner.__file__], stdin=request.encode())

    def run(self, argv: Sequence[str], stdin: bytes = b"", write_paths: Sequence[Path] | None = None
            ) -> SandboxResult:
        """Run ``argv`` (looked up on ``path``) with ``stdin`` (bytes) as its input, to its end or to a limit.
        ``write_paths``: this call's, instead of the sandbox's. Never raises for what the command does; raises
        ValueError for an empty ``argv``, OSError only when no temporary directory can be made."""
        if not argv:
            raise ValueError("Sandbox.run needs a command, got an empty argv")
        isolation = self.isolation()
        writable = tuple(Path(p) for p in (self.write_paths if write_paths is None else write_paths))
        workdir = Path(tempfile.mkdtemp(prefix="pitstop-sandbox-"))
        try:
            return self._run_in(argv, stdin, workdir, isolation, writable)
        finally:
            _remove_tree(workdir)

    def _run_in(self, argv: Sequence[str], stdin: bytes, workdir: Path, isolation: Isolation,
                writable: tuple[Path, ...]) -> SandboxResult:
        env = {"PATH": self.path, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        read_fd, write_fd = os.pipe()
        try:
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(stdin)
                stdin_file.seek(0)
                command = isolation.command(argv, workdir, writable, write_fd, self.limits.processes + 1)
                started = time.monotonic()
                proc = subprocess.Popen(
                    command, cwd=workdir, env=env, stdin=stdin_file, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True,
                    pass_fds=(write_fd,) if isolation.network_isolated else (),
                    preexec_fn=functools.partial(apply_rlimits, self.limits))
            os.close(write_fd)
            write_fd = -1
            run = supervise(proc, self.limits, started, isolation.overhead)
            confined, status = _read_status(read_fd, isolation)
        except (OSError, subprocess.SubprocessError) as err:
            return failed_start(str(err), isolation.network_isolated, False)
        finally:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
        return build_result(run, run.status if status is None else status, self.limits,
                            isolation.network_isolated, confined)


def _read_status(fd: int, isolation: Isolation) -> tuple[bool, int | None]:
    """What the namespace init wrote (see :mod:`pitstop.agents.child_init`): whether writes were confined, and
    the command's raw wait status (None when there is none: no init, or it was killed first)."""
    os.set_blocking(fd, False)
    try:
        text = os.read(fd, 64).decode(errors="replace").strip()
    except BlockingIOError:
        text = ""
    flag, digits = text[:1], text[1:]
    confined = flag == "C" or (flag == "-" and isolation.kind == "bwrap")
    return confined, int(digits) if digits.isdigit() else None


def _remove_tree(path: Path) -> None:
    """Delete ``path``, making read-only directories writable first; logs when something is left."""
    def _retry(func: Any, name: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(name), 0o700)
        func(name)
    try:
        shutil.rmtree(path, onerror=_retry)
    except OSError as err:
        logger.warning("sandbox: could not remove %s: %s", path, err)
