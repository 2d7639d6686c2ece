"""The first process of a sandboxed call inside its own PID namespace (run as a script, standard library only).

``python -I -S child_init.py STATUS_FD NPROC COMMAND...``: sets ``RLIMIT_NPROC`` to NPROC (inside a new user
namespace this counts only the call's own processes; 0 leaves it unset), runs COMMAND as its child (so the
command is not PID 1 and keeps the usual signal semantics), reaps orphans, writes the command's raw wait
status (decimal) to STATUS_FD and exits with the shell's convention (the code, or 128 + signal). When it exits
the kernel kills every process left in the namespace. STATUS_FD is not inherited by the command. A command
that cannot be started gets exit code 127 and one line on stderr.
"""

from __future__ import annotations

import os
import resource
import sys


def _run_child(argv: list[str], status_fd: int) -> None:
    os.close(status_fd)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        os.write(2, f"sandbox: cannot run {argv[0]!r}: {err.strerror}\n".encode())
    os._exit(127)


def _wait_for(pid: int) -> int:
    """Reap children until ``pid`` ends; its raw wait status."""
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            return 127 << 8
        if done == pid:
            return status


def main(args: list[str]) -> int:
    """Run ``args`` (STATUS_FD NPROC COMMAND...); the exit code to leave with."""
    status_fd, nproc, argv = int(args[0]), int(args[1]), args[2:]
    if nproc > 0:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        except (ValueError, OSError):
            pass
    pid = os.fork()
    if pid == 0:
        _run_child(argv, status_fd)
    status = _wait_for(pid)
    os.write(status_fd, str(status).encode())
    os.close(status_fd)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
