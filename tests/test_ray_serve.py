"""``pitstop serve --replicas 2`` on Ray Serve, driven by the official ``openai`` client and raw HTTP.

One server for the module: 2 replicas of the default model, 1 torch thread each, a small KV cache each, router
``program-affinity`` on the exact prefix index (the replicas publish KV events; a program's turn leaves a home
with more than 2 outstanding requests over the other replica) (``POST /debug/router`` switches the ingress to
another pitstop router for one test). After every test, KV accounting balances on every replica (``GET /debug/kv``
lists each replica's report). Programs pin their KV between turns (fixed TTL); the migration controller runs
with a threshold no test reaches except the migration test, which lowers it. The last test kills a replica and
waits for Ray Serve to bring it back.
"""

from __future__ import annotations


import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]'): no replica tests")

import openai  # noqa: E402
from server_helpers import API_KEY, DTYPE, MAX_MODEL_LEN, MAX_NUM_SEQS, MAX_QUEUE, MODEL, counter  # noqa: E402
from server_helpers import paused_flood, start_server  # noqa: E402

pytestmark = pytest.mark.timeout(300)
REPLICAS = 2
REPLICA = "x-pitstop-replica"
ROUTER_CONFIG = {"index": "exact", "load_abs_threshold": 2, "load_rel_threshold": 1.5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("ray"), "--replicas", str(REPLICAS), "--router", "program-affinity",
                       "--router-config", json.dumps(ROUTER_CONFIG), "--num-threads", "1",
                       "--ttl-policy", "fixed", "--ttl-seconds", "120",
                       "--migration-config", json.dumps({"load_abs_threshold": 1000, "period_s": 0.5}), "--kv-cache-memory", "128MiB", timeout=300)
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


def _router_state(server, prompt: str) -> dict:
    r = server.post("/debug/router-state", json={"model": MODEL, "prompt": prompt})
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.25)


def test_kv_events_index_the_serving_replica_until_evicted(server):
    """After a request finishes, the router's exact index (fed by the replicas' KV events) holds its prompt's
    blocks on the replica that served it and nowhere else; after the prefix cache is reset, they are gone."""
    prompt = "An inventory of the lighthouse: " + " ".join(f"lamp{i}" for i in range(80))
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    home, n_blocks = r.headers[REPLICA], r.json()["usage"]["prompt_tokens"] // 16
    assert n_blocks >= 4

    def indexed():
        st = _router_state(server, prompt)
        rows = {row["replica_id"]: row for row in st["replicas"]}
        return rows if rows[home]["match_blocks"] == n_blocks else None

    rows = _wait(indexed, 20, "the KV events of the finished request")
    assert all(row["match_blocks"] == 0 for rid, row in rows.items() if rid != home), rows
    assert server.post("/reset_prefix_cache").status_code == 200
    rows = _wait(lambda: (lambda rs: rs if rs[home]["match_blocks"] == 0 else None)(
        {row["replica_id"]: row for row in _router_state(server, prompt)["replicas"]}), 20, "the removal events")
    assert rows[home]["kv_index_blocks"] == 0, rows


def _replica_labels(server) -> dict[str, str]:
    """replica id -> the ``replica`` label of its /metrics samples."""
    return {rep["replica_id"]: str(rep["replica"]) for rep in server.get("/debug/kv").json()["replicas"]}


def _programs_on_one_replica(server, prefix: str, n: int = 7) -> tuple[str, list[str], dict[str, str]]:
    """First turns of ``n`` programs (pinned); the replica that got the most, its programs, and every home."""
    homes: dict[str, str] = {}
    for k in range(n):
        pid = f"{prefix}-{k}"
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"Program {pid} starts.", "max_tokens": 1,
                                                 "program_id": pid, "is_last_turn": False})
        assert r.status_code == 200, r.text
        homes[pid] = r.headers[REPLICA]
    busiest = max(set(homes.values()), key=list(homes.values()).count)
    return busiest, [pid for pid, h in homes.items() if h == busiest], homes


