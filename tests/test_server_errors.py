"""Raw HTTP cases (httpx): malformed JSON, wrong types, bad values, unknown model, huge prompt, bad key,
client disconnect mid-stream (request aborted, KV freed), and 429 under a bounded flood."""

from __future__ import annotations


import httpx
import pytest
from server_helpers import API_KEY, MAX_MODEL_LEN, MAX_NUM_SEQS, MAX_QUEUE, MODEL, counter, paused_flood
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.timeout(180)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json(server):
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = server.post(path, content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
        assert _error(r, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "temperature": [1]}, "temperature"),
    ({"prompt": {"text": "hi"}}, "prompt"),
    ({"max_tokens": 4}, "prompt"),
])
def test_wrong_types(server, body, param):
    err = _error(server.post("/v1/completions", json=body), 400)
    assert err["param"].startswith(param)


@pytest.mark.parametrize("body,param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"n": 0}, "n"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
])
def test_bad_values(server, body, param):
    err = _error(server.post("/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "hi"}], **body}), 400)
    assert err["param"] == param, err


@pytest.mark.parametrize("messages,param,says", [
    ([{"role": "banana", "content": "hi"}], "messages.0", "banana"),
    ([{"role": "", "content": "hi"}], "messages.0", "expected tags"),
    ([{"content": "hi"}], "messages.0", "role"),
    ([{"role": "user"}], "messages.0.content", "Field required"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], "messages.1.tool_call_id", "required"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "messages.1", "content or tool_calls"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}], "messages.0.content",
     "'text'"),
    ([{"role": "user", "content": 7}], "messages.0.content", "string"),
    ([{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}],
     "messages.0.tool_calls.0.function.arguments", "required"),
])
def test_messages_are_validated_as_openai_does(server, messages, param, says):
    """Roles, required fields per role and content types (issue 20: role "banana" or "" with no content used to
    generate); the 400 names the field."""
    err = _error(server.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2}), 400)
    assert err["param"] == param and says in err["message"], err


def test_every_role_and_text_parts_are_accepted(server):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "system", "content": [{"type": "text",
                                                                                          "text": "Be kind."}]},
                {"role": "user", "content": [{"type": "text", "text": "Call f."}, {"type": "text", "text": "Now."}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}, {"role": "user", "content": "Thanks."}]
    r = server.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2, "temperature": 0,
                                                  "return_token_ids": True})
    assert r.status_code == 200, r.text
    from transformers import AutoTokenizer

    from pitstop.model.resolve import resolve_model
    text = AutoTokenizer.from_pretrained(str(resolve_model(MODEL))).decode(r.json()["prompt_token_ids"])
    # the text parts joined by a newline, developer rendered as the template's system
    assert "Call f.\nNow." in text and "<|im_start|>system\nBe brief." in text


def test_unknown_model(server):
    err = _error(server.post("/v1/completions", json={"model": "gpt-17", "prompt": "hi"}), 400)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_prompt_too_long(server):
    prompt = "hello " * (MAX_MODEL_LEN + 100)
    err = _error(server.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}), 400)
    assert err["code"] == "context_length_exceeded" and "max_model_len" in err["message"]
    err = _error(server.post("/v1/completions", json={"prompt": "hi", "max_tokens": MAX_MODEL_LEN}), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(server.post("/v1/completions", json={"prompt": [1, 2, 10**9], "max_tokens": 1}), 400)
    assert "outside" in err["message"]


def test_api_key(server):
    body = {"prompt": "hi", "max_tokens": 1}
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        assert _error(c.post("/v1/completions", json=body), 401)["type"] == "authentication_error"
        assert _error(c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        assert _error(c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}x"}), 401)
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_disconnect_mid_stream_aborts_and_frees_kv(server):
    before = server.metrics()
    body = {"model": MODEL, "prompt": "Write a very long story about a dragon.", "max_tokens": 1000,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: {"):
                    got += 1
                if got == 3:
                    break
            st = server.kv()
            assert st["num_running"] == 1 and st["num_held"] == 1, st
        # leaving the block closes the connection mid-stream
    st = server.wait_idle(timeout=30)  # raises if the request is still running then
    # its own blocks are freed (pins of earlier tests' programs on the shared server may remain)
    assert st["num_held"] == 0 and st["num_used_blocks"] == st["num_pinned_blocks"], st
    after = server.metrics()
    gen = counter(after, "pitstop_generation_tokens_total") - counter(before, "pitstop_generation_tokens_total")
    assert gen == 0  # aborted, not run to 1000 tokens (aborted requests are not counted as finished)


def test_queue_full_429_under_bounded_flood(server):
    """A flood of 3x the admission limit against a paused engine (no request can finish during the flood):
    exactly the limit is admitted, the excess gets 429 + Retry-After, and the admitted ones complete."""
    limit = MAX_NUM_SEQS + MAX_QUEUE
    num = 3 * limit

    responses = paused_flood(server, num, limit, max_tokens=24, wait_s=60)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == limit and codes.count(429) == num - limit, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert _error(r, 429)["type"] == "rate_limit_exceeded"
    assert server.get("/health").status_code == 200


@pytest.mark.parametrize("path,body,param,flag", [
    ("/v1/completions", {"prompt": "hi", "n": 17}, "n", "--max-n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs", "--max-logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 21}, "top_logprobs", "--max-logprobs"),
    ("/v1/completions", {"prompt": "hi", "stop": [f"s{i}" for i in range(17)]}, "stop", "--max-stop"),
    ("/v1/completions", {"prompt": "hi", "stop": "x" * 1025}, "stop", "--max-stop-chars"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {str(i): 1.0 for i in range(301)}}, "logit_bias",
     "--max-logit-bias"),
])
def test_limits_are_400s_naming_the_limit(server, path, body, param, flag):
    err = _error(server.post(path, json=body), 400)
    assert err["param"] == param and flag in err["message"] and err["code"] == "limit_exceeded"


def test_body_over_the_size_limit_is_413(server):
    big = b'{"prompt": "' + b"a" * (8 * 2**20) + b'"}'
    err = _error(server.post("/v1/completions", content=big, headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large" and "--max-request-bytes" in err["message"]

    def chunks():  # no Content-Length: the limit is counted while the body arrives
        yield b'{"prompt": "'
        for _ in range(9):
            yield b"a" * 2**20
        yield b'"}'
    err = _error(server.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large"


def test_error_bodies_carry_no_traceback_or_path(server):
    bad = [server.post("/v1/completions", json={"prompt": "hi", "max_tokens": -1}),
           server.post("/v1/completions", content=b"{", headers={"content-type": "application/json"}),
           server.post("/v1/chat/completions", json={"messages": [{"role": "nobody", "content": 1}]}),
           server.get("/v1/programs/none")]
    for r in bad:
        assert 400 <= r.status_code < 500, r.text
        text = r.text
        assert "Traceback" not in text and "/pitstop/" not in text and ".py" not in text, text
