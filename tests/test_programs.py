"""Agent programs: KV pins between turns, TTL policies, program-level scheduling policies."""

from __future__ import annotations

import math

import pytest

from fake_executor import Clock, PagedEchoExecutor
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.program import Program
from pitstop.request import Request
from pitstop.engine.tool_parse import infer_tool_name
from pitstop.policies import get_scheduling_policy, get_ttl_policy
from pitstop.policies.ttl_base import PinContext
from pitstop.policies.ttl_continuum import ContinuumTTL
from pitstop.sampling_params import SamplingParams

SP = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def make_engine(num_blocks=40, block_size=4, ttl="fixed", ttl_seconds=5.0, policy="program-fcfs", **cfg):
    ex = PagedEchoExecutor(num_blocks, block_size)
    clock = Clock()
    eng = LLMEngine(EngineConfig(block_size=block_size, ttl_policy=ttl, ttl_seconds=ttl_seconds,
                                 scheduling_policy=policy, **cfg),
                    executor=ex, clock=clock, num_blocks=num_blocks, vocab_size=1000, max_model_len=64)
    return eng, ex, clock


def run(eng):
    done = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    return done


def turn(eng, rid, prompt, program="p", last=False, tool="Bash"):
    eng.add_request(rid, prompt, SP, program_id=program, is_last_turn=last, tool_name=tool)
    return run(eng)[rid]


def ctx(tool="Bash", tokens=400, blocks=25, total=100, usage=0.5, rate=1000.0, delay=0.0):
    return PinContext(tool, tokens, blocks, total, usage, rate, delay, now=0.0)


# ---- TTL policy math ------------------------------------------------------------------------
def test_continuum_ttl_covers_the_tool_when_memory_is_cheap():
    pol = ContinuumTTL(min_samples=3)
    for d in (0.5, 1.0, 1.5, 2.0, 30.0):
        pol.observe_tool("Bash", d)
    tau = pol.ttl(ctx(usage=0.0))  # free memory: the largest observed duration maximises P * B
    assert 30.0 <= tau <= 32.0


def test_continuum_ttl_trades_benefit_against_pressure():
    pol = ContinuumTTL(min_samples=3)
    for d in (0.5, 1.0, 1.5, 2.0, 30.0):
        pol.observe_tool("Bash", d)
    # B = 400/1000 = 0.4 s; c = 0.81 * 25/100 = 0.2025 s/s: J(2.0)=0.8*0.4-0.405<0, J(0.5)=0.08-0.10<0 ... J(1.0)=0.16-0.2<0
    assert pol.ttl(ctx(usage=0.9)) == 0.0
    # a long context is worth holding for the common short runs but not for the 30 s outlier
    tau = pol.ttl(ctx(tokens=4000, usage=0.9))  # B = 4 s: J(2)=3.2-0.405, J(30)=4-6.1
    assert tau == pytest.approx(2.0 * 1.05 + 1e-3)


def test_continuum_ttl_falls_back_to_all_tools_then_prior():
    pol = ContinuumTTL(min_samples=3, prior_mean_s=1.0)
    prior_tau = pol.ttl(ctx(usage=0.0))
    assert prior_tau == pytest.approx(-math.log(1 - 0.99) * 1.05 + 1e-3)  # cheap memory: the 99% quantile
    for d in (3.0, 3.0, 3.0):
        pol.observe_tool("Read", d)
    assert pol.samples("Bash") == [3.0, 3.0, 3.0]  # not enough Bash data: all tools' CDF
    assert pol.ttl(ctx(usage=0.0)) == pytest.approx(3.0 * 1.05 + 1e-3)


