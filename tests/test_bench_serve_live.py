"""``pitstop bench serve`` end to end against the shared live test server (tests/server_helpers.py)."""

from __future__ import annotations

import json

import pytest
from server_helpers import API_KEY, MODEL, counter
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

from pitstop.bench.serve import main

pytestmark = pytest.mark.timeout(240)


def test_bench_serve_reports_what_the_server_did(server, tmp_path):
    before = server.metrics()
    out = tmp_path / "r.json"
    rc = main(["--base-url", server.base_url, "--model", MODEL, "--api-key", API_KEY, "--trace", "random",
               "--random-input-len", "24", "--random-output-len", "5", "--num-requests", "6", "--rates", "4,8",
               "--warmup-requests", "2", "--slo", "ttft=60000,tpot=60000", "--save-result", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    for rate in ("4", "8"):
        s = res["servers"]["pitstop"][rate]["summary"]
        assert s["completed"] == 6 and s["failed"] == 0 and s["ignore_eos"] is True
        assert s["total_output_tokens"] == 6 * 5
        assert 6 * 24 < s["total_input_tokens"] <= 6 * 27  # + the run's salt word (1-3 tokens)
        assert 0 < s["ttft_ms"]["median"] <= s["e2el_ms"]["median"] and s["slo_attainment"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 0
    server.wait_idle()
    after = server.metrics()
    # the server generated at least what the benchmark counted (plus its warm-up and ignore_eos probes)
    gen = counter(after, "pitstop_generation_tokens_total") - counter(before, "pitstop_generation_tokens_total")
    assert gen >= 2 * 6 * 5 + 2 * 5
    # each run salts its prompts: the second rate replays the same workload without prefix-cache hits
    hits = counter(after, "pitstop_prefix_cache_hits_tokens") - counter(before, "pitstop_prefix_cache_hits_tokens")
    assert hits == 0
