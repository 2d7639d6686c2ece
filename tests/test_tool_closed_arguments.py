"""Tool-argument grammars close open objects (issue 15's validity figure): ``closed_arguments`` adds
``additionalProperties: false`` where a parameters schema lists ``properties`` and leaves the rest open; whatever
the closed schema accepts, the tool's own schema accepts too. The real path (the default model, a tool whose schema
is open) is ``test_open_parameters_schema_gives_only_declared_arguments`` in test_llm_tools.py."""

from __future__ import annotations

import copy
import json

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop.tools.choice import ToolChoice, closed_arguments, constraint, normalize_tools, required_schema

OPEN = {"type": "object", "properties": {
    "city": {"type": "string"},
    "when": {"type": "object", "properties": {"day": {"type": "integer"}}},
    "stops": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    "extra": {"type": "object"},  # no properties: a free-form dict stays open
    "either": {"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"type": "string"}]},
}, "required": ["city"]}


def test_objects_with_properties_are_closed_at_every_depth_and_free_dicts_stay_open():
    before = copy.deepcopy(OPEN)
    c = closed_arguments(OPEN)
    assert OPEN == before  # a copy; the client's tool is unchanged
    assert c["additionalProperties"] is False
    assert c["properties"]["when"]["additionalProperties"] is False
    assert c["properties"]["stops"]["items"]["additionalProperties"] is False
    assert c["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in c["properties"]["extra"]
    jsonschema.Draft202012Validator.check_schema(c)


def test_what_the_schema_says_or_may_combine_is_left_alone():
    said = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert closed_arguments(said) == said
    for kw, sub in [("allOf", [{"properties": {"b": {}}}]), ("anyOf", [{"properties": {"b": {}}}]),
                    ("oneOf", [{"properties": {"b": {}}}]), ("$ref", "#/$defs/x"),
                    ("patternProperties", {"^x": {}}), ("unevaluatedProperties", False)]:
        s = {"type": "object", "properties": {"a": {}}, kw: sub}
        assert "additionalProperties" not in closed_arguments(s), kw
    assert closed_arguments(True) is True


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["x", "Paris"]),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.sampled_from(["city", "when", "day", "stops", "name", "extra", "either",
                                                       "a", "zz"]), kids, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(JSON)
def test_closed_accepts_a_subset_of_what_the_tool_accepts(value):
    closed = jsonschema.Draft202012Validator(closed_arguments(OPEN))
    if closed.is_valid(value):
        assert jsonschema.Draft202012Validator(OPEN).is_valid(value)


def test_required_named_and_strict_auto_use_the_closed_schema():
    tools = normalize_tools([{"type": "function", "function": {"name": "go", "parameters": OPEN}}])
    assert required_schema(tools, False)["items"]["anyOf"][0]["properties"]["arguments"] == closed_arguments(OPEN)
    named = constraint(tools, ToolChoice("named", "go"), parallel=False)
    assert named.json == closed_arguments(OPEN)
    strict = normalize_tools([{"type": "function", "function": {"name": "go", "strict": True, "parameters": OPEN}}])
    grammar = constraint(strict, ToolChoice("auto"), parallel=False, parser=_hermes()).grammar
    assert json.dumps(closed_arguments(OPEN)) in grammar


def _hermes():
    from pitstop.tools.registry import get_parser
    return get_parser("hermes")