@contextlib.contextmanager
def _long_turns(server, pids: list[str]):
    """Long streamed last turns of ``pids`` (400 tokens each), held open: yields the list their replicas are
    appended to once each has streamed a token; on exit the clients leave (the replicas abort the turns)."""
    started: list[str] = []
    release = threading.Event()

    def long_turn(pid):
        body = {"model": MODEL, "prompt": f"{pid} keeps talking.", "max_tokens": 400, "ignore_eos": True,
                "stream": True, "program_id": pid, "is_last_turn": True}
        with server._client.stream("POST", "/v1/completions", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    started.append(resp.headers[REPLICA])
                    release.wait(120)
                    return

    with ThreadPoolExecutor(len(pids)) as pool:
        futures = [pool.submit(long_turn, pid) for pid in pids]
        try:
            yield started
        finally:
            release.set()
            for f in futures:
                f.result()


def test_program_turn_moves_off_an_overloaded_home_and_metrics_say_so(server):
    """Programs whose first turn went to one replica H: three long turns of three of them load H (3 outstanding
    vs 0 > the threshold of 2); the next turn of a fourth is moved to the other replica, which counts the move;
    with H idle again, that program's turns stay on its new home."""
    busiest, mine, homes = _programs_on_one_replica(server, "ray-move")
    assert len(mine) >= 4, homes
    loaders, mover = mine[:3], mine[3]
    labels = _replica_labels(server)
    before = counter(server.metrics(), "pitstop_router_program_moves_in_total", reason="overloaded")
    with _long_turns(server, loaders) as started:
        _wait(lambda: len(started) == 3, 120, "three long turns streaming")
        assert set(started) == {busiest}, started
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"{mover} continues.", "max_tokens": 2,
                                                 "program_id": mover, "is_last_turn": False})
    assert r.status_code == 200, r.text
    moved_to = r.headers[REPLICA]
    assert moved_to != busiest
    m = server.metrics()
    assert counter(m, "pitstop_router_program_moves_in_total", reason="overloaded",
                   replica=labels[moved_to]) >= 1
    assert counter(m, "pitstop_router_program_moves_in_total", reason="overloaded") == before + 1
    state = _router_state(server, "x")
    assert state["moves_by_reason"]["overloaded"] >= 1
    server.wait_idle(timeout=60)
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"{mover} ends.", "max_tokens": 2,
                                             "program_id": mover, "is_last_turn": True})
    assert r.status_code == 200 and r.headers[REPLICA] == moved_to
    for pid in mine[4:] + [p for p in homes if p not in mine]:
        server._client.delete(f"/v1/programs/{pid}")


def test_migration_moves_a_waiting_programs_pin_to_the_idle_replica(server):
    """Three long turns load replica H; the migration controller moves the largest waiting pin on H (program M's,
    grown by a long second turn) to the idle replica through Ray's object store; M's next turn is routed there and
    finds its whole context in that replica's cache; /metrics counts the move, its blocks, bytes and duration."""
    busiest, mine, homes = _programs_on_one_replica(server, "ray-mig")
    assert len(mine) >= 4, homes
    loaders, mover = mine[:3], mine[3]
    story = "The keeper's log, day one: " + " ".join(f"wave{i}" for i in range(120))
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": story, "max_tokens": 2, "temperature": 0,
                                             "program_id": mover, "is_last_turn": False})
    assert r.status_code == 200 and r.headers[REPLICA] == busiest, r.text
    context = story + r.json()["choices"][0]["text"]
    assert server.post("/debug/migration", json={"load_abs_threshold": 2}).status_code == 200
    try:
        with _long_turns(server, loaders) as started:
            report = _wait(lambda: (lambda rep: rep if rep["migrations"] >= 1 else None)(
                server.post("/debug/migration", json={}).json()), 60, "a migration")
    finally:
        assert server.post("/debug/migration", json={"load_abs_threshold": 1000}).status_code == 200
    assert set(started) == {busiest}, started
    last = report["last"]
    assert last["program_id"].endswith(mover) and last["from"] == busiest and last["to"] != busiest, last
    assert last["blocks"] >= 8 and last["bytes"] > 0 and last["seconds"] > 0, last
    m = server.metrics()
    assert counter(m, "pitstop_migrations_total") >= 1 and counter(m, "pitstop_migration_bytes_total") > 0
    server.wait_idle(timeout=60)
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": context + " Day two:", "max_tokens": 2,
                                             "temperature": 0, "program_id": mover, "is_last_turn": True})
    assert r.status_code == 200, r.text
    assert r.headers[REPLICA] == last["to"]
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= (last["blocks"] - 2) * 16  # re-tokenized end
    for pid in homes:
        if pid not in loaders and pid != mover:
            server._client.delete(f"/v1/programs/{pid}")


