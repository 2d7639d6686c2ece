"""Graceful shutdown: on SIGTERM a short in-flight request finishes, a long one ends with an error event,
and the process exits promptly (status 0, or -SIGTERM re-raised by uvicorn after its shutdown) (its own server: the shared one must keep running)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from server_helpers import API_KEY, MODEL, start_server

pytestmark = pytest.mark.timeout(180)


def _stream(base_url: str, max_tokens: int, out: dict, started: threading.Event) -> None:
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True}
    events = []
    try:
        with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()
    except httpx.HTTPError as e:
        out["transport_error"] = repr(e)
    out["events"] = events
    started.set()


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_graceful_shutdown(tmp_path, sig):
    server = start_server(tmp_path, "--shutdown-timeout", "2")
    short, long_ = {}, {}
    s1, s2 = threading.Event(), threading.Event()
    threads = [threading.Thread(target=_stream, args=(server.base_url, 8, short, s1)),
               threading.Thread(target=_stream, args=(server.base_url, 1500, long_, s2))]
    for t in threads:
        t.start()
    assert s1.wait(60) and s2.wait(60)
    t0 = time.monotonic()
    code = server.stop(sig, timeout=30)
    for t in threads:
        t.join(30)
    # uvicorn re-raises the captured signal after its clean shutdown, so -sig is a clean exit too
    assert code in (0, -sig), server.log()
    assert "engine" not in server.log().lower() or "Traceback" not in server.log(), server.log()
    assert time.monotonic() - t0 < 20
    # the short request finished normally
    assert short["events"][-1] == "[DONE]"
    finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in short["events"][:-1]]
    assert finishes[-1] == "length"
    # the long one was cut: an error event (then [DONE]) or a closed connection, never a hang
    long_events = long_.get("events", [])
    assert "transport_error" in long_ or any('"error"' in e for e in long_events), long_
    assert not any('"finish_reason":"length"' in e for e in long_events)
