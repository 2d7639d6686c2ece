"""The first process of a sandboxed call inside its own namespaces (run as a script, standard library only).

``python -I -S child_init.py STATUS_FD NPROC WRITABLE COMMAND...`` (inside ``unshare --map-root-user --mount
--pid --fork``, see :mod:`pitstop.agents.isolation`):

1. WRITABLE is a JSON list of paths, or ``-`` to leave the file system alone (bubblewrap already did it). For a
   list, every mount of this mount namespace is remounted read-only except the listed paths (and the mounts
   below them), which are bind-mounted onto themselves first and stay writable. The namespace is private: the
   host's mounts do not change.
2. ``RLIMIT_NPROC`` is set to NPROC (inside a new user namespace it counts only the call's own processes; 0
   leaves it unset).
3. COMMAND runs as this process's child (so it is not PID 1 and keeps the usual signal semantics); unless
   WRITABLE is ``-``, with an empty capability bounding set and ``no_new_privs``: it is uid 0 of the namespace
   without capabilities, so it cannot remount anything writable again. STATUS_FD is not inherited by it.
4. This process reaps orphans until COMMAND ends, writes to STATUS_FD ``C`` (writes confined), ``U`` (asked
   but not confined) or ``-`` (not asked), then COMMAND's raw wait status in decimal, and exits with the
   shell's convention (the code, or 128 + signal). The kernel then kills every process left in the namespace.

A command that cannot be started gets exit code 127 and one line on stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 4096, 16384, 1 << 21, 1 << 24
# Per-mount flags a remount must repeat (the kernel refuses to clear locked ones in a user namespace).
_KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
         "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mounts() -> list[tuple[str, list[str]]]:
    """(mount point, per-mount options) of every mount of this namespace, parents first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((point, fields[5].split(",")))
    return found


def _under(point: str, roots: list[str]) -> bool:
    return any(point == root or point.startswith(root.rstrip("/") + "/") for root in roots)


def confine_writes(libc: ctypes.CDLL, writable: list[str]) -> None:
    """Make every mount read-only but ``writable`` (existing paths) and what is below them.
    Raises OSError when a mount cannot be changed."""
    roots = [os.path.realpath(p) for p in writable if os.path.exists(p)]
    original = _mounts()
    for root in roots:
        _check(libc.mount(root.encode(), root.encode(), None, MS_BIND | MS_REC, None), f"bind {root}")
    os.chdir(os.getcwd())  # onto the new bind mount when the working directory is one of them
    for point, options in original:
        if _under(point, roots):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= _KEEP.get(option, 0)
        _check(libc.mount(None, point.encode(), None, flags, None), f"remount {point} read-only")


def drop_privileges(libc: ctypes.CDLL) -> None:
    """Empty the capability bounding set and the ambient set, set ``no_new_privs`` (so the next exec runs
    without capabilities). Raises OSError when the kernel refuses."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _run_child(argv: list[str], status_fd: int, libc: ctypes.CDLL | None) -> None:
    os.close(status_fd)
    try:
        if libc is not None:
            drop_privileges(libc)
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


def _setup(writable: str, nproc: int) -> tuple[str, ctypes.CDLL | None]:
    """Confine writes and set the process limit; (the confinement flag, libc when WRITABLE was given: then the
    command drops its privileges)."""
    flag, libc = "-", None
    if writable != "-":
        libc = _libc()
        try:
            confine_writes(libc, json.loads(writable))
            flag = "C"
        except (OSError, ValueError) as err:
            os.write(2, f"sandbox: writes not confined: {err}\n".encode())
            flag = "U"
    if nproc > 0:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        except (ValueError, OSError):
            pass
    return flag, libc


def main(args: list[str]) -> int:
    """Run ``args`` (STATUS_FD NPROC WRITABLE COMMAND...); the exit code to leave with."""
    status_fd, nproc, writable, argv = int(args[0]), int(args[1]), args[2], args[3:]
    flag, libc = _setup(writable, nproc)
    os.write(status_fd, flag.encode())
    pid = os.fork()
    if pid == 0:
        _run_child(argv, status_fd, libc)
    status = _wait_for(pid)
    os.write(status_fd, str(status).encode())
    os.close(status_fd)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
