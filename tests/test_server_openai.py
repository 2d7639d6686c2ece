"""The server driven by the official ``openai`` client: sync, async, streaming; completions and chat.

One real ``pitstop serve`` subprocess (tests/server_helpers.py) serves every test_server_* module;
after each test its KV accounting must balance (``GET /debug/kv``).
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from server_helpers import API_KEY, DTYPE, MAX_MODEL_LEN, MODEL, counter
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm():
    """The offline API on the same model, dtype and context length (reference for greedy equality)."""
    from pitstop import LLM
    return LLM(model=MODEL, dtype=DTYPE, kv_cache_memory="128MiB", max_model_len=MAX_MODEL_LEN, num_threads=2)


def test_startup_line_names_the_kernel_choice(server, llm):
    """The server logs the dtype and kernels it chose in its startup line; the in-process reference
    (same CPU, same ``dtype=auto``) chose the same."""
    want = llm.llm_engine.executor.kernels.summary()
    line = next(ln for ln in server.log_path.read_text().splitlines() if ln.startswith("pitstop: serving"))
    assert want in line


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]


def test_completion_greedy_equals_llm_generate(client, llm):
    from pitstop import SamplingParams
    prompts = ["The three primary colours are", "def fibonacci(n):"]
    ref = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    for prompt, r in zip(prompts, ref):
        resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
        assert resp.choices[0].text == r.outputs[0].text
        assert resp.usage.completion_tokens == len(r.outputs[0].token_ids)
        assert resp.usage.prompt_tokens == len(r.prompt_token_ids)
        assert resp.choices[0].finish_reason == r.outputs[0].finish_reason


def test_chat_greedy_equals_llm_chat(client, llm):
    from pitstop import SamplingParams
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a planet with rings."}]
    ref = llm.chat(messages, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    assert resp.choices[0].message.content == ref.outputs[0].text
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert resp.usage.completion_tokens == len(ref.outputs[0].token_ids)


def test_return_token_ids_match_llm_generate(client, llm):
    """vLLM's ``return_token_ids``: output (and prompt) token ids, non-streamed, streamed and in chat."""
    from pitstop import SamplingParams
    prompt = "The capital of France is"
    ref = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    kw = dict(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, extra_body={"return_token_ids": True})
    full = client.completions.create(**kw).choices[0].model_extra
    assert full["token_ids"] == list(ref.outputs[0].token_ids)
    assert full["prompt_token_ids"] == list(ref.prompt_token_ids)
    chunks = [c.choices[0].model_extra for c in client.completions.create(stream=True, **kw) if c.choices]
    assert [t for c in chunks for t in c["token_ids"]] == list(ref.outputs[0].token_ids)
    assert chunks[0]["prompt_token_ids"] == list(ref.prompt_token_ids)
    assert "token_ids" not in client.completions.create(model=MODEL, prompt=prompt, max_tokens=2).choices[0].model_extra
    msgs = [{"role": "user", "content": "Hi"}]
    chat_ref = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0]
    resp = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                          extra_body={"return_token_ids": True})
    assert resp.model_extra["prompt_token_ids"] == list(chat_ref.prompt_token_ids)
    assert resp.choices[0].model_extra["token_ids"] == list(chat_ref.outputs[0].token_ids)
    stream = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True, extra_body={"return_token_ids": True}))
    assert stream[0].model_extra["prompt_token_ids"] == list(chat_ref.prompt_token_ids)
    got = [t for c in stream for ch in c.choices for t in (ch.model_extra or {}).get("token_ids", [])]
    assert got == list(chat_ref.outputs[0].token_ids)


def test_completion_stream_matches_non_stream(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_stream_with_usage(client):
    msgs = [{"role": "user", "content": "Count from one to five."}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    usage = chunks[-1].usage
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the same prompt again: its full blocks come from the prefix cache
    assert usage.prompt_tokens_details.cached_tokens >= 16 * (usage.prompt_tokens // 16 - 1)


def test_async_client_concurrent(server):
    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)
        try:
            chats = [aclient.chat.completions.create(model=MODEL, max_tokens=6, temperature=0,
                                                     messages=[{"role": "user", "content": f"Say {w}."}])
                     for w in ("red", "green", "blue")]

            async def streamed() -> str:
                s = await aclient.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6,
                                                     temperature=0, stream=True)
                return "".join([c.choices[0].text async for c in s])

            return await asyncio.gather(*chats, streamed())
        finally:
            await aclient.close()

    *chats, text = asyncio.run(run())
    assert all(c.choices[0].finish_reason in ("stop", "length") for c in chats)
    assert all(c.usage.completion_tokens <= 6 for c in chats)
    assert isinstance(text, str) and text


def test_sampling_extras_n_seed_logprobs(client):
    kw = dict(model=MODEL, prompt="My favourite food is", max_tokens=8, temperature=1.0, seed=7, n=2,
              extra_body={"top_k": 20, "min_p": 0.05, "ignore_eos": True})
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert a.usage.completion_tokens == 16  # ignore_eos: exactly max_tokens each

    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=3,
                                          presence_penalty=0.5, frequency_penalty=0.5)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for tok in content:
        assert len(tok.top_logprobs) == 3 and tok.logprob <= 0
        assert tok.top_logprobs[0].logprob >= tok.top_logprobs[-1].logprob
        assert abs(tok.top_logprobs[0].logprob - tok.logprob) < 1e-4  # greedy picks the top token

    comp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == comp.choices[0].text


def test_stop_string_and_batch_prompts(client):
    resp = client.completions.create(model=MODEL, prompt=["1, 2, 3, 4,", "a, b, c, d,"], max_tokens=20,
                                     temperature=0, stop=[","])
    assert len(resp.choices) == 2
    for c in resp.choices:
        assert "," not in c.text and c.finish_reason == "stop"


def test_metrics_agree_with_requests(server, client):
    before = server.metrics()
    sent = []
    for i in range(3):
        sent.append(client.completions.create(model=MODEL, prompt=f"Metrics probe {i}:", max_tokens=5,
                                              temperature=0, extra_body={"ignore_eos": True}))
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "probe"}],
                                            max_tokens=4, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True})
    usage = [c for c in stream][-1].usage
    server.wait_idle()
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    prompt = sum(r.usage.prompt_tokens for r in sent) + usage.prompt_tokens
    gen = sum(r.usage.completion_tokens for r in sent) + usage.completion_tokens
    assert gen == 3 * 5 + 4
    assert delta("pitstop_request_success_total") == 4
    assert delta("pitstop_request_success_total", finished_reason="length") == 4
    assert delta("pitstop_prompt_tokens_total") == prompt
    assert delta("pitstop_generation_tokens_total") == gen
    assert delta("pitstop_http_requests_total", endpoint="/v1/completions", status="200") == 3
    assert delta("pitstop_http_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert delta("pitstop_time_to_first_token_seconds_count") == 4
    assert delta("pitstop_e2e_request_latency_seconds_count") == 4
    assert delta("pitstop_time_per_output_token_seconds_count") == 4
    assert counter(after, "pitstop_num_requests_running") == 0
    assert counter(after, "pitstop_kv_cache_blocks_used") == 0
    assert 0.0 <= counter(after, "pitstop_prefix_cache_hit_rate") <= 1.0
