"""Schema fuzzing (issue 14): schemathesis generates requests from the server's own OpenAPI document
(FastAPI's ``/openapi.json``) against a real ``pitstop serve``: no 5xx, every 4xx has an OpenAI error
body, and afterwards the server is healthy with balanced KV accounting. Bounded (``FUZZ_EXAMPLES`` per
operation) so it fits ``make test``; ``benchmarks/fuzz_server.py`` runs it longer. The cases are the same on
every run (hypothesis derandomized: a test must not pass or fail by luck); ``PITSTOP_FUZZ_SEED=<int>`` draws
another set, and the longer benchmark run draws fresh ones."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings

from server_helpers import API_KEY, start_server

FUZZ_EXAMPLES = int(os.environ.get("PITSTOP_FUZZ_EXAMPLES", "40"))
FUZZ_SEED = os.environ.get("PITSTOP_FUZZ_SEED")
pytestmark = pytest.mark.timeout(max(300, 10 * FUZZ_EXAMPLES))
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("fuzz"), "--max-tokens-limit", "4", "--max-num-seqs", "4",
                       "--program-idle-timeout", "5")
    yield srv
    srv.stop()


def _operations(server) -> list:
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json", headers=AUTH)
    return [op.ok() for op in schema.get_all_operations()]


def test_no_5xx_and_openai_error_bodies(fuzz_server):
    """Every operation of the OpenAPI document, ``FUZZ_EXAMPLES`` generated cases each (hypothesis drives
    schemathesis' strategies directly: its pytest plugin does not load under pytest 9)."""
    ops = _operations(fuzz_server)
    paths = {op.path for op in ops}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/programs/{program_id}"} <= paths, paths
    statuses: Counter = Counter()
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=FUZZ_SEED is None)
        def check(case) -> None:
            resp = case.call(headers=AUTH, timeout=60)
            statuses[(case.path, resp.status_code)] += 1
            assert resp.status_code < 500, (f"{case.method} {case.path}: {resp.status_code} {resp.text[:500]}\n"
                                            f"body: {case.body!r}\nserver log:\n{fuzz_server.log()[-2000:]}")
            if resp.status_code >= 400:
                body = resp.json()
                assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
                assert "Traceback" not in resp.text

        (check if FUZZ_SEED is None else seed(int(FUZZ_SEED))(check))()
    print("fuzz statuses:", dict(sorted(statuses.items())))  # shown with -s (benchmarks/fuzz_server.py)
    # the fuzz reached the engine, not only validation (random completion prompts are mostly out of vocab)
    assert statuses[("/v1/completions", 200)] + statuses[("/v1/chat/completions", 200)] > 0, statuses


NEGATIVE_EXAMPLES = int(os.environ.get("PITSTOP_FUZZ_NEGATIVE_EXAMPLES", "25"))


def test_negative_data_is_rejected(fuzz_server):
    """schemathesis' negative mode: requests that break the OpenAPI document (wrong types, missing required
    fields, out-of-range values, bad roles) must be rejected with a 4xx (``negative_data_rejection``), never a
    5xx (``not_a_server_error``), with an OpenAI error body. The document says exactly what the server accepts."""
    from schemathesis import GenerationMode
    from schemathesis.checks import negative_data_rejection, not_a_server_error

    from hypothesis.errors import Unsatisfiable

    statuses: Counter = Counter()
    unbreakable = []
    for op in _operations(fuzz_server):
        @given(case=op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        @settings(max_examples=NEGATIVE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=FUZZ_SEED is None)
        def check(case) -> None:
            resp = case.call(headers=AUTH, timeout=60)
            statuses[(case.path, resp.status_code)] += 1
            case.validate_response(resp, checks=[not_a_server_error, negative_data_rejection])
            if resp.status_code >= 400 and resp.status_code != 404:
                assert set(resp.json()) == {"error"}, resp.text

        try:
            (check if FUZZ_SEED is None else seed(int(FUZZ_SEED))(check))()
        except Unsatisfiable:  # nothing in it can be broken (no body, only free-form string parameters)
            unbreakable.append(f"{op.method.upper()} {op.path}")
    print("negative fuzz statuses:", dict(sorted(statuses.items())), "no negative data:", unbreakable)
    broken = {path for (path, st) in statuses}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/programs/{program_id}/tool_result"} <= broken, statuses


def test_server_healthy_and_kv_balanced_after_fuzzing(fuzz_server):
    assert fuzz_server.get("/health").status_code == 200
    fuzz_server.assert_kv_balanced()
