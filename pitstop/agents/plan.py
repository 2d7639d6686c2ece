"""LLMCompiler plans: the model writes its tool calls as a numbered list, one task per line, later tasks naming
earlier results as ``$N``:

    Thought: find both populations first.
    1. search("population of Oslo")
    2. search("population of Bergen")
    3. compare($1, $2, unit="people")
    4. join()
    <END_OF_PLAN>

Source: Kim et al., "An LLM Compiler for Parallel Function Calling", ICML 2024 (arXiv 2312.04511), the planner's
output format and its streaming (a task is dispatched as soon as its line is complete). The code is pitstop's own.

Arguments are Python literals (strings, numbers, True/False/None, lists, tuples, dicts) or ``$N`` placeholders,
anywhere inside them, parsed with ``ast`` (nothing is evaluated). A bare ``$N`` must name an earlier task
(``PlanError`` otherwise); inside a string, ``$N`` of an earlier task is a placeholder and any other ``$...`` is
text ("costs $5" stays). ``PlanParser`` parses line by line as the plan streams in; ``plan_grammar`` is the Lark
grammar (llguidance) that keeps a model's output in this format.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from dataclasses import dataclass, field
from typing import Any

JOIN = "join"
END_OF_PLAN = "<END_OF_PLAN>"
_TASK = re.compile(r"^\s*(\d+)\s*\.\s*(.*?)\s*$")
_DOLLAR = re.compile(r"\$(\d+)")
_MARK = "_pitstop_dep_"
_MARKED = re.compile(rf"{_MARK}(\d+)_")


class PlanError(ValueError):
    """A plan line that is not a task of this format: bad syntax, a non-literal argument, an unknown tool, an index
    out of sequence, a ``$N`` that is not an earlier task. The message names the line."""


@dataclass(frozen=True)
class Placeholder:
    """A bare ``$N``: task ``idx``'s result."""

    idx: int


@dataclass(frozen=True)
class Task:
    """One plan line: ``idx. tool(*args, **kwargs)``; ``deps``: the earlier tasks its ``$N`` name."""

    idx: int
    tool: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    deps: frozenset[int] = frozenset()


def _literal(node: ast.expr, line: str) -> Any:
    """A Python literal, with ``_pitstop_dep_N_`` names as ``Placeholder``s and marked strings restored."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes | complex) and node.value is not ...:
        return _MARKED.sub(r"$\1", node.value) if isinstance(node.value, str) else node.value
    if isinstance(node, ast.Name) and (m := _MARKED.fullmatch(node.id)):
        return Placeholder(int(m.group(1)))
    if isinstance(node, ast.List):
        return [_literal(e, line) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, line) for e in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_literal(k, line) for k in node.keys]  # type: ignore[arg-type]
        if any(isinstance(k, list | dict) for k in keys):
            raise PlanError(f"plan line {line!r}: a dict key must be a string, number or tuple")
        return dict(zip(keys, (_literal(v, line) for v in node.values)))
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int | float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise PlanError(f"plan line {line!r}: arguments must be literals or $N, not {ast.unparse(node)!r}")


def _refs(value: Any, earlier: int) -> set[int]:
    """The tasks ``value`` refers to: bare placeholders, and ``$N`` (N <= earlier) inside strings."""
    if isinstance(value, Placeholder):
        return {value.idx}
    if isinstance(value, str):
        return {n for n in map(int, _DOLLAR.findall(value)) if 1 <= n <= earlier}
    if isinstance(value, list | tuple):
        return set().union(*(_refs(v, earlier) for v in value))
    if isinstance(value, dict):
        return set().union(*(_refs(k, earlier) | _refs(v, earlier) for k, v in value.items()))
    return set()


def parse_task(line: str, expected_idx: int, tools: frozenset[str] | None = None) -> Task | None:
    """One plan line -> its ``Task``; ``None`` for a line that is not a task (``Thought: ...``, blank, other
    text). ``join()`` is a ``Task`` whose tool is ``"join"``.

    Raises:
        PlanError: a numbered line that is not ``expected_idx. tool(literal args)`` of a tool in ``tools`` (any
            tool when ``tools`` is None), or whose bare ``$N`` is not an earlier task.
    """
    m = _TASK.match(line)
    if m is None:
        return None
    if int(m.group(1)) != expected_idx:
        raise PlanError(f"plan line {line!r}: expected task {expected_idx}")
    try:
        node = ast.parse(_DOLLAR.sub(rf"{_MARK}\1_", m.group(2)), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes; the others: nesting
        raise PlanError(f"plan line {line!r}: not a call like tool(arg, key=value)") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise PlanError(f"plan line {line!r}: not a call like tool(arg, key=value)")
    name = node.func.id
    if name != JOIN and tools is not None and name not in tools:
        raise PlanError(f"plan line {line!r}: unknown tool {name!r}; the tools are: {', '.join(sorted(tools))}")
    if any(kw.arg is None for kw in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
        raise PlanError(f"plan line {line!r}: no *args / **kwargs in a plan")
    args = tuple(_literal(a, line) for a in node.args)
    kwargs = {kw.arg: _literal(kw.value, line) for kw in node.keywords if kw.arg is not None}
    bare = _refs([*args, *kwargs.values()], 0)  # strings count for no task here: bare placeholders only
    if bad := sorted(n for n in bare if not 1 <= n < expected_idx):
        raise PlanError(f"plan line {line!r}: ${bad[0]} is not an earlier task")
    deps = _refs([*args, *kwargs.values()], expected_idx - 1)
    return Task(expected_idx, name, args, kwargs, frozenset(deps))


class PlanParser:
    """Parses a plan as it streams: ``feed`` text deltas, get back the tasks whose lines completed (a line is
    complete at its newline; ``close`` completes the last one). Parsing stops at ``join()`` or ``<END_OF_PLAN>``
    (``done``); later text is ignored. ``join()`` itself is not returned.

    Raises:
        PlanError: (``feed``, ``close``) as ``parse_task``; the parser is then ``done``.
    """

    def __init__(self, tools: frozenset[str] | None = None) -> None:
        self.tools = tools
        self.tasks: list[Task] = []
        self.done = False
        self.joined = False
        self._buf = ""

    def feed(self, text: str) -> list[Task]:
        if self.done:
            return []
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        return self._lines(lines)

    def close(self) -> list[Task]:
        rest, self._buf = self._buf, ""
        out = [] if self.done else self._lines([rest])
        self.done = True
        return out

    def _lines(self, lines: list[str]) -> list[Task]:
        out: list[Task] = []
        for line in lines:
            if self.done:
                break
            if line.strip() == END_OF_PLAN:
                self.done = True
                break
            try:
                task = parse_task(line, len(self.tasks) + 1, self.tools)
            except PlanError:
                self.done = True
                raise
            if task is None:
                continue
            if task.tool == JOIN:
                self.done = self.joined = True
                break
            self.tasks.append(task)
            out.append(task)
        return out


def parse_plan(text: str, tools: frozenset[str] | None = None) -> list[Task]:
    """A whole plan's tasks (``PlanParser`` fed once); raises ``PlanError`` as it does."""
    p = PlanParser(tools)
    return p.feed(text) + p.close()


