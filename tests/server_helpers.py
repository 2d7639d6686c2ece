"""Start a real ``pitstop serve`` subprocess on 127.0.0.1 (free port) and inspect it (tests only)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
MODEL = "SmolLM2-135M-Instruct"
DTYPE = "auto"  # the same resolution in the server and the in-process reference
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 4
MAX_QUEUE = 4
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server subprocess."""

    proc: subprocess.Popen
    base_url: str
    api_key: str | None
    log_path: Path
    _client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def get(self, path: str, **kw) -> httpx.Response:
        return self._client.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self._client.post(path, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kv(self) -> dict:
        return self.get("/debug/kv").json()

    def wait_idle(self, timeout: float = 20.0) -> dict:
        """Wait until nothing runs, waits or is held; return the final /debug/kv."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.kv()
            if not (st["num_running"] or st["num_waiting"] or st["num_outstanding"] or st["num_held"]
                    or st.get("num_grammars")):
                return st
            if time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def assert_kv_balanced(self) -> dict:
        st = self.wait_idle()
        assert st["ok"], f"KV accounting broken: {st}"
        assert st["num_running"] == 0 and st["num_waiting"] == 0, st
        assert st["num_held"] == 0 and st["num_used_blocks"] == st["num_pinned_blocks"], st
        assert st["num_outstanding"] == 0, st
        assert st.get("num_grammars", 0) == 0, f"grammar/matcher state left behind: {st}"
        assert self.proc.poll() is None, f"server died:\n{self.log()}"
        return st

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as ``{'name{labels}': value}``."""
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, _, val = line.rpartition(" ")
                out[key] = float(val)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._client.close()
        return self.proc.returncode


def start_server(tmp_dir: Path, *extra: str, api_key: str | None = API_KEY, timeout: float = 180.0) -> Server:
    """Launch ``pitstop serve`` with the test settings and wait for /health."""
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "pitstop.cli.main", "serve", "--model", MODEL, "--dtype", DTYPE,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN),
           "--kv-cache-memory", "256MiB", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-queue", str(MAX_QUEUE),
           "--debug-endpoints", "--num-threads", "2", *extra]
    if api_key:
        cmd += ["--api-key", api_key]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return Server(proc, base, api_key, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {timeout}s:\n{log_path.read_text()[-4000:]}")


def paused_flood(server: Server, num: int, limit: int, max_tokens: int, wait_s: float) -> list[httpx.Response]:
    """``num`` concurrent completions against a paused engine (``POST /debug/engine``): waits (at most ``wait_s``
    seconds) until the ``num - limit`` rejected ones have answered, resumes the engine and returns every response.
    No request can finish while paused, so what is admitted and what is refused does not depend on timing."""
    import asyncio

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=max(120.0, 2 * wait_s),
                                     headers={"Authorization": f"Bearer {API_KEY}"},
                                     limits=httpx.Limits(max_connections=num)) as c:
            body = {"model": MODEL, "prompt": "Flood request", "max_tokens": max_tokens, "ignore_eos": True,
                    "temperature": 0}
            tasks = [asyncio.ensure_future(c.post("/v1/completions", json=body)) for _ in range(num)]
            deadline = time.monotonic() + wait_s
            while sum(t.done() for t in tasks) < num - limit:  # the rejected ones answer while paused
                assert time.monotonic() < deadline, f"{sum(t.done() for t in tasks)} answered while paused"
                await asyncio.sleep(0.05)
            assert server.post("/debug/engine", json={"paused": False}).status_code == 200
            return await asyncio.gather(*tasks)

    assert server.post("/debug/engine", json={"paused": True}).status_code == 200
    try:
        return asyncio.run(flood())
    finally:
        server.post("/debug/engine", json={"paused": False})


def counter(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, val in metrics.items():
        m = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += val
    return total


_SHARED: dict[str, Server] = {}


def shared_server(tmp_root: Path) -> Server:
    """The one server all ``test_server_*`` modules share (started once per pytest session)."""
    srv = _SHARED.get("main")
    if srv is None or srv.proc.poll() is not None:
        srv = _SHARED["main"] = start_server(tmp_root, "--scheduling-policy", "program-fcfs",
                                             "--ttl-policy", "fixed", "--ttl-seconds", "60")
        import atexit
        atexit.register(srv.stop)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shared server (import this fixture into a test module to use it)."""
    return shared_server(tmp_path_factory.mktemp("server"))


@pytest.fixture(autouse=True)
def kv_balanced_after(server):
    """After each test of a module that imports it: the server's KV accounting balances."""
    yield
    server.assert_kv_balanced()


def own_server(name: str, *extra: str, api_key: str | None = API_KEY):
    """Fixtures for a test module with a server of its own (started with ``extra`` flags): a module-scoped
    ``server`` and the autouse ``kv_balanced_after``. Use: ``server, kv_balanced_after = own_server(...)``."""

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        srv = start_server(tmp_path_factory.mktemp(name), *extra, api_key=api_key)
        yield srv
        srv.stop()

    @pytest.fixture(autouse=True)
    def kv_balanced_after(server):
        yield
        server.assert_kv_balanced()

    return server, kv_balanced_after


@pytest.fixture(scope="module")
def constrained(server) -> bool:
    """Capability probe: the engine constrains decoding iff a ``guided_choice`` request returns exactly its
    choice (until the engine has structured outputs it ignores them, and tests that need them skip)."""
    choice = "zebra-quartz-17"
    r = server.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12,
        "temperature": 0, "guided_choice": [choice]})
    return r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == choice


def need_constraints(constrained: bool) -> None:
    """Skip the calling test unless the server constrains decoding (see ``constrained``)."""
    if not constrained:
        pytest.skip("the engine does not constrain decoding yet (structured_outputs ignored)")