def test_a_killed_replica_ends_its_stream_with_an_error_and_comes_back(server):
    """Kill the replica serving a stream (SIGKILL of its process): the client gets an error event and [DONE]
    within 30 s; /health says a replica is down; new requests succeed on the other replica; a program whose home
    was the dead replica continues there with a re-prefill; Ray Serve restarts the replica and, under
    round-robin, it receives traffic again."""
    pids = {rep["replica_id"]: rep["pid"] for rep in server.get("/debug/kv").json()["replicas"]}
    body = {"model": MODEL, "prompt": "Recite the alphabet slowly.", "max_tokens": 1000, "ignore_eos": True,
            "stream": True}
    lines: list[str] = []
    with server._client.stream("POST", "/v1/completions", json=body, timeout=60) as resp:
        victim = resp.headers[REPLICA]
        # a program whose first turn went to the victim
        prog = None
        for k in range(6):
            r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"Fault program {k}.",
                                                     "max_tokens": 1, "program_id": f"ray-fault-{k}",
                                                     "is_last_turn": False})
            if r.headers[REPLICA] == victim:
                prog = f"ray-fault-{k}"
                break
        it = resp.iter_lines()
        for line in it:
            lines.append(line)
            if sum(ln.startswith("data: ") for ln in lines) >= 3:
                break
        t0 = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        for line in it:
            lines.append(line)
        waited = time.monotonic() - t0
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert data[-1] == "[DONE]", data[-3:]
    assert "error" in json.loads(data[-2]) and waited < 30, (data[-2], waited)
    health = server.get("/health")
    assert health.status_code == 503, health.text
    for i in range(3):
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"After the fault {i}", "max_tokens": 2})
        assert r.status_code == 200 and r.headers[REPLICA] != victim, r.text
    if prog is not None:
        r = server.post("/v1/completions", json={"model": MODEL, "prompt": f"{prog} goes on.", "max_tokens": 2,
                                                 "program_id": prog, "is_last_turn": True})
        assert r.status_code == 200 and r.headers[REPLICA] != victim, r.text
        assert _router_state(server, "x")["moves_by_reason"]["gone"] >= 1

    def back():
        kv = server.get("/debug/kv").json()
        ids = {rep["replica_id"] for rep in kv["replicas"]}
        return ids if kv.get("replicas_missing") == 0 and len(ids) == REPLICAS and victim not in ids else None

    ids = _wait(back, 240, "Ray Serve to restart the killed replica")
    assert server.get("/health").status_code == 200
    assert server.post("/debug/router", json={"router": "round-robin"}).status_code == 200
    try:
        seen = {server.post("/v1/completions", json={"model": MODEL, "prompt": f"Back {i}", "max_tokens": 2})
                .headers[REPLICA] for i in range(4)}
    finally:
        assert server.post("/debug/router", json={"router": None}).status_code == 200
    assert seen == ids, (seen, ids)
