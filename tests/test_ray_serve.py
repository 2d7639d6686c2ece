"""``pitstop serve --replicas 2`` on Ray Serve, driven by the official ``openai`` client and raw HTTP.

One server for the module: 2 replicas of the default model, 1 torch thread each, a small KV cache each, router
``program-affinity`` (``POST /debug/router`` switches the ingress to another pitstop router for one test). After
every test, KV accounting balances on every replica (``GET /debug/kv`` lists each replica's report).
"""

from __future__ import annotations


import httpx
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]'): no replica tests")

import openai  # noqa: E402
from server_helpers import API_KEY, DTYPE, MAX_MODEL_LEN, MAX_NUM_SEQS, MAX_QUEUE, MODEL, counter  # noqa: E402
from server_helpers import paused_flood, start_server  # noqa: E402

pytestmark = pytest.mark.timeout(300)
REPLICAS = 2
REPLICA = "x-pitstop-replica"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("ray"), "--replicas", str(REPLICAS), "--router", "program-affinity",
                       "--num-threads", "1", "--kv-cache-memory", "128MiB", timeout=300)
    yield srv
    assert srv.stop(timeout=60) == 0, srv.log()


@pytest.fixture(autouse=True)
def kv_balanced_after(server):
    """After each test: every replica idle, its KV accounting balanced, nothing held but pins."""
    yield
    st = server.assert_kv_balanced()
    assert len(st["replicas"]) == REPLICAS, st
    for rep in st["replicas"]:
        assert rep["ok"], rep
        assert rep["num_held"] == 0 and rep["num_used_blocks"] == rep["num_pinned_blocks"], rep
        assert rep["num_running"] == 0 and rep["num_waiting"] == 0 and rep["num_outstanding"] == 0, rep


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm():
    """The offline API with the replicas' settings (reference for greedy equality)."""
    from pitstop import LLM
    return LLM(model=MODEL, dtype=DTYPE, kv_cache_memory="128MiB", max_model_len=MAX_MODEL_LEN, num_threads=1)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_health_models_and_metrics_per_replica(server, client):
    assert server.get("/health").status_code == 200
    assert [m.id for m in client.models.list().data] == [MODEL]
    m = server.metrics()
    for i in range(REPLICAS):
        assert f'pitstop_kv_cache_blocks_total{{replica="{i}"}}' in m, sorted(m)[:20]


def test_completion_greedy_equals_llm_generate(client, llm):
    from pitstop import SamplingParams
    prompt = "The three primary colours are"
    ref = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert resp.choices[0].text == ref.outputs[0].text
    assert resp.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert resp.usage.completion_tokens == len(ref.outputs[0].token_ids)


def test_chat_and_streamed_chat_equal_llm_chat(client, llm, server):
    from pitstop import SamplingParams
    messages = [{"role": "user", "content": "Name a planet with rings."}]
    ref = llm.chat(messages, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert resp.choices[0].message.content == ref.outputs[0].text
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert len(chunks) >= 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.outputs[0].text
    with server._client.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_errors_400_401_413(server, client):
    r = server.post("/v1/completions", content=b'{"model": "x", "prompt": ',
                    headers={"content-type": "application/json"})
    assert _error(r, 400)["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, n=17)
    bad = openai.OpenAI(base_url=server.v1, api_key="wrong-key", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert _error(httpx.get(server.base_url + "/debug/kv"), 401)["type"] == "authentication_error"
    big = b'{"prompt": "' + b"a" * (8 * 2**20) + b'"}'
    assert _error(server.post("/v1/completions", content=big, headers={"content-type": "application/json"}),
                  413)["code"] == "request_too_large"


def test_disconnect_mid_stream_aborts_on_the_replica(server):
    """A client that leaves a stream early: the replica's request is aborted and its KV freed (checked by the
    autouse fixture on every replica), not run to its 1000 tokens."""
    before = counter(server.metrics(), "pitstop_generation_tokens_total")
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with server._client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got >= 3:
                break
    st = server.wait_idle(timeout=30)
    assert st["num_running"] == 0 and st["num_outstanding"] == 0, st
    assert counter(server.metrics(), "pitstop_generation_tokens_total") == before  # aborted: not finished


def test_round_robin_spreads_lone_requests(server):
    assert server.post("/debug/router", json={"router": "round-robin"}).status_code == 200
    try:
        seen = [server.post("/v1/completions", json={"model": MODEL, "prompt": f"Count: {i}", "max_tokens": 2})
                .headers[REPLICA] for i in range(4)]
    finally:
        assert server.post("/debug/router", json={"router": None}).status_code == 200
    assert len(set(seen)) == REPLICAS and seen[0] == seen[2] and seen[1] == seen[3], seen


def test_program_turns_stay_on_one_replica(server):
    """4 turns of one program, with lone requests in between, land on one replica; the program endpoints reach
    it: turns == 3 before the last turn, a tool result, 404 after the last turn; per-replica turn counts 4 and 0."""
    pid = "ray-prog-1"
    history = "You are a coding agent. Task: list the files."
    homes = []
    for turn in range(4):
        last = turn == 3
        if last:
            st = server.get(f"/v1/programs/{pid}")
            assert st.status_code == 200 and st.json()["turns"] == 3, st.text
            assert server.post(f"/v1/programs/{pid}/tool_result",
                               json={"tool_name": "ls", "duration_s": 0.5}).status_code == 200
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": history, "max_tokens": 4,
                                                 "temperature": 0, "program_id": pid, "is_last_turn": last})
        assert r.status_code == 200, r.text
        homes.append(r.headers[REPLICA])
        history += r.json()["choices"][0]["text"] + f"\nTool output {turn}: ok.\n"
        lone = server.post("/v1/completions", json={"model": MODEL, "prompt": f"Lone {turn}", "max_tokens": 2})
        assert lone.status_code == 200
    assert len(set(homes)) == 1, homes
    assert server.get(f"/v1/programs/{pid}").status_code == 404
    m = server.metrics()
    turns = [counter(m, "pitstop_program_turns", replica=str(i)) for i in range(REPLICAS)]
    assert sorted(turns) == [0, 4], turns


def test_queue_full_429_under_flood(server):
    """A flood of 3x the total admission limit against paused engines: each replica admits its limit, the excess
    gets the single server's 429 + Retry-After, and the admitted ones complete once the engines resume."""
    limit = REPLICAS * (MAX_NUM_SEQS + MAX_QUEUE)
    num = 3 * limit

    responses = paused_flood(server, num, limit, max_tokens=8, wait_s=90)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == limit and codes.count(429) == num - limit, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert _error(r, 429)["type"] == "rate_limit_exceeded"
    assert len({r.headers[REPLICA] for r in responses if r.status_code == 200}) == REPLICAS
