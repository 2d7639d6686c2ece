"""Program lifecycle over HTTP (issue 14): DELETE while a turn streams, idle programs ended by the server
while no request runs, and ``--max-programs`` answering 429 when no program is idle."""

from __future__ import annotations

import json
import time

import pytest

from server_helpers import Server, counter, own_server

pytestmark = pytest.mark.timeout(180)
IDLE_TIMEOUT_S = 2.0


server, kv_balanced_after = own_server("lifecycle", "--ttl-policy", "fixed", "--ttl-seconds", "600",
                                       "--program-idle-timeout", str(IDLE_TIMEOUT_S), "--max-programs", "2")


def _stream(server: Server, program: str, max_tokens: int = 300):
    """Open a streamed non-final turn of ``program``; returns the response after its first token."""
    body = {"prompt": list(range(100, 180)), "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "program_id": program, "is_last_turn": False}
    resp = server._client.send(server._client.build_request("POST", "/v1/completions", json=body), stream=True)
    assert resp.status_code == 200
    lines = resp.iter_lines()
    first = next(ln for ln in lines if ln.startswith("data: "))
    assert json.loads(first[6:])["choices"]
    return resp, lines


def test_delete_while_a_turn_streams_leaves_nothing_behind(server):
    resp, lines = _stream(server, "del-1")
    assert server._client.delete("/v1/programs/del-1").status_code == 200
    assert server.get("/v1/programs/del-1").status_code == 200  # its turn still runs: kept until it ends
    rest = [ln for ln in lines if ln.startswith("data: ")]
    resp.close()
    assert rest[-1] == "data: [DONE]"
    assert server.get("/v1/programs/del-1").status_code == 404
    assert server.kv()["num_pinned_blocks"] == 0


def test_idle_program_is_ended_by_the_server_while_nothing_runs(server):
    before = counter(server.metrics(), "pitstop_programs_idle_ended")
    r = server.post("/v1/completions", json={"prompt": list(range(200, 280)), "max_tokens": 2, "temperature": 0,
                                             "program_id": "idle-1", "is_last_turn": False})
    assert r.status_code == 200
    assert server.kv()["num_pinned_blocks"] > 0
    deadline = time.monotonic() + 30 * IDLE_TIMEOUT_S
    while server.get("/v1/programs/idle-1").status_code == 200:
        assert time.monotonic() < deadline, "the idle program was never ended"
        time.sleep(0.2)
    assert server.kv()["num_pinned_blocks"] == 0
    assert counter(server.metrics(), "pitstop_programs_idle_ended") - before >= 1


def test_max_programs_is_a_429_when_no_program_is_idle(server):
    streams = [_stream(server, f"busy-{i}") for i in range(2)]
    try:
        r = server.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2, "program_id": "one-more"})
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "too_many_programs" and "max_programs=2" in err["message"]
        assert int(r.headers["Retry-After"]) > 0
    finally:
        for resp, _ in streams:
            resp.close()  # the client goes away: both turns are aborted
    server.wait_idle()
    ok = server.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2, "program_id": "one-more",
                                              "is_last_turn": False})
    assert ok.status_code == 200, ok.text  # the aborted programs are idle now: the oldest made room
    assert server.kv()["num_programs"] <= 2
    for name in ("busy-0", "busy-1", "one-more"):
        server._client.delete(f"/v1/programs/{name}")
