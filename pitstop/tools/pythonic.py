"""Pythonic format (Llama 3.2/4 pythonic templates, ToolACE): the whole reply is a Python list of calls,
``[get_weather(city="Paris"), get_time(tz="CET")]``, with literal arguments; any other reply is content.

Parsed with ``ast`` (``ast.literal_eval`` for each argument): nothing is executed.
Source: Meta's Llama 3.2 model card, "zero-shot function calling" (format only).
"""

from __future__ import annotations

import ast

from pitstop.tools.base import Extractor, ParsedCall, ToolParser, WholeExtractor, dump_arguments, functions_prompt


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _parse(text: str, tool_names: set[str] | None) -> list[ParsedCall] | None:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _name(node.func)
        if name is None or (tool_names is not None and name not in tool_names):
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
            text_args = dump_arguments(args)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        calls.append(ParsedCall(name, text_args))
    return calls


def _literal(value: object) -> str:
    """A JSON value as a Python literal (true/false/null -> True/False/None)."""
    return repr(value)


class PythonicParser(ToolParser):
    name = "pythonic"

    def extractor(self, tool_names: set[str] | None = None) -> Extractor:
        return WholeExtractor(("[",), lambda text: _parse(text, tool_names))

    def system_prompt(self, tools: list[dict]) -> str:
        return functions_prompt(tools, "To call functions, reply with only a Python list of calls with keyword "
                                "arguments, e.g. [func_name1(param1=value1), func_name2(param2=value2)], and "
                                "nothing else.")

    def render_calls(self, calls: list[ParsedCall]) -> str:
        import json
        parts = []
        for c in calls:
            args = json.loads(c.arguments)
            parts.append(f"{c.name}(" + ", ".join(f"{k}={_literal(v)}" for k, v in args.items()) + ")")
        return "[" + ", ".join(parts) + "]"
