"""``strict`` tools under ``tool_choice="auto"`` (issue 15): free text, and each call's JSON constrained to its tool's
parameters. Checked on the grammar the hermes parser builds, with the real default tokenizer and llguidance: text and
valid calls are accepted to the end, a call with arguments outside the strict schema is rejected at the first bad
token, a non-strict tool's call takes any object."""

from __future__ import annotations

import json

import pytest

from pitstop.sampling_params import StructuredOutputsParams as SO
from pitstop.tools.choice import ToolChoice, constraint, normalize_tools
from pitstop.tools.registry import get_parser

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = normalize_tools([
    {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": WEATHER}},
    {"type": "function", "function": {"name": "note", "parameters": {"type": "object"}}},
])


@pytest.fixture(scope="module")
def matcher_for(smollm2_dir):
    from pitstop.engine.structured_output.backend import grammar_key
    from pitstop.engine.structured_output.llguidance_backend import LLGuidanceBackend
    from pitstop.entrypoints.engine_builder import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    backend = LLGuidanceBackend(tok, 49152, frozenset({tok.eos_token_id}))

    def run(so: SO, text: str) -> tuple[bool, bool]:
        """(every token of ``text`` accepted, the grammar may end there)."""
        key = grammar_key(so)
        backend.validate(key)
        m = backend.new_matcher(backend.compile(key))
        ok = all(m.accept_token(t) for t in tok(text, add_special_tokens=False).input_ids)
        return ok, ok and m.accept_token(tok.eos_token_id)

    return run


def _call(name: str, args: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def test_auto_without_strict_tools_is_unconstrained():
    plain = normalize_tools([{"type": "function", "function": {"name": "f", "parameters": WEATHER}}])
    assert constraint(plain, ToolChoice("auto"), True, get_parser("hermes")) is None


def test_strict_auto_accepts_text_and_valid_calls(matcher_for):
    so = constraint(TOOLS, ToolChoice("auto"), True, get_parser("hermes"))
    assert so is not None and so.kind == "grammar"
    assert matcher_for(so, "It is sunny in Paris today.") == (True, True)
    assert matcher_for(so, "Let me check. " + _call("get_weather", {"city": "Paris"})) == (True, True)
    both = _call("get_weather", {"city": "Oslo"}) + "\n" + _call("note", {"anything": [1, 2]})
    assert matcher_for(so, both) == (True, True)


def test_strict_auto_rejects_arguments_outside_the_schema(matcher_for):
    so = constraint(TOOLS, ToolChoice("auto"), True, get_parser("hermes"))
    assert matcher_for(so, _call("get_weather", {"town": "Paris"}))[0] is False
    assert matcher_for(so, _call("get_weather", {"city": 3}))[0] is False
    assert matcher_for(so, _call("unknown_tool", {}))[0] is False


def test_one_call_at_most_without_parallel_tool_calls(matcher_for):
    so = constraint(TOOLS, ToolChoice("auto"), False, get_parser("hermes"))
    one = _call("get_weather", {"city": "Oslo"})
    assert matcher_for(so, one) == (True, True)
    assert matcher_for(so, one + "\n" + one)[0] is False


def test_strict_auto_without_a_grammar_for_the_format_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^tools: strict tools under tool_choice 'auto'"):
        constraint(TOOLS, ToolChoice("auto"), True, get_parser("pythonic"))
