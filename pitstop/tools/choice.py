"""``tools`` and ``tool_choice`` of a chat request: validated, and turned into a decoding constraint and an
extractor.

- ``none``: tools are not offered, text is content.
- ``auto``: free decoding; the parser extracts calls from the text. With a ``strict`` tool, the parser's
  ``auto_grammar`` (hermes) keeps the text free and constrains each call's JSON (``strict`` tools' arguments to
  their parameters schema); a parser without one is a 400 rather than an unenforced ``strict``.
- ``required``: decoding is constrained (``StructuredOutputsParams.json``) to a JSON array of
  ``{"name", "arguments"}`` objects, ``anyOf`` over the tools with each ``arguments`` the tool's parameters
  schema; exactly one element when ``parallel_tool_calls`` is false. (vLLM's approach.)
- a named function: constrained to that tool's parameters schema; the whole output is its arguments.

Both constraints forbid free whitespace between JSON tokens (``disable_any_whitespace``): arguments are re-serialized
anyway, and a small model cannot then spend its tokens on blank lines inside a call.

Every constraint on a tool's arguments (``required``, named, ``strict`` under ``auto``) closes the objects of its
parameters schema that list ``properties`` and say nothing of ``additionalProperties`` (:func:`closed_arguments`):
the model cannot invent arguments the tool does not declare. JSON Schema leaves such objects open, and a small
model fills that opening with made-up keys until ``max_tokens`` (on BFCL's tools, 51 of 240 calls were cut off
that way before this). Only the grammar is closed: every output still validates against the tool's own schema,
and the tool definition the client sent is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pitstop.sampling_params import StructuredOutputsParams
from pitstop.tools.base import Extractor, ToolParser
from pitstop.tools.constrained import JsonCallsExtractor, NamedExtractor
from pitstop.tools.json_schema import check_json_schema

EMPTY_PARAMETERS: dict = {"type": "object", "properties": {}}


def normalize_tools(tools: list[dict] | None) -> list[dict]:
    """OpenAI tool definitions ``{"type": "function", "function": {"name", "description", "parameters"}}``,
    each checked: a non-empty unique name, a valid parameters schema (missing: no parameters).

    Raises:
        ValueError: the message starts with the offending field (``tools.2.function.name: ...``).
    """
    out, seen = [], set()
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"tools.{i}.type: only function tools are supported")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"tools.{i}.function: required (an object with name, description, parameters)")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools.{i}.function.name: every tool needs a non-empty name")
        if name in seen:
            raise ValueError(f"tools.{i}.function.name: duplicate tool name {name!r}")
        seen.add(name)
        params = fn.get("parameters")
        params = EMPTY_PARAMETERS if params is None else params
        check_json_schema(params, f"tools.{i}.function.parameters")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


@dataclass(frozen=True)
class ToolChoice:
    """``mode``: ``none``, ``auto``, ``required`` or ``named`` (then ``name`` is the tool)."""

    mode: str
    name: str | None = None


def parse_tool_choice(choice: Any, tools: list[dict]) -> ToolChoice:
    """``tool_choice`` as OpenAI sends it (a string or ``{"type": "function", "function": {"name"}}``);
    default ``auto`` with tools, ``none`` without.

    Raises:
        ValueError: starting with ``tool_choice``: an unknown mode, a named tool that is not in ``tools``,
            or ``required`` / a named tool without tools.
    """
    names = [t["function"]["name"] for t in tools]
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice: must be 'none', 'auto', 'required' or a named function, got {choice!r}")
        if choice == "required" and not tools:
            raise ValueError("tool_choice: 'required' needs at least one tool in tools")
        return ToolChoice(choice if tools else "none")
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ValueError("tool_choice: a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise ValueError(f"tool_choice: names the tool {name!r}, which is not in tools ({names})")
    return ToolChoice("named", name)


_NO_CLOSE = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "$ref",
             "dependentSchemas", "if")


def closed_arguments(schema: Any) -> Any:
    """``schema`` (a tool's parameters) with ``"additionalProperties": false`` added to each object schema that has
    ``properties`` and none of the keywords that could declare or combine more of them (``_NO_CLOSE``), looking
    into ``properties``, ``items``, ``prefixItems`` and ``anyOf`` (where the result is a subset of the original:
    never into ``allOf``, ``oneOf`` or ``$defs``). A copy; ``schema`` is not modified.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: closed_arguments(v) for k, v in out["properties"].items()}
        if not any(k in out for k in _NO_CLOSE):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = closed_arguments(out["items"])
    for key in ("prefixItems", "anyOf"):
        if isinstance(out.get(key), list):
            out[key] = [closed_arguments(v) for v in out[key]]
    return out


def required_schema(tools: list[dict], parallel: bool) -> dict:
    """JSON Schema of ``tool_choice="required"``: an array of calls, one ``anyOf`` branch per tool."""
    items = {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                       "arguments": closed_arguments(t["function"]["parameters"])}}
                       for t in tools]}
    schema: dict = {"type": "array", "minItems": 1, "items": items}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def auto_call_schema(tools: list[dict]) -> dict:
    """JSON Schema of one call under ``auto`` with ``strict`` tools: ``anyOf`` per tool, ``arguments`` the tool's
    parameters when the tool is ``strict``, any object otherwise."""
    return {"anyOf": [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                       "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                      "arguments": closed_arguments(t["function"]["parameters"])
                                      if t["function"].get("strict") else {"type": "object"}}} for t in tools]}


def constraint(tools: list[dict], choice: ToolChoice, parallel: bool,
               parser: ToolParser | None = None) -> StructuredOutputsParams | None:
    """The decoding constraint of ``choice``: None for ``none``, and for ``auto`` unless a tool is ``strict``
    (then the parser's :meth:`~pitstop.tools.base.ToolParser.auto_grammar`: free text, calls constrained).

    Raises:
        ValueError: (``tools: ...``) a ``strict`` tool under ``auto`` with a parser that has no such grammar.
    """
    if choice.mode == "auto" and any(t["function"].get("strict") for t in tools):
        grammar = parser.auto_grammar(auto_call_schema(tools), parallel) if parser is not None else None
        if grammar is None:
            raise ValueError(f"tools: strict tools under tool_choice 'auto' are enforced only with the hermes "
                             f"tool-call parser (this one: {parser.name if parser else None}); use "
                             f"tool_choice 'required' or drop strict")
        return StructuredOutputsParams(grammar=grammar)
    if choice.mode == "required":
        return StructuredOutputsParams(json=required_schema(tools, parallel), disable_any_whitespace=True)
    if choice.mode == "named":
        tool = next(t for t in tools if t["function"]["name"] == choice.name)
        return StructuredOutputsParams(json=closed_arguments(tool["function"]["parameters"]),
                                       disable_any_whitespace=True)
    return None


def extractor_for(choice: ToolChoice, parser: ToolParser | None, tools: list[dict]) -> Extractor | None:
    """The extractor of one completion under ``choice`` (None: no tools, all text is content)."""
    names = {t["function"]["name"] for t in tools}
    if choice.mode == "required":
        return JsonCallsExtractor(names)
    if choice.mode == "named":
        return NamedExtractor(choice.name or "")
    if choice.mode == "auto" and parser is not None:
        return parser.extractor(names)
    return None