def test_continuum_ttl_outlives_the_tool_by_the_gap_overhead():
    pol = ContinuumTTL(min_samples=3)
    for d in (0.1, 0.1, 0.1):
        pol.observe_tool("Read", d)
    base = pol.ttl(ctx(tool="Read", usage=0.0))
    assert base == pytest.approx(0.1 * 1.05 + 1e-3)
    c = ctx(tool="Read", usage=0.0)
    c.gap_overhead = 0.4
    assert pol.ttl(c) == pytest.approx(0.1 * 1.05 + 0.4 * 1.5 + 1e-3)  # the pin must outlive the tool by o
    # and holding for tau + o is priced: at high pressure a short context is not worth the longer hold
    c2 = ctx(tool="Read", tokens=40, usage=0.9)
    assert pol.ttl(c2) > 0.0
    c2.gap_overhead = 5.0
    assert pol.ttl(c2) == 0.0


def test_engine_measures_the_gap_outside_reported_tool_runs():
    eng, ex, clock = make_engine(ttl="continuum", ttl_seconds=None)
    pm = eng.scheduler.programs
    ids = list(range(1, 30))
    for k in range(4):
        out = turn(eng, f"t{k}", ids, tool="Grep")
        ids = out.prompt_token_ids + out.outputs[0].token_ids + [5]
        clock.t += 0.05  # the reply's way to the client
        eng.report_tool_result("p", "Grep", 0.2)  # the client ran the tool for 0.2 s (reported)...
        eng.report_tool_result("p", "Grep", 0.1)  # ... and a parallel one beside it
        clock.t += 0.2 + 0.3  # the tool, then 0.3 s before the next turn arrives
    # gap = 0.55 s, longest reported tool 0.2 s: 0.35 s outside the tool, learned by EWMA from 0
    assert 0.0 < pm.gap_overhead <= 0.35 + 1e-9
    samples = pm.ttl_policy._by_tool["Grep"]
    assert sorted(set(samples)) == [0.1, 0.2]  # reported durations, no gap inferred while reports come
    assert eng.stats()["gap_overhead"] == pm.gap_overhead


def test_ttl_policy_registry():
    assert get_ttl_policy("none").ttl(ctx()) == 0
    assert get_ttl_policy("fixed", 3.0).ttl(ctx()) == 3.0
    with pytest.raises(ValueError, match="unknown TTL policy"):
        get_ttl_policy("sometimes")
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        get_scheduling_policy("lottery")


# ---- pins --------------------------------------------------------------------------------------
def test_next_turn_hits_pinned_blocks_and_computes_only_new_tokens():
    eng, ex, clock = make_engine()
    first = turn(eng, "t1", list(range(1, 30)))
    assert eng.kv_manager.num_pinned_blocks == 8  # 29 prompt + 3 computed outputs = 32 tokens = 8 full blocks
    ctx_tokens = first.prompt_token_ids + first.outputs[0].token_ids
    before = ex.computed_tokens
    second = turn(eng, "t2", ctx_tokens + [7, 8, 9], last=True)
    assert second.num_cached_tokens == 32
    assert ex.computed_tokens - before == (len(ctx_tokens) + 3 - 32) + 3  # new prompt tokens + 3 decodes
    stats = eng.stats()
    assert stats["pin_hits"] == 1 and stats["pins"] == 1 and stats["reprefilled_tokens"] == len(ctx_tokens) - 32
    assert eng.kv_manager.num_pinned_blocks == 0 and eng.program_stats("p") is None  # last turn ends it


def test_pins_survive_lru_pressure_until_expiry():
    eng, ex, clock = make_engine(num_blocks=20, ttl_seconds=10.0)
    turn(eng, "a1", list(range(1, 30)), program="a")
    pinned = [b.block_id for b in eng.scheduler.programs.programs["a"].pinned]
    for i in range(4):  # strangers cycle through the rest of the pool, evicting the LRU cache
        eng.add_request(f"s{i}", [100 + i] * 40, SP)
        run(eng)
    assert [b.block_id for b in eng.scheduler.programs.programs["a"].pinned] == pinned
    assert all(eng.kv_manager.pool.blocks[b].ref_cnt == 1 for b in pinned)
    clock.t += 11.0
    eng.add_request("s9", [5] * 8, SP)
    run(eng)  # schedule() expires the pin
    assert eng.kv_manager.num_pinned_blocks == 0 and eng.stats()["pin_expiries"] == 1
    assert eng.kv_manager.pool.num_free_blocks == 20


