"""Tenants over HTTP (issue 14): with two API keys, programs are scoped per key, and
``--cache-isolation per-key`` keeps tenants from sharing prefix-cache blocks; /metrics has no
high-cardinality labels."""

from __future__ import annotations

import re

import httpx
import pytest

from server_helpers import own_server

pytestmark = pytest.mark.timeout(180)
KEYS = ("key-of-tenant-a", "key-of-tenant-b")


server, kv_balanced_after = own_server("tenants", "--api-key", KEYS[1], "--cache-isolation", "per-key",
                                       "--ttl-policy", "fixed", "--ttl-seconds", "600", api_key=KEYS[0])


@pytest.fixture
def tenant_b(server):
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=60) as c:
        yield c


def _complete(client, **extra) -> dict:
    r = client.post("/v1/completions", json={"prompt": list(range(300, 380)), "max_tokens": 2, "temperature": 0,
                                             **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_programs_are_scoped_per_key(server, tenant_b):
    a = server._client
    _complete(a, program_id="shared-name", is_last_turn=False)
    assert a.get("/v1/programs/shared-name").status_code == 200
    assert tenant_b.get("/v1/programs/shared-name").status_code == 404
    assert tenant_b.delete("/v1/programs/shared-name").status_code == 404
    assert a.get("/v1/programs/shared-name").json()["pinned_blocks"] > 0  # B could not end it
    _complete(tenant_b, program_id="shared-name", is_last_turn=False)  # B's own program of the same name
    assert tenant_b.get("/v1/programs/shared-name").json()["turns"] == 1
    assert a.get("/v1/programs/shared-name").json()["turns"] == 1
    for c in (a, tenant_b):
        assert c.delete("/v1/programs/shared-name").status_code == 200


def test_tenants_never_share_prefix_cache_blocks(server, tenant_b):
    prompt = {"prompt": list(range(600, 680))}
    _complete(server._client, **prompt)
    again = _complete(server._client, **prompt)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64  # A hits its own blocks
    other = _complete(tenant_b, **prompt)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_unknown_key_is_401(server):
    r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "hi"},
                   headers={"Authorization": "Bearer key-of-nobody"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_metrics_have_no_high_cardinality_labels(server):
    _complete(server._client, program_id="agent-xyz-123", is_last_turn=False)
    text = server.get("/metrics").text
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {"endpoint", "status", "finished_reason", "reason", "le", "quantile"}, labels
    assert "agent-xyz-123" not in text and "cmpl-" not in text
    server._client.delete("/v1/programs/agent-xyz-123")
