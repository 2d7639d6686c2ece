"""Agent programs over HTTP: program_id / job_id fields, pins between turns, tool results, DELETE."""

from __future__ import annotations

import pytest

from server_helpers import counter
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.timeout(180)


def _complete(server, prompt, **extra):
    r = server.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                             "ignore_eos": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_turns_of_a_program_reuse_pinned_kv(server):
    before = server.metrics()
    prompt = list(range(100, 180))  # 80 tokens = 5 full blocks
    first = _complete(server, prompt, program_id="agent-1", is_last_turn=False, tool_name="Bash")
    st = server.get("/v1/programs/agent-1").json()
    assert st["pins"] == 1 and st["pinned_blocks"] == 5 and st["pin_tool"] == "Bash"
    r = server.post("/v1/programs/agent-1/tool_result", json={"tool_name": "Bash", "duration_s": 0.4})
    assert r.status_code == 200
    assert server.kv()["num_pinned_blocks"] == 5  # the pin holds blocks while no request runs
    second = _complete(server, prompt + list(range(300, 320)), job_id="agent-1", is_last_step=False)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 80
    st = server.get("/v1/programs/agent-1").json()
    assert st["pin_hits"] == 1 and st["turns"] == 2
    assert server._client.delete("/v1/programs/agent-1").status_code == 200
    assert server.kv()["num_pinned_blocks"] == 0
    after = server.metrics()
    assert counter(after, "pitstop_pin_hits") - counter(before, "pitstop_pin_hits") == 1
    assert first["choices"][0]["text"] is not None


def test_last_turn_ends_program_and_unknown_program_is_404(server):
    _complete(server, list(range(500, 540)), program_id="agent-2", is_last_turn=False)
    _complete(server, list(range(500, 560)), program_id="agent-2", is_last_turn=True)
    assert server.get("/v1/programs/agent-2").status_code == 404
    r = server._client.delete("/v1/programs/agent-2")
    assert r.status_code == 404 and r.json()["error"]["code"] == "program_not_found"
    bad = server.post("/v1/programs/x/tool_result", json={"tool_name": "Bash", "duration_s": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "duration_s"
