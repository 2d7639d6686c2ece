"""``pitstop serve --speculative-config``: speculative decoding behind the OpenAI API, its ``/metrics``, the
per-request opt-out, and the flag's errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server_helpers import MODEL, REPO, counter, start_server

SPEC = json.dumps({"method": "ngram", "num_speculative_tokens": 4})


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("spec"), "--speculative-config", SPEC)
    yield srv
    srv.stop()


def test_completions_with_speculation_and_metrics(spec_server):
    body = {"model": MODEL, "prompt": "Repeat twice: one two three four five six. one two three",
            "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    r = spec_server.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    m = spec_server.metrics()
    drafted = counter(m, "pitstop_spec_decode_num_draft_tokens")
    assert drafted > 0
    assert counter(m, "pitstop_spec_decode_num_accepted_tokens") <= drafted
    assert counter(m, "pitstop_spec_decode_num_drafts_per_pos", position="0") > 0
    assert 1.0 <= counter(m, "pitstop_spec_decode_mean_accepted_length") <= 5.0
    opt_out = spec_server.post("/v1/completions", json=dict(body, speculative=False))
    assert opt_out.status_code == 200
    assert opt_out.json()["choices"][0]["text"] == r.json()["choices"][0]["text"]  # greedy: same text either way
    assert counter(spec_server.metrics(), "pitstop_spec_decode_num_draft_tokens") == drafted
    spec_server.assert_kv_balanced()


@pytest.mark.parametrize("value, message", [('{"method": "eagle"}', "method must be one of"),
                                            ("{not json", "Expecting property name"),
                                            ('{"method": "ngram", "k": 3}', "unknown key")])
def test_bad_speculative_config_is_refused(value, message):
    p = subprocess.run([sys.executable, "-m", "pitstop.cli.main", "serve", "--speculative-config", value],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and message in p.stderr
