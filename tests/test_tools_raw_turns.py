"""RawToolTurns: an assistant message with tool calls comes back as the text the model generated only when it is
exactly the turn that was returned (ids, names, arguments, content), within its scope."""

from __future__ import annotations

import pytest

from pitstop.tools.raw_turns import RawToolTurns

TEXT = '[{"name":"get_weather","arguments":{"city":"Paris"}}]'


def _msg(cid="call_1", name="get_weather", args='{"city":"Paris"}', content=""):
    return {"role": "assistant", "content": content,
            "tool_calls": [{"id": cid, "type": "function", "function": {"name": name, "arguments": args}}]}


def _turns() -> RawToolTurns:
    t = RawToolTurns()
    t.remember("tenant-a", TEXT, None, [("call_1", "get_weather", '{"city":"Paris"}')])
    return t


def test_the_returned_turn_is_restored_as_generated_and_the_input_is_untouched():
    msgs = [{"role": "user", "content": "hi"}, _msg(), {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    out = _turns().restore("tenant-a", msgs)
    assert out[1] == {"role": "assistant", "content": TEXT}
    assert out[0] is msgs[0] and out[2] is msgs[2] and msgs[1]["tool_calls"]  # a new list; messages not modified


@pytest.mark.parametrize("msg", [_msg(args='{"city":"Rome"}'), _msg(name="get_time"), _msg(cid="call_2"),
                                 _msg(content="I will check."), {"role": "assistant", "content": TEXT}])
def test_any_difference_leaves_the_message_to_the_template(msg):
    assert _turns().restore("tenant-a", [msg]) == [msg]


def test_same_arguments_reserialized_or_as_an_object_still_match():
    t = _turns()
    assert t.restore("tenant-a", [_msg(args='{"city": "Paris"}')])[0]["content"] == TEXT
    obj = _msg()
    obj["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    assert t.restore("tenant-a", [obj])[0]["content"] == TEXT


def test_another_scope_never_sees_the_turn():
    msg = _msg()
    assert _turns().restore("tenant-b", [msg]) == [msg]
    assert _turns().restore(None, [msg]) == [msg]


def test_parallel_calls_must_all_match_and_capacity_drops_the_least_recently_used():
    t = RawToolTurns(capacity=2)
    calls = [("c1", "a", "{}"), ("c2", "b", '{"x":1}')]
    t.remember(None, "two calls", "", calls)
    both = {"role": "assistant", "content": "", "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls]}
    assert t.restore(None, [both])[0]["content"] == "two calls"
    one = {**both, "tool_calls": both["tool_calls"][:1]}
    assert t.restore(None, [one]) == [one]
    t.remember(None, "t2", "", [("d1", "a", "{}")])
    t.restore(None, [both])  # used again: now the most recent
    t.remember(None, "t3", "", [("e1", "a", "{}")])
    assert len(t) == 2 and t.restore(None, [both])[0]["content"] == "two calls"  # "t2" went, not this one
    with pytest.raises(ValueError):
        RawToolTurns(capacity=0)


def test_tool_history_names_one_memory_or_none():
    from pitstop.tools.raw_turns import raw_turns_for
    assert isinstance(raw_turns_for("generated"), RawToolTurns) and raw_turns_for("template") is None
    with pytest.raises(ValueError, match="tool_history"):
        raw_turns_for("raw")
