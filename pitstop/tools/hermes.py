"""Hermes format (NousResearch Hermes 2 Pro; used by the Qwen2.5/Qwen3 and SmolLM3 chat templates):
each call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, text around the calls is content.

Source: the tool-use section of Qwen3's chat template (``tokenizer_config.json`` of Qwen/Qwen3-*) and
https://github.com/NousResearch/Hermes-Function-Calling (format only; the code here is pitstop's own).
"""

from __future__ import annotations

import json

from pitstop.tools.base import Extractor, ParsedCall, TaggedExtractor, ToolParser, call_from_object, tool_list_json

START, END = "<tool_call>", "</tool_call>"
ARGS_KEYS = ("arguments", "parameters")


def _parse(body: str, tool_names: set[str] | None) -> list[ParsedCall] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    call = call_from_object(obj, tool_names, ARGS_KEYS)
    return [call] if call is not None else None


class HermesParser(ToolParser):
    name = "hermes"

    def extractor(self, tool_names: set[str] | None = None) -> Extractor:
        return TaggedExtractor(START, END, lambda body: _parse(body, tool_names), tool_names, ARGS_KEYS)

    def system_prompt(self, tools: list[dict]) -> str:
        return ("# Tools\n\nYou can call functions to help answer the user. The functions are listed, one JSON "
                "object per line, between <tools> and </tools>:\n<tools>\n" + tool_list_json(tools) +
                "\n</tools>\n\nTo call a function, write a JSON object with its name and arguments between "
                "<tool_call> and </tool_call>:\n<tool_call>\n{\"name\": <function name>, \"arguments\": "
                "<arguments as a JSON object>}\n</tool_call>")

    def auto_grammar(self, call_schema: dict, parallel: bool) -> str | None:
        """Calls ``<tool_call>{json}</tool_call>`` whose JSON follows ``call_schema``, each after free text, then
        free text that never contains ``<tool_call>``. The text before a call and its ``<tool_call>`` are one
        lexeme that ends at the first ``<tool_call>`` (regex intersection with a complement, llguidance's
        extension), so the lexer's longest match never runs past a call's start."""
        repeat = "*" if parallel else "?"
        end = END.replace("/", "\\/")
        return "\n".join([f"start: (CALL_START WS? call WS? CALL_END){repeat} TEXT",
                          f"CALL_START: /(?s:.*){START}/ & ~/(?s:.*{START}.+)/",
                          f"TEXT: /(?s:.*)/ & ~/(?s:.*{START}.*)/",
                          "WS: /[ \\t\\n]+/",
                          f"CALL_END: /{end}/",
                          f"call: %json {json.dumps(call_schema)}", ""])

    def render_calls(self, calls: list[ParsedCall]) -> str:
        return "\n".join(f'{START}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{END}'
                         for c in calls)