def _lark_literal(s: str) -> str:
    return json.dumps(s)


def plan_grammar(tool_params: dict[str, list[str]]) -> str:
    """A Lark grammar (llguidance dialect) for a plan over these tools (name -> parameter names, in order):
    optional ``Thought: ...`` lines, numbered calls ``N. tool(args)`` whose keyword names are the tool's
    parameters and whose values are Python literals or ``$N``, ending ``N. join()`` and optionally
    ``<END_OF_PLAN>``. Task numbers are not checked to be in sequence here (``PlanParser`` does).

    Raises:
        ValueError: no tools, or a tool or parameter name that is not a Python identifier.
    """
    if not tool_params:
        raise ValueError("plan_grammar: no tools")
    rules = []
    for i, (name, params) in enumerate(tool_params.items()):
        for n in (name, *params):
            if not n.isidentifier() or keyword.iskeyword(n) or n == JOIN:
                raise ValueError(f"plan_grammar: {n!r} is not a Python identifier (or is a keyword, or join)")
        kw = [f"{_lark_literal(p + '=')} value" for p in params]
        arg = " | ".join(["value", *kw])
        rules += [f"call_{i}: {_lark_literal(name + '(')} (arg_{i} (\", \" arg_{i})*)? \")\"",
                  f"arg_{i}: {arg}"]
    calls = " | ".join(f"call_{i}" for i in range(len(tool_params)))
    return "\n".join([
        "start: (thought? task)* thought? INDEX \". \" \"join()\" (\"\\n\" END)? \"\\n\"?",
        "thought: \"Thought: \" THOUGHT \"\\n\"",
        "task: INDEX \". \" call \"\\n\"",
        f"call: {calls}",
        *rules,
        "value: STRING | NUMBER | \"True\" | \"False\" | \"None\" | REF | list | tuple | dict",
        "list: \"[\" (value (\", \" value)*)? \"]\"",
        "tuple: \"(\" \")\" | \"(\" value \",\" \")\" | \"(\" value (\", \" value)+ \")\"",
        "dict: \"{\" (value \": \" value (\", \" value \": \" value)*)? \"}\"",
        "INDEX: /[1-9][0-9]*/",
        "REF: /\\$[1-9][0-9]*/",
        "NUMBER: /-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?/",
        "STRING: /\"([^\"\\\\\\n]|\\\\[^\\n])*\"/ | /'([^'\\\\\\n]|\\\\[^\\n])*'/",
        "THOUGHT: /[^\\n]+/",
        f"END: {_lark_literal(END_OF_PLAN)}",
        "",
    ])
