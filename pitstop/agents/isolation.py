"""The namespaces a sandboxed call runs in (no network, own PIDs, read-only file system but for its write
paths): a probe of what this kernel allows, and the command that wraps the call's own.

Tried in order, the first that starts a process wins:

* ``unshare`` (util-linux): new user (root mapped to the caller), network, PID and mount namespaces
  (``--net --pid --fork --kill-child --mount-proc --map-root-user``). No network but a loopback that is down;
  the call's processes all die with its first process; the first process
  (:mod:`pitstop.agents.child_init`) remounts the file system read-only but for the call's working directory
  and write paths and drops the command's capabilities (each result says whether that worked).
* ``bwrap`` (bubblewrap): new network and PID namespaces, ``/`` bound read-only, the call's working directory
  and the given write paths bound read-write. (Not installed on the machine this was written on, so this path
  was never run there; where unshare works it is not tried.)
* none: the call runs on the host network; the sandbox warns (``warnings.warn``) and flags its results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pitstop.agents import child_init

Kind = Literal["unshare", "bwrap", "none"]

_TRIES: tuple[tuple[Kind, int], ...] = (("unshare", 2), ("bwrap", 3))  # (kind, wrapper processes)
_UNSHARE_FLAGS = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--map-root-user"]


@dataclass(frozen=True)
class Isolation:
    """The isolation a probe found: its ``kind``, a one-line ``reason`` (why none; what was used otherwise) and
    ``overhead``: processes of the wrapper itself in the call's process group (not counted against the limit)."""

    kind: Kind
    reason: str
    overhead: int = 0

    @property
    def network_isolated(self) -> bool:
        return self.kind != "none"

    def command(self, argv: Sequence[str], workdir: Path, writable: Sequence[Path], status_fd: int,
                nproc: int) -> list[str]:
        """``argv`` wrapped for this isolation (unchanged for none). ``workdir`` and ``writable``: the paths the
        call may write; ``status_fd``: the pipe end :mod:`pitstop.agents.child_init` writes the confinement flag
        and the command's wait status to (it must be passed to the child); ``nproc``: ``RLIMIT_NPROC`` inside
        the namespace (0: unset)."""
        if self.kind == "none":
            return list(argv)
        init = [sys.executable, "-I", "-S", child_init.__file__, str(status_fd)]
        if self.kind == "unshare":
            paths = json.dumps([str(workdir), *(str(p) for p in writable)])
            return [_which("unshare"), *_UNSHARE_FLAGS, "--", *init, str(nproc), paths, *argv]
        return [*_bwrap_prefix(workdir, writable), *init, "0", "-", *argv]


def _which(name: str) -> str:
    found = shutil.which(name, path=os.defpath + os.pathsep + "/usr/sbin:/sbin")
    return found or name


def _bwrap_prefix(workdir: Path, writable: Sequence[Path]) -> list[str]:
    binds: list[str] = []
    for path in (workdir, *writable):
        if path.exists():
            binds += ["--bind", str(path), str(path)]
    return [_which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *binds,
            "--unshare-net", "--unshare-pid", "--die-with-parent", "--chdir", str(workdir), "--"]


def _starts(kind: Kind, timeout: float) -> str | None:
    """None when ``kind`` runs a trivial command here; else why not (one line)."""
    if shutil.which(kind, path=os.defpath + os.pathsep + "/usr/sbin:/sbin") is None:
        return f"{kind} not installed"
    with tempfile.TemporaryDirectory(prefix="pitstop-probe-") as tmp:
        read, write = os.pipe()
        try:
            argv = Isolation(kind, "").command(["true"], Path(tmp), [], write, 0)
            done = subprocess.run(argv, cwd=tmp, env={"PATH": os.defpath}, pass_fds=(write,),
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as err:
            return f"{kind}: {err}"
        finally:
            os.close(read)
            os.close(write)
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"{kind} exited with {done.returncode}: {last}"
    return None


def probe(timeout: float = 20.0) -> Isolation:
    """The strongest isolation that works here (tries unshare, then bwrap; each runs ``true`` once).

    timeout: seconds each try may take. Never raises: a failing try is a reason in the result.
    """
    reasons: list[str] = []
    for kind, overhead in _TRIES:
        why = _starts(kind, timeout)
        if why is None:
            return Isolation(kind, f"{kind} namespaces", overhead)
        reasons.append(why)
    return Isolation("none", "; ".join(reasons))
