"""Start a ``pitstop serve`` subprocess for a benchmark and wait until it answers ``/health``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_serve(flags: list[str], log: Path, prefix: tuple[str, ...] = (), timeout_s: float = 300.0,
                ) -> tuple[subprocess.Popen, str]:
    """``[*prefix, python -m pitstop.cli.main serve --port P, *flags]`` with its output in ``log``.

    Returns the process and its base URL once ``/health`` answers 200. Raises ``RuntimeError`` (with the log's
    tail) when it does not within ``timeout_s`` seconds; the process is killed then.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*prefix, sys.executable, "-m", "pitstop.cli.main", "serve", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
