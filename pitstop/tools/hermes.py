"""Hermes format (NousResearch Hermes 2 Pro; used by the Qwen2.5/Qwen3 and SmolLM3 chat templates):
each call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, text around the calls is content.

Source: the tool-use section of Qwen3's chat template (``tokenizer_config.json`` of Qwen/Qwen3-*) and
https://github.com/NousResearch/Hermes-Function-Calling (format only; the code here is pitstop's own).
"""

from __future__ import annotations

import json

from pitstop.tools.base import Extractor, ParsedCall, TaggedExtractor, ToolParser, call_from_object, tool_list_json

START, END = "<tool_call>", "</tool_call>"


def _parse(body: str, tool_names: set[str] | None) -> list[ParsedCall] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    call = call_from_object(obj, tool_names, ("arguments", "parameters"))
    return [call] if call is not None else None


class HermesParser(ToolParser):
    name = "hermes"

    def extractor(self, tool_names: set[str] | None = None) -> Extractor:
        return TaggedExtractor(START, END, lambda body: _parse(body, tool_names))

    def system_prompt(self, tools: list[dict]) -> str:
        return ("# Tools\n\nYou can call functions to help answer the user. The functions are listed, one JSON "
                "object per line, between <tools> and </tools>:\n<tools>\n" + tool_list_json(tools) +
                "\n</tools>\n\nTo call a function, write a JSON object with its name and arguments between "
                "<tool_call> and </tool_call>:\n<tool_call>\n{\"name\": <function name>, \"arguments\": "
                "<arguments as a JSON object>}\n</tool_call>")

    def render_calls(self, calls: list[ParsedCall]) -> str:
        return "\n".join(f'{START}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{END}'
                         for c in calls)
