"""Llama 3.1/3.2 JSON format: the whole reply is one call ``{"name": ..., "parameters": {...}}`` (or several
separated by ``;``), optionally after ``<|python_tag|>``; any other reply is content.

Source: Meta's Llama 3.1 model card, "JSON based tool calling" (format only).
"""

from __future__ import annotations

import json

from pitstop.tools.base import Extractor, ParsedCall, ToolParser, WholeExtractor, call_from_object, functions_prompt

PYTHON_TAG = "<|python_tag|>"


def _parse(text: str, tool_names: set[str] | None) -> list[ParsedCall] | None:
    text = text.strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG):].lstrip()
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        call = call_from_object(obj, tool_names, ("parameters", "arguments"))
        if call is None:
            return None
        calls.append(call)
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    return calls or None


class Llama3JsonParser(ToolParser):
    name = "llama3_json"

    def extractor(self, tool_names: set[str] | None = None) -> Extractor:
        return WholeExtractor(("{", PYTHON_TAG), lambda text: _parse(text, tool_names))

    def system_prompt(self, tools: list[dict]) -> str:
        return functions_prompt(tools, "To call a function, reply with only a JSON object of the form "
                                "{\"name\": <function name>, \"parameters\": <arguments as a JSON object>} and "
                                "nothing else.")

    def render_calls(self, calls: list[ParsedCall]) -> str:
        return "; ".join(f'{{"name": {json.dumps(c.name)}, "parameters": {c.arguments}}}' for c in calls)

    def render_result(self, content: str, name: str | None) -> dict:
        return {"role": "ipython", "content": content}
