"""Tool calling and structured outputs over HTTP, driven by the official ``openai`` client (sync, async,
streaming) on the shared ``pitstop serve`` (default model, SmolLM2-135M-Instruct, whose chat template has no
tools section: tools go into the system prompt in the Hermes format).

Tests that need grammar-constrained decoding in the engine first probe the server (a ``guided_choice``
request must return exactly the choice) and skip when it is not there. After each test the server's KV
accounting must balance (``kv_balanced_after``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest
from server_helpers import API_KEY, MODEL, constrained, counter, need_constraints  # noqa: F401
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.timeout(300)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 10}},
                   "required": ["tz"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
STRICT_TOOLS = [{**WEATHER, "function": {**WEATHER["function"], "strict": True}}, TIME]  # auto: calls constrained
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
MODES = {  # every mode: request fields (besides messages)
    "none": {"tools": TOOLS, "tool_choice": "none"},
    "auto": {"tools": TOOLS, "tool_choice": "auto"},
    "auto_strict": {"tools": STRICT_TOOLS, "tool_choice": "auto"},
    "required": {"tools": TOOLS, "tool_choice": "required"},
    "required_single": {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
    "named": {"tools": TOOLS, "tool_choice": NAMED},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}},
}
CONSTRAINED = {"auto_strict", "required", "required_single", "named", "json_object", "json_schema"}
ASK_JSON = [{"role": "user", "content": "Give a JSON object with the key city set to Paris."}]


def messages(mode: str) -> list[dict]:
    """The weather question; a short JSON request for the JSON modes (json_object has no length bound)."""
    return ASK_JSON if mode.startswith("json") else ASK


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


def create(client, mode: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages(mode), temperature=0, max_tokens=60,
                                          **MODES[mode], **kw)


def check_message(mode: str, msg, finish: str) -> None:
    """What every mode guarantees about a message."""
    if mode in ("required", "required_single", "named"):
        assert msg.tool_calls and finish == "tool_calls", (msg, finish)
        if mode == "required_single":
            assert len(msg.tool_calls) == 1
        for tc in msg.tool_calls:
            tool = next(t for t in TOOLS if t["function"]["name"] == tc.function.name)
            jsonschema.validate(json.loads(tc.function.arguments), tool["function"]["parameters"])
            assert tc.id.startswith("call_") and tc.type == "function"
        if mode == "named":
            assert [tc.function.name for tc in msg.tool_calls] == ["get_time"]
    elif mode == "json_object":
        assert isinstance(json.loads(msg.content), dict)
    elif mode == "json_schema":
        jsonschema.validate(json.loads(msg.content), SCHEMA)
    elif mode == "none":
        assert not msg.tool_calls and finish in ("stop", "length")
    elif mode == "auto_strict":  # a strict tool's call always validates; a call is the model's choice
        for tc in msg.tool_calls or []:
            if tc.function.name == "get_weather":
                jsonschema.validate(json.loads(tc.function.arguments), WEATHER["function"]["parameters"])
    if msg.tool_calls:
        assert finish == "tool_calls"


def reassemble(chunks) -> tuple[str | None, list[dict], str | None, object]:
    """Content, tool calls, finish reason and usage of a stream, put back together per ``index``."""
    content, calls, finish, usage = "", {}, None, None
    for ch in chunks:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            d = c.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert slot["id"] is None, "the id comes once, in the first delta of a call"
                    slot.update(id=tc.id, name=tc.function.name)
                    assert tc.type == "function"
                assert slot["id"] is not None, "a call's first delta carries its id and name"
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = c.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, usage


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_sync_and_stream_agree(client, constrained, mode):
    """Non-streamed (sync client) and streamed (include_usage) greedy results of each mode are the same
    message; constrained modes parse and validate against their schemas."""
    if mode in CONSTRAINED:
        need_constraints(constrained)
    r = create(client, mode)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    check_message(mode, msg, finish)
    chunks = list(create(client, mode, stream=True, stream_options={"include_usage": True}))
    content, calls, s_finish, usage = reassemble(chunks)
    assert (content or None) == (msg.content or None)
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(tc.function.name, tc.function.arguments) for tc in (msg.tool_calls or [])]
    assert s_finish == finish
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
    assert usage.prompt_tokens == r.usage.prompt_tokens


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_async(server, constrained, mode):
    """The async client, a non-streamed and a streamed request at once."""
    if mode in CONSTRAINED:
        need_constraints(constrained)

    async def go():
        aclient = openai.AsyncOpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)
        try:
            kw = dict(model=MODEL, messages=messages(mode), temperature=0, max_tokens=60, **MODES[mode])

            async def streamed():
                return reassemble([c async for c in await aclient.chat.completions.create(**kw, stream=True)])
            return await asyncio.gather(aclient.chat.completions.create(**kw), streamed())
        finally:
            await aclient.close()
    r, (content, calls, finish, _) = asyncio.run(go())
    msg = r.choices[0].message
    check_message(mode, msg, r.choices[0].finish_reason)
    assert (content or None) == (msg.content or None) and finish == r.choices[0].finish_reason
    assert [c["name"] for c in calls] == [tc.function.name for tc in (msg.tool_calls or [])]


def test_tools_are_rendered_into_the_system_prompt(server):
    """SmolLM2's template has no tools section: the prompt carries the tool definitions (Hermes format),
    and 'none' leaves them out."""
    from transformers import AutoTokenizer
    from pitstop.model.resolve import resolve_model
    from pitstop.tools.chat import with_tools_in_prompt
    from pitstop.tools.choice import normalize_tools
    from pitstop.tools.registry import get_parser
    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    body = {"messages": ASK, "max_tokens": 1, "return_token_ids": True}
    got = server.post("/v1/chat/completions", json={**body, "tools": TOOLS}).json()["prompt_token_ids"]
    text = tok.apply_chat_template(with_tools_in_prompt(ASK, normalize_tools(TOOLS), get_parser("hermes")),
                                   tokenize=False, add_generation_prompt=True)
    assert got == tok(text, add_special_tokens=False).input_ids
    assert '"name": "get_weather"' in tok.decode(got) and "<tool_call>" in tok.decode(got)
    plain = server.post("/v1/chat/completions", json={**body, "tools": TOOLS, "tool_choice": "none"}).json()
    assert "get_weather" not in tok.decode(plain["prompt_token_ids"])


def test_tool_turns_go_back_through_the_template(client):
    """An assistant message with tool_calls (content null) and a role=tool result are accepted."""
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees, sunny"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=16,
                                       extra_body={"return_token_ids": True})
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def _error(server, body: dict) -> dict:
    r = server.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format.json_schema.schema"),
    ({"guided_json": {"type": "object", "properties": {"a": {"minimum": "zero"}}}}, "guided_json"),
    ({"tools": [{"type": "function", "function": {"description": "no name", "parameters": {}}}]},
     "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
     "tools.0.function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch_rockets"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_requests_are_400_naming_the_field(server, body, param):
    err = _error(server, body)
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert server.get("/health").status_code == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("body,word", [
    ({"guided_grammar": "root ::= ( unclosed"}, "grammar"),
    ({"guided_regex": "(unclosed[a-"}, "regex"),
    ({"structured_outputs": {"grammar": "start: ) ("}}, "grammar"),
    ({"guided_regex": "\U00040000"}, "cannot be followed with this model's tokens"),  # found by the fuzz test
])
def test_grammar_and_regex_the_library_rejects_are_400(server, constrained, body, word, stream):
    """Rejected by the grammar library at admission, or at the first token when this vocabulary cannot follow the
    grammar (no token holds byte F1 of U+40000): 400 (also for stream=true: the first update is awaited before
    the stream starts), and the server keeps serving."""
    need_constraints(constrained)
    err = _error(server, {**body, "stream": stream})
    assert word in err["message"].lower() or "structured_outputs" in (err["param"] or ""), err
    ok = server.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
    assert ok.status_code == 200


def test_constrained_stream_aborted_midway_frees_everything(server):
    """A constrained request whose client goes away mid-stream is aborted; kv_balanced_after then checks that
    nothing is held (blocks, outstanding requests)."""
    body = {"messages": ASK, "max_tokens": 200, "stream": True, "tools": TOOLS, "tool_choice": "required",
            "temperature": 1.0, "seed": 3}
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i >= 3:
                    break
    server.assert_kv_balanced()


def test_program_turn_with_tool_calls_records_the_tool(server, client, constrained):
    """A program's turn that ends in a call pins its KV for that tool (no client hint); a turn without calls
    (the answer) ends the program."""
    need_constraints(constrained)
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0,
                                       max_tokens=40, extra_body={"program_id": "tools-prog"})
    assert r.choices[0].finish_reason == "tool_calls"
    st = server.get("/v1/programs/tools-prog").json()
    assert st["pin_tool"] == "get_time" and st["pinned_blocks"] > 0, st
    r2 = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0,
                                        max_tokens=4, extra_body={"program_id": "tools-prog"})
    assert not r2.choices[0].message.tool_calls
    # tool_choice none offers no tools, so the body's default (last turn) applies: the program is gone
    assert server.get("/v1/programs/tools-prog").status_code == 404


def test_program_turn_under_auto_decides_finality_from_its_calls(server, client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=40,
                                       extra_body={"program_id": "auto-prog"})
    st = server.get("/v1/programs/auto-prog")
    if r.choices[0].message.tool_calls:
        assert st.status_code == 200 and st.json()["pin_tool"] == r.choices[0].message.tool_calls[0].function.name
        server.delete("/v1/programs/auto-prog")
    else:  # the answer: the program ended with the turn, nothing stays pinned
        assert st.status_code == 404


def test_malformed_call_under_auto_is_content_and_counted(server, client, constrained):
    """The model is forced (regex) to write a broken Hermes call: it comes back as content, finish 'stop',
    and pitstop_tool_calls_malformed_total counts it; never a 500."""
    need_constraints(constrained)
    before = counter(server.metrics(), "pitstop_tool_calls_malformed_total")
    bad = '<tool_call>{"name": "get_weather", "arguments": "{city: Paris}"}</tool_call>'  # broken before it starts
    regex = bad.replace("{", r"\{").replace("}", r"\}").replace("\"", "\"")
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60,
                                       extra_body={"guided_regex": regex})
    assert r.choices[0].message.content == bad and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    assert counter(server.metrics(), "pitstop_tool_calls_malformed_total") == before + 1


def test_auto_call_forced_by_regex_is_a_tool_call(client, constrained):
    """A well-formed Hermes call under auto (forced with a regex) is parsed into message.tool_calls, streamed
    or not; streamed, its arguments come in fragments as they are decoded."""
    need_constraints(constrained)
    good = 'Checking. <tool_call>{"name": "get_time", "arguments": {"tz": "Central European Time"}}</tool_call>'
    regex = good.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60, extra_body={"guided_regex": regex})
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    assert msg.content == "Checking." and r.choices[0].finish_reason == "tool_calls"
    assert [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls] == [
        ("get_time", {"tz": "Central European Time"})]
    chunks = list(client.chat.completions.create(**kw, stream=True))
    fragments = [tc.function.arguments for ch in chunks for c in ch.choices for tc in c.delta.tool_calls or []
                 if tc.function and tc.function.arguments]
    assert len(fragments) > 2, fragments
    content, calls, finish, _ = reassemble(chunks)
    assert content == "Checking." and finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls] == [(t.function.name, t.function.arguments) for t in msg.tool_calls]


@pytest.mark.parametrize("extra,check", [
    ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}, lambda t: __import__("re").fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
    ({"guided_regex": "(yes|no)!"}, lambda t: t in ("yes!", "no!")),
    ({"guided_choice": ["Paris", "Rome", "Oslo"]}, lambda t: t in ("Paris", "Rome", "Oslo")),
    ({"guided_json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}},
     lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
])
def test_structured_output_fields_on_both_endpoints(client, constrained, extra, check):
    """vLLM's structured_outputs, the guided_* names and response_format constrain chat and completions."""
    need_constraints(constrained)
    chat = client.chat.completions.create(model=MODEL, messages=ASK_JSON, temperature=0, max_tokens=60, extra_body=extra)
    assert check(chat.choices[0].message.content), chat.choices[0].message.content
    comp = client.completions.create(model=MODEL, prompt="The answer:", temperature=0, max_tokens=60, extra_body=extra)
    assert check(comp.choices[0].text), comp.choices[0].text