def test_running_requests_release_pins_before_preemption_latest_expiry_first():
    eng, ex, clock = make_engine(num_blocks=20, ttl_seconds=10.0)
    turn(eng, "a1", list(range(1, 30)), program="a")  # 8 pinned blocks, expires at ~t+10
    clock.t += 1.0
    turn(eng, "b1", list(range(200, 229)), program="b")  # 8 more, expires 1 s later
    assert eng.kv_manager.num_pinned_blocks == 16
    eng.add_request("big", [900] * 14, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    run(eng)  # needs 9 blocks while 4 are free: running growth releases pins, b's first
    progs = eng.scheduler.programs.programs
    assert progs["a"].has_pin and not progs["b"].has_pin
    assert eng.stats()["pin_releases"] == 1 and eng.scheduler.num_preemptions == 0


def test_pin_of_an_arrived_turn_outlives_its_ttl_until_admission():
    eng, ex, clock = make_engine(num_blocks=40, ttl_seconds=1.0, max_num_seqs=1)
    first = turn(eng, "a1", list(range(1, 30)), program="a")
    ctx_tokens = first.prompt_token_ids + first.outputs[0].token_ids
    eng.add_request("s", [500] * 8, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    eng.step()  # the stranger runs; max_num_seqs=1 keeps the next turn waiting
    eng.add_request("a2", ctx_tokens + [7, 8, 9], SP, program_id="a", is_last_turn=False, tool_name="Bash")
    clock.t += 5.0  # well past the TTL while a2 waits for admission
    eng.step()
    assert eng.scheduler.programs.programs["a"].has_pin and eng.stats()["pin_expiries"] == 0
    run(eng)
    assert eng.program_stats("a")["pin_hits"] == 1 and eng.stats()["pin_expiries"] == 0
    eng.end_program("a")


def test_pressure_releases_pins_of_arrived_turns_last():
    eng, ex, clock = make_engine(num_blocks=40, ttl_seconds=10.0)
    turn(eng, "a1", list(range(1, 30)), program="a")
    clock.t += 1.0
    turn(eng, "b1", list(range(200, 229)), program="b")  # expires later than a's pin
    progs = eng.scheduler.programs
    progs.programs["b"].turn_waiting = True  # b's next turn has arrived
    assert progs.release_one()
    assert progs.programs["b"].has_pin and not progs.programs["a"].has_pin
    progs.end("b")


def test_admission_keeps_a_block_per_running_request_while_pins_are_held():
    eng, ex, clock = make_engine(num_blocks=20, ttl_seconds=1000.0)
    turn(eng, "a1", list(range(1, 30)), program="a")  # 8 pinned blocks
    eng.add_request("r", [700] * 9, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    eng.step()  # r runs and holds 3 blocks: 9 free
    eng.add_request("s", [800] * 33, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # 9 blocks
    eng.step()
    assert [q.request_id for q in eng.scheduler.waiting] == ["s"]  # 9 free - 9 needed < 1 block for r
    run(eng)
    assert eng.stats()["pin_releases"] == 0 and eng.scheduler.programs.programs["a"].has_pin
    eng.end_program("a")
    eng2, _, _ = make_engine(num_blocks=20, ttl_seconds=1000.0)  # no pins: no watermark
    eng2.add_request("r", [700] * 9, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    eng2.step()
    eng2.add_request("s", [800] * 33, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    eng2.step()
    assert not eng2.scheduler.waiting
    run(eng2)


def test_waiting_request_waits_for_pins_while_others_run_but_never_deadlocks():
    eng, ex, clock = make_engine(num_blocks=20, ttl_seconds=1000.0)
    turn(eng, "a1", list(range(1, 62)), program="a")  # 16 pinned blocks of 20
    eng.add_request("new", [900] * 30, SP)
    done = run(eng)  # nothing else runs: the pin is released rather than stalling
    assert done["new"].outputs[0].finish_reason == "length"
    assert eng.stats()["pin_releases"] == 1


def test_end_program_releases_pins_and_abort_does_not_pin():
    eng, ex, clock = make_engine()
    turn(eng, "a1", list(range(1, 30)), program="a")
    assert eng.end_program("a") and eng.kv_manager.num_pinned_blocks == 0
    assert not eng.end_program("a")
    eng.add_request("b1", list(range(1, 30)), SP, program_id="b", is_last_turn=False)
    eng.step()
    eng.abort_request("b1")
    eng.step()
    assert eng.kv_manager.num_pinned_blocks == 0


def test_no_pin_with_ttl_none_and_tool_time_learned_from_gaps():
    eng, ex, clock = make_engine(ttl="continuum", ttl_seconds=None)
    eng2, _, _ = make_engine(ttl="none")
    turn(eng2, "a1", list(range(1, 30)), program="a")
    assert eng2.kv_manager.num_pinned_blocks == 0
    ids = list(range(1, 30))
    for k in range(3):
        out = turn(eng, f"t{k}", ids, tool="Grep")
        ids = out.prompt_token_ids + out.outputs[0].token_ids + [5]
        clock.t += 0.25
    samples = eng.scheduler.programs.ttl_policy._by_tool["Grep"]
    assert len(samples) == 2 and all(0.25 <= s < 0.3 for s in samples)
    eng.report_tool_result("p", "Grep", 0.5)
    assert len(samples) == 3
    with pytest.raises(ValueError):
        eng.report_tool_result("p", "Grep", -1)


def test_tool_name_inferred_from_output_text():
    assert infer_tool_name('<tool_call>\n{"name": "get_weather", "arguments": {}}</tool_call>') == "get_weather"
    assert infer_tool_name('{"name": "bash", "arguments": {"cmd": "ls"}}') == "bash"
    assert infer_tool_name("Thought: look\nAction: search\nAction Input: x") == "search"
    assert infer_tool_name("just text") is None


# ---- scheduling policies ---------------------------------------------------------------------
def _req(rid, arrival, program=None, priority=0, seq=0):
    r = Request(rid, [1], SP, arrival, 4, program_id=program, priority=priority)
    r.arrival_seq = seq
    return r


def test_program_fcfs_orders_by_program_arrival_pinned_first():
    pol = get_scheduling_policy("program-fcfs")
    old, new, pinned = Program("old", 0.0), Program("new", 5.0), Program("pinned", 3.0, pinned=[object()])
    pol.bind({"old": old, "new": new, "pinned": pinned})
    queue = [_req("n", 6.0, "new", seq=1), _req("o", 7.0, "old", seq=2), _req("solo", 1.0, seq=0),
             _req("p", 8.0, "pinned", seq=3)]
    assert [r.request_id for r in pol.order(queue, now=9.0)] == ["p", "o", "solo", "n"]
    assert get_scheduling_policy("fcfs").order(queue, 9.0)[0].request_id == "solo"


def test_plas_serves_least_attained_service_and_never_starves():
    pol = get_scheduling_policy("plas")
    heavy, light = Program("heavy", 0.0, attained_service=50_000), Program("light", 9.0, attained_service=10)
    pol.bind({"heavy": heavy, "light": light})
    queue = [_req("h", 10.0, "heavy", seq=0), _req("l", 11.0, "light", seq=1)]
    assert [r.request_id for r in pol.order(queue, now=12.0)] == ["l", "h"]
    assert pol.level(10) == 0 and pol.level(pol.q0) == 1 and pol.level(4 * pol.q0) == 3
    # after waiting longer than the starvation bound the heavy program's turn goes first
    assert [r.request_id for r in pol.order(queue, now=10.0 + pol.starvation_s + 1)] == ["h", "l"]


def test_priority_policy():
    pol = get_scheduling_policy("priority")
    queue = [_req("a", 1.0, priority=5, seq=0), _req("b", 2.0, priority=-1, seq=1), _req("c", 0.5, priority=5, seq=2)]
    assert [r.request_id for r in pol.order(queue, 3.0)] == ["b", "c", "a"]
