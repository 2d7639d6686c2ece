"""Program lifecycle under clients that crash, cancel and never say goodbye (issue 14): an end while a
turn runs, an aborted waiting turn, idle programs, and the bound on the program table. Each of the first
three tests failed before its fix."""

from __future__ import annotations

import pytest

from pitstop.config import EngineConfig
from pitstop.engine.program_manager import TooManyPrograms
from pitstop.sampling_params import SamplingParams
from test_programs import SP, make_engine, run, turn


def test_end_while_a_turn_runs_drops_the_program_when_it_finishes():
    """Bug 1: DELETE during a non-final turn kept the program forever and pinned the turn's blocks."""
    eng, _, _ = make_engine(ttl_seconds=1000.0)
    eng.add_request("a1", list(range(1, 30)), SP, program_id="a", is_last_turn=False, tool_name="Bash")
    eng.step()  # a1 is running
    assert eng.end_program("a")
    assert eng.program_stats("a") is not None  # still running: kept until its turn ends
    run(eng)
    assert eng.kv_manager.num_pinned_blocks == 0
    assert eng.program_stats("a") is None and eng.stats()["num_programs"] == 0


def test_a_turn_after_an_end_keeps_the_program_going():
    eng, _, _ = make_engine(ttl_seconds=1000.0)
    eng.add_request("a1", list(range(1, 30)), SP, program_id="a", is_last_turn=False)
    eng.step()
    eng.end_program("a")
    eng.add_request("a2", list(range(1, 30)), SP, program_id="a", is_last_turn=False)  # the client goes on
    run(eng)
    assert eng.program_stats("a") is not None and eng.kv_manager.num_pinned_blocks > 0
    eng.end_program("a")
    assert eng.kv_manager.num_pinned_blocks == 0


def test_aborted_waiting_turn_lets_the_pin_expire():
    """Bug 2: a turn that arrived while its program was pinned, aborted before admission, left
    ``turn_waiting`` set, so the pin never expired."""
    eng, _, clock = make_engine(num_blocks=40, ttl_seconds=1.0, max_num_seqs=1)
    first = turn(eng, "a1", list(range(1, 30)), program="a")
    eng.add_request("s", [500] * 8, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    eng.step()  # the stranger runs; max_num_seqs=1 keeps the next turn waiting
    eng.add_request("a2", first.prompt_token_ids + first.outputs[0].token_ids + [7], SP, program_id="a",
                    is_last_turn=False)
    eng.step()
    eng.abort_request("a2")  # the client went away before admission
    clock.t += 5.0
    run(eng)
    assert eng.kv_manager.num_pinned_blocks == 0 and eng.stats()["pin_expiries"] == 1


def test_idle_program_is_ended_after_the_timeout():
    """Bug 3: a program whose client sent a non-final turn and vanished stayed in the table forever."""
    eng, _, clock = make_engine(ttl_seconds=5.0, program_idle_timeout=60.0)
    turn(eng, "a1", list(range(1, 30)), program="a")
    clock.t += 59.0
    eng.expire_programs()
    assert eng.program_stats("a") is not None
    clock.t += 2.0
    eng.expire_programs()  # no request needed: the server calls this while idle
    assert eng.program_stats("a") is None and eng.stats()["programs_idle_ended"] == 1
    assert eng.kv_manager.num_pinned_blocks == 0


def test_activity_postpones_the_idle_end_and_running_programs_are_never_idle():
    eng, _, clock = make_engine(ttl_seconds=5.0, program_idle_timeout=10.0)
    turn(eng, "a1", list(range(1, 30)), program="a")
    clock.t += 8.0
    eng.report_tool_result("a", "Bash", 8.0)  # a report is activity
    clock.t += 8.0
    eng.expire_programs()
    assert eng.program_stats("a") is not None
    eng.add_request("a2", list(range(1, 30)), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                    program_id="a", is_last_turn=False)
    eng.step()
    clock.t += 100.0
    eng.expire_programs()  # a turn is running: not idle
    assert eng.program_stats("a") is not None
    run(eng)
    eng.end_program("a")


def test_max_programs_ends_the_least_recently_active_idle_program():
    eng, _, clock = make_engine(ttl_seconds=1000.0, max_programs=2)
    turn(eng, "a1", list(range(1, 30)), program="a")
    clock.t += 1.0
    turn(eng, "b1", list(range(100, 129)), program="b")
    clock.t += 1.0
    turn(eng, "c1", list(range(200, 229)), program="c")  # over the bound: a (least recent) goes
    assert eng.program_stats("a") is None and eng.program_stats("b") is not None
    assert eng.stats()["num_programs"] == 2 and eng.stats()["programs_idle_ended"] == 1
    for p in ("b", "c"):
        eng.end_program(p)


def test_max_programs_refuses_a_new_program_when_none_is_idle():
    eng, _, _ = make_engine(ttl_seconds=1000.0, max_programs=1)
    eng.add_request("a1", list(range(1, 30)), SP, program_id="a", is_last_turn=False)
    eng.step()  # a is running, so not idle
    with pytest.raises(TooManyPrograms, match="max_programs=1"):
        eng.add_request("b1", list(range(1, 9)), SP, program_id="b")
    assert "b1" not in eng.scheduler.requests  # nothing queued
    eng.add_request("a2", list(range(1, 9)), SP, program_id="a", is_last_turn=True)  # its own turns still come in
    run(eng)
    assert eng.stats()["num_programs"] == 0


@pytest.mark.parametrize("field,value", [("program_idle_timeout", 0), ("max_programs", 0)])
def test_bad_program_limits_are_clear_errors(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})
