"""A hypothesis state machine over the agent-program lifecycle (issue 14): turns arrive (final or not),
run, finish or are aborted while waiting or running; programs are ended at any point, tools reported,
the clock advances, strangers press on memory. After every step: KV accounting balances, no pin outlives
its program, every pin has a finite expiry or a waiting turn that is alive, ended programs are gone once
idle, and no program outlives its idle timeout. The engine loop is the real one; the model is the paged
echo executor (``fake_executor.py``), which still checks every block table it is given."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fake_executor import Clock, PagedEchoExecutor
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.engine.program_manager import TooManyPrograms
from pitstop.sampling_params import SamplingParams

PROGRAMS = ("a", "b", "c", "d")
IDLE_TIMEOUT = 50.0
BLOCK = 4


class ProgramLifecycle(RuleBasedStateMachine):
    @initialize(ttl=st.sampled_from(["fixed", "continuum"]), blocks=st.sampled_from([24, 40]),
                max_programs=st.sampled_from([None, 3]))
    def build(self, ttl: str, blocks: int, max_programs: int | None) -> None:
        self.clock = Clock()
        self.engine = LLMEngine(
            EngineConfig(block_size=BLOCK, ttl_policy=ttl, ttl_seconds=20.0, scheduling_policy="program-fcfs",
                         max_num_seqs=3, max_num_batched_tokens=32, program_idle_timeout=IDLE_TIMEOUT,
                         max_programs=max_programs),
            executor=PagedEchoExecutor(blocks, BLOCK), clock=self.clock, num_blocks=blocks, vocab_size=1000,
            max_model_len=64)
        self.contexts: dict[str, list[int]] = {}
        self.ended_while_running: set[str] = set()  # the model's view: DELETE came while a turn ran
        self.counter = 0

    def _rid(self) -> str:
        self.counter += 1
        return f"r{self.counter}"

    @rule(program=st.sampled_from(PROGRAMS), last=st.booleans(), extra=st.integers(1, 12),
          out=st.integers(1, 6))
    def turn_arrives(self, program: str, last: bool, extra: int, out: int) -> None:
        ctx = self.contexts.get(program, [hash(program) % 500 + 1])
        prompt = (ctx + [(len(ctx) * 7 + i) % 997 + 1 for i in range(extra)])[-40:]
        try:
            self.engine.add_request(self._rid(), prompt, SamplingParams(temperature=0, max_tokens=out,
                                                                        ignore_eos=True),
                                    program_id=program, is_last_turn=last, tool_name="Bash")
        except TooManyPrograms:
            assert all(p.active > 0 for p in self.engine.scheduler.programs.programs.values())
            return
        self.contexts[program] = prompt
        self.ended_while_running.discard(program)

    @rule(n=st.integers(1, 4))
    def steps(self, n: int) -> None:
        for _ in range(n):
            if self.engine.has_unfinished_requests():
                for o in self.engine.step():
                    if o.finished and o.request_id in self.engine.scheduler.requests:
                        raise AssertionError("a finished request is still scheduled")

    @rule(data=st.data(), running=st.booleans())
    def abort(self, data, running: bool) -> None:
        sched = self.engine.scheduler
        pool = sched.running if running else sched.waiting
        if pool:
            req = data.draw(st.sampled_from(list(pool)))
            self.engine.abort_request(req.parent_id or req.request_id)

    @rule(program=st.sampled_from(PROGRAMS))
    def delete(self, program: str) -> None:
        p = self.engine.scheduler.programs.programs.get(program)
        if p is not None and p.active > 0:
            self.ended_while_running.add(program)
        self.engine.end_program(program)

    @rule(program=st.sampled_from(PROGRAMS), dur=st.floats(0, 30))
    def tool_report(self, program: str, dur: float) -> None:
        self.engine.report_tool_result(program, "Bash", dur)

    @rule(dt=st.sampled_from([0.5, 5.0, 25.0, 60.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt
        self.engine.expire_programs()
        limit = self.clock.t - IDLE_TIMEOUT - 1.0  # the idle scan runs at most once a second
        for p in self.engine.scheduler.programs.programs.values():
            assert p.active > 0 or p.last_active > limit, f"{p.program_id} outlived its idle timeout"

    @rule(size=st.integers(8, 40))
    def pressure(self, size: int) -> None:
        self.engine.add_request(self._rid(), [999] * size, SamplingParams(temperature=0, max_tokens=3,
                                                                          ignore_eos=True))

    @invariant()
    def kv_accounting_balances(self) -> None:
        self.engine.scheduler.check_kv_accounting()

    @invariant()
    def pins_belong_to_live_programs(self) -> None:
        pm = self.engine.scheduler.programs
        for pid, p in pm._pinned.items():
            assert pm.programs.get(pid) is p, f"pin of {pid} outlived its program"
            assert p.has_pin
            assert math.isfinite(p.pin_expiry) or (p.turn_waiting and p.active > 0)
            if p.turn_waiting:
                assert p.active > 0, f"{pid}: pin held for a turn that is gone"
        assert sum(len(p.pinned) for p in pm.programs.values()) == self.engine.kv_manager.num_pinned_blocks

    @invariant()
    def ended_programs_are_gone_once_idle(self) -> None:
        table = self.engine.scheduler.programs.programs
        for pid in self.ended_while_running:
            p = table.get(pid)
            assert p is None or (p.active > 0 and not p.has_pin), f"{pid} was ended but lingers or pins"
        for p in table.values():
            assert not (p.ended and p.active == 0), f"{p.program_id} was ended but is still in the table"
            assert p.active == sum(1 for r in self.engine.scheduler.requests.values()
                                   if r.program_id == p.program_id), f"{p.program_id}: active count drifted"

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        eng = self.engine
        while eng.has_unfinished_requests():
            eng.step()
        for pid in list(eng.scheduler.programs.programs):
            eng.end_program(pid)
        eng.scheduler.check_kv_accounting()
        assert eng.kv_manager.num_pinned_blocks == 0 and not eng.scheduler.programs.programs


TestProgramLifecycle = ProgramLifecycle.TestCase
TestProgramLifecycle.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
