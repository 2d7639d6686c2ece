"""Chat messages with tools into a chat template's input.

A template that renders ``tools`` itself (Qwen3's, Llama 3.1's, ...) gets the tool list and the messages as
they are: assistant turns with ``tool_calls`` (their ``arguments`` as JSON text and as an object, for the
templates that expect either) and ``role: "tool"`` results. A template without a tools section (the default
SmolLM2-135M-Instruct's) gets the tool definitions written into the system prompt in the parser's format
(a system message is added, or the first one is extended), earlier calls written into the assistant's content
in that format, and tool results as the parser renders them (Hermes: a user turn with ``<tool_response>``).
"""

from __future__ import annotations

import json
from typing import Any

from pitstop.tools.base import ParsedCall, ToolParser


def content_text(content: Any) -> str:
    """A message's content as text: None is '', text parts of a list are joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _calls_of(message: dict) -> list[ParsedCall]:
    calls = []
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        args = fn.get("arguments", "{}")
        calls.append(ParsedCall(str(fn.get("name", "")), args if isinstance(args, str) else json.dumps(args)))
    return calls


def _names_by_id(messages: list[dict]) -> dict[str, str]:
    return {tc.get("id"): tc.get("function", {}).get("name") for m in messages
            for tc in (m.get("tool_calls") or []) if isinstance(tc, dict) and tc.get("id")}


def for_template(messages: list[dict]) -> list[dict]:
    """Messages for a template with a tools section: ``tool_calls[].function.arguments`` parsed to an object
    (Qwen3's and Llama's templates ``tojson`` it), content ``None`` -> ``""``."""
    out = []
    for m in messages:
        m = {**m, "content": content_text(m.get("content"))}
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc.get("function", {}))
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                calls.append({**tc, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def with_tools_in_prompt(messages: list[dict], tools: list[dict], parser: ToolParser) -> list[dict]:
    """Messages for a template without a tools section: tools in the system prompt, calls and results as text."""
    names = _names_by_id(messages)
    out: list[dict] = []
    for m in messages:
        role, text = m.get("role"), content_text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            calls = parser.render_calls(_calls_of(m))
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif role == "tool":
            out.append(parser.render_result(text, m.get("name") or names.get(m.get("tool_call_id"))))
        else:
            out.append({"role": role, "content": text})
    if tools:
        prompt = parser.system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def apply_chat_template(tokenizer: Any, messages: list[dict], tools: list[dict], parser: ToolParser,
                        add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
    """The prompt text of ``messages`` offering ``tools`` (none: the plain template), rendered as the module
    docstring says. Errors of the template propagate (the caller reports them)."""
    from pitstop.tools.registry import template_has_tools

    has_tool_turns = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not tools and not has_tool_turns:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **template_kwargs)
    if template_has_tools(getattr(tokenizer, "chat_template", None)):
        return tokenizer.apply_chat_template(for_template(messages), tools=tools or None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, **template_kwargs)
    return tokenizer.apply_chat_template(with_tools_in_prompt(messages, tools, parser), tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **template_kwargs)
