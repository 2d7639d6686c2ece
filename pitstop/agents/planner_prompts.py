"""The planner's and the joiner's messages (pitstop's own wording of the LLMCompiler roles; Kim et al., ICML 2024,
arXiv 2312.04511), and the joiner's reply parsed into a decision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pitstop.agents.task_fetching import TaskRecord
from pitstop.agents.tools import Tool

Message = dict[str, str]

PLANNER_SYSTEM = """You answer the user's question by planning tool calls. Write a plan: a numbered list with one \
tool call per line. Tasks that do not depend on each other run at the same time, so list every call you can \
foresee.
Format:
- each task is `N. tool_name(arguments)`, numbered 1, 2, 3, ...; arguments are Python literals (strings, numbers, \
lists, dicts, True, False, None), by position or as name=value;
- `$N` stands for the result of an earlier task N: as an argument (`2. lookup($1)`) or inside a string \
(`3. search("capital of $2")`);
- a line `Thought: ...` may come before a task;
- the last line is `N. join()`, after every task the answer needs.
Tools:
{tools}"""

JOINER_SYSTEM = """You decide whether a plan's results answer the question. Read the question, the plan and each \
task's result, then reply with one line `Thought: ...` followed by either `Final Answer: <the answer>` when the \
results suffice, or `Replan: <what is missing or went wrong>` when a new plan is needed."""

LAST_ROUND = "No new plan is possible now: give your Final Answer."


def _type(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "type" in schema:
        return str(schema["type"])
    if "enum" in schema:
        return "one of " + "/".join(map(repr, schema["enum"]))
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    return "object" if "$ref" in schema else "any"


def tool_line(t: Tool) -> str:
    """``- name(param: type, ...): description`` (optional parameters marked ``?``)."""
    required = set(t.parameters.get("required", []))
    params = ", ".join(f"{n}{'' if n in required else '?'}: {_type(s)}"
                       for n, s in t.parameters.get("properties", {}).items())
    return f"- {t.name}({params}): {t.description}".rstrip(": ")


def planner_messages(question: str, tools: list[Tool], history: list[Message]) -> list[Message]:
    """The planner's conversation: system (format and tools), the question, then earlier rounds (``history``:
    each plan as the assistant's, its results and the replan reason as the user's)."""
    system = PLANNER_SYSTEM.format(tools="\n".join(tool_line(t) for t in tools))
    return [{"role": "system", "content": system}, {"role": "user", "content": question}, *history]


def results_text(records: list[TaskRecord], plan_error: str | None) -> str:
    """One line per task: ``N. tool -> result`` or ``N. tool -> error: ...``; the plan's parse error last."""
    lines = [f"{r.idx}. {r.tool} -> {r.result}" if r.ok else f"{r.idx}. {r.tool} -> error: {r.error}"
             for r in records]
    if plan_error:
        lines.append(f"the plan stopped here: {plan_error}")
    return "\n".join(lines) or "(no tasks ran)"


def joiner_messages(question: str, plan_text: str, results: str, last_round: bool) -> list[Message]:
    user = f"Question: {question}\n\nPlan:\n{plan_text.strip()}\n\nResults:\n{results}"
    if last_round:
        user += f"\n\n{LAST_ROUND}"
    return [{"role": "system", "content": JOINER_SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class JoinDecision:
    """The joiner's verdict: ``answer`` (``text`` is the answer) or ``replan`` (``text`` is the reason)."""

    kind: Literal["answer", "replan"]
    text: str


_LABEL = re.compile(r"(Final Answer|Replan)\s*:", re.IGNORECASE)


def parse_join(reply: str) -> JoinDecision:
    """The first ``Final Answer:`` or ``Replan:`` label decides; with neither, the whole reply is the answer."""
    m = _LABEL.search(reply)
    if m is None:
        return JoinDecision("answer", reply.strip())
    kind: Literal["answer", "replan"] = "replan" if m.group(1).lower() == "replan" else "answer"
    return JoinDecision(kind, reply[m.end():].strip())
