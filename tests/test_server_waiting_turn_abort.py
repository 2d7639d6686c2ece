"""Issue 14, bug 2 over HTTP: a program's next turn arrives while its KV is pinned, and its client goes away
before the turn is admitted. The pin must then expire on its TTL as if the turn had never come; before the
fix the turn left ``turn_waiting`` set and the pin was kept until memory pressure took it. Also the soak's
``GET /debug/memory`` report over HTTP."""

from __future__ import annotations

import json
import socket
import time

import pytest

from server_helpers import API_KEY, Server, own_server

pytestmark = pytest.mark.timeout(180)
TTL_S = 2.0

server, kv_balanced_after = own_server("waitabort", "--ttl-policy", "fixed", "--ttl-seconds", str(TTL_S))


def _wait_for(server: Server, what: str, cond, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        kv = server.kv()
        if cond(kv):
            return kv
        assert time.monotonic() < deadline, f"{what} never happened: {kv}"
        time.sleep(0.1)


def _open_stream(server: Server, body: dict) -> socket.socket:
    """Send a streamed completion over a raw socket (so the test decides when the client goes away)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (host.encode(), API_KEY.encode(), len(payload), payload))
    return sock


def test_aborted_waiting_turn_lets_the_pin_expire(server):
    turn = {"prompt": list(range(300, 380)), "max_tokens": 2, "temperature": 0, "program_id": "wait-abort",
            "is_last_turn": False}
    assert server.post("/v1/completions", json=turn).status_code == 200
    assert server.kv()["num_pinned_blocks"] > 0
    assert server.post("/debug/engine", json={"paused": True}).status_code == 200
    try:
        sock = _open_stream(server, {**turn, "prompt": turn["prompt"] + [7, 8, 9], "stream": True})
        _wait_for(server, "the next turn waiting", lambda kv: kv["num_waiting"] == 1)
        sock.close()  # the client goes away before the turn is admitted
        _wait_for(server, "the abort", lambda kv: kv["num_waiting"] == 0 and kv["num_outstanding"] == 0)
        # The engine is still paused: only the idle tick runs, which expires pins whose TTL ran out.
        kv = _wait_for(server, "the pin's expiry", lambda kv: kv["num_pinned_blocks"] == 0, timeout=15 * TTL_S)
        assert kv["num_used_blocks"] == 0
    finally:
        server.post("/debug/engine", json={"paused": False})
    server._client.delete("/v1/programs/wait-abort")


def test_debug_memory_over_http(server):
    """The soak run's memory report, over HTTP: needs the key, reports RSS and live objects, trims on request."""
    import httpx

    assert httpx.get(server.base_url + "/debug/memory").status_code == 401
    rep = server.get("/debug/memory", params={"top": 3, "trim": "true"}).json()
    assert rep["rss_bytes"] > 0 and rep["rss_before_trim_bytes"] > 0
    assert len(rep["objects_by_type"]) == 3 and rep["tracemalloc_top"] is None
