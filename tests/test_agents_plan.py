"""pitstop.agents.plan: LLMCompiler plans parsed line by line with ast ($N placeholders, literals only, streaming),
and the Lark grammar that constrains a model to the format (llguidance, on SmolLM2's tokenizer)."""

from __future__ import annotations

import llguidance
import pytest

from pitstop.agents.plan import PlanError, PlanParser, Placeholder, Task, parse_plan, parse_task, plan_grammar

TOOLS = frozenset({"search", "lookup"})


def test_tasks_arguments_and_dependencies() -> None:
    plan = ('Thought: look both up.\n1. search("Oslo")\n2. search(query=\'Bergen\', k=-2, exact=True)\n'
            '3. lookup($1, ["$2 and $1", {"k": ($2,)}], note="costs $5", limit=None)\n4. join()\n<END_OF_PLAN>\n')
    tasks = parse_plan(plan, TOOLS)
    assert tasks[0] == Task(1, "search", ("Oslo",), {}, frozenset())
    assert tasks[1] == Task(2, "search", (), {"query": "Bergen", "k": -2, "exact": True}, frozenset())
    t3 = tasks[2]
    assert t3.args == (Placeholder(1), ["$2 and $1", {"k": (Placeholder(2),)}])
    assert t3.kwargs == {"note": "costs $5", "limit": None}  # $5 is not an earlier task: text
    assert t3.deps == {1, 2}
    assert len(tasks) == 3


def test_dependency_inside_a_string_only() -> None:
    assert parse_plan('1. search("a")\n2. search("about $1")\n', TOOLS)[1].deps == {1}


@pytest.mark.parametrize("line, message", [
    ('2. search("x")', "expected task 1"),
    ("1. search(", "not a call"),
    ("1. search", "not a call"),
    ('1. delete("x")', "unknown tool 'delete'"),
    ("1. search(x)", "literals or \\$N"),
    ("1. search(1 + 2)", "literals or \\$N"),
    ("1. search(__import__('os'))", "literals or \\$N"),
    ("1. search($1)", "\\$1 is not an earlier task"),
    ("1. search(*xs)", "no \\*args"),
    ("1. search({[1]: 2})", "dict key"),
    ("1. search(" + "[" * 5000 + "]" * 5000 + ")", "not a call"),
    ("1. search('\\0' \0)", "not a call"),
])
def test_bad_task_lines(line: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_task(line, 1, TOOLS)


def test_other_lines_are_not_tasks() -> None:
    assert parse_task("Thought: hmm", 1, TOOLS) is None
    assert parse_task("", 1, TOOLS) is None
    assert parse_task("1. join()", 1, TOOLS) == Task(1, "join")


def test_streaming_returns_each_task_when_its_line_completes() -> None:
    p = PlanParser(TOOLS)
    assert p.feed('1. sea') == []
    assert p.feed('rch("a")') == []
    assert [t.idx for t in p.feed('\n2. search("b")\n3. look')] == [1, 2]
    assert [t.idx for t in p.feed('up($1, $2)\n4. jo')] == [3]
    assert p.feed("in()\n5. search('after join')\n") == []
    assert p.done and p.joined
    assert p.close() == [] and len(p.tasks) == 3


def test_close_completes_the_last_line_and_errors_stop_the_parser() -> None:
    p = PlanParser(TOOLS)
    p.feed('1. search("a")')
    assert [t.idx for t in p.close()] == [1] and not p.joined
    p = PlanParser(TOOLS)
    with pytest.raises(PlanError):
        p.feed('1. search("a")\n3. search("b")\n')
    assert p.done and p.feed('4. search("c")\n') == []


GRAMMAR_TOOLS = {"search": ["query"], "lookup": ["doc", "k"]}


def test_grammar_is_valid_llguidance_lark() -> None:
    lark = llguidance.LLMatcher.grammar_from_lark(plan_grammar(GRAMMAR_TOOLS))
    assert llguidance.LLMatcher.validate_grammar_with_warnings(lark) == (False, [])
    broken = llguidance.LLMatcher.grammar_from_lark(plan_grammar(GRAMMAR_TOOLS).replace("call: ", "call: nope | "))
    assert llguidance.LLMatcher.validate_grammar_with_warnings(broken)[0] is True  # the check does check


def test_grammar_refuses_names_it_cannot_express() -> None:
    for bad in ({}, {"web-search": []}, {"search": ["class"]}, {"join": []}):
        with pytest.raises(ValueError, match="plan_grammar"):
            plan_grammar(bad)


@pytest.fixture(scope="module")
def plan_matcher(smollm2_dir):  # noqa: ANN001, ANN201
    from pitstop.engine.structured_output.llguidance_backend import LLGuidanceBackend
    from pitstop.entrypoints.engine_builder import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    backend = LLGuidanceBackend(tok, 49152, frozenset({tok.eos_token_id}))
    key = ("grammar", plan_grammar(GRAMMAR_TOOLS), False)
    backend.validate(key)
    compiled = backend.compile(key)

    def run(text: str) -> tuple[bool, bool]:
        """(every token of ``text`` accepted, the grammar may end there)."""
        m = backend.new_matcher(compiled)
        ok = all(m.accept_token(t) for t in tok(text, add_special_tokens=False).input_ids)
        return ok, ok and m.accept_token(tok.eos_token_id)

    return run


VALID = [
    '1. search("x")\n2. lookup($1, k=3)\n3. join()',
    'Thought: first find it.\n1. search(query="a b")\n2. lookup(["$1", 2], k=-1.5)\nThought: done\n3. join()\n'
    '<END_OF_PLAN>',
    "1. join()\n",
    "1. search('q')\n2. lookup({'a': (1,), 'b': (None, True)}, k=$1)\n3. join()",
]


@pytest.mark.parametrize("text", VALID)
def test_grammar_accepts_valid_plans_on_the_real_tokenizer(plan_matcher, text: str) -> None:  # noqa: ANN001
    assert plan_matcher(text) == (True, True)
    parse_plan(text, frozenset(GRAMMAR_TOOLS))  # and the parser agrees


@pytest.mark.parametrize("text", [
    '1. search("x")\n2. delete($1)\n3. join()',  # unknown tool
    '1. search(q="x")\n2. join()',  # unknown parameter
    "1. search(x)\n2. join()",  # not a literal
    '1. search("x"\n2. join()',  # unclosed call
    '1. search("x")\n2. join()\nmore text',  # text after the plan
    'Sure! Here is the plan:\n1. search("x")\n2. join()',  # chatter
])
def test_grammar_rejects_bad_plans_on_the_real_tokenizer(plan_matcher, text: str) -> None:  # noqa: ANN001
    assert plan_matcher(text)[0] is False


def test_grammar_needs_the_join_line(plan_matcher) -> None:  # noqa: ANN001
    assert plan_matcher('1. search("x")\n') == (True, False)
