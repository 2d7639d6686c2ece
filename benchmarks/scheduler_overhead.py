"""Scheduler overhead per step against the length of the waiting queue, in the simulator's setting (an
``LLMEngine`` with a ``SimulatedRunner`` on a virtual clock, so only the engine's own Python is timed).

A backlog of N waiting requests (short prompts, 2-8 output tokens, priorities 0-3) is kept at N: every finished
request is replaced by a new one. ``schedule`` = ``LLMEngine.begin_step`` (``Scheduler.schedule``), ``update`` =
``LLMEngine.finish_step`` (``Scheduler.update`` + outputs of finished requests), microseconds per step, best of 3
runs of 300 steps.

    .venv/bin/python benchmarks/scheduler_overhead.py [fcfs program-fcfs priority plas]
"""

from __future__ import annotations

import random
import sys
import time

from pitstop.clock import VirtualClock
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.executor.simulated_runner import SimulatedRunner
from pitstop.sampling_params import SamplingParams
from pitstop.scheduler_output import SchedulerOutput


class ConstantStep:
    """Every step takes 10 ms."""

    def step_time(self, scheduler_output: SchedulerOutput) -> float:
        return 0.01


def run(n_waiting: int, policy: str, steps: int = 300) -> tuple[float, float, int]:
    """(schedule us/step, update us/step, requests waiting at the end)."""
    clock = VirtualClock()
    runner = SimulatedRunner(ConstantStep(), clock, vocab_size=1000, advance_clock=False)
    eng = LLMEngine(EngineConfig(max_num_seqs=32, max_num_batched_tokens=512, block_size=16,
                                 scheduling_policy=policy), executor=runner, clock=clock,
                    num_blocks=4096, vocab_size=1000, max_model_len=1024, keep_step_history=False)
    rng = random.Random(0)
    seq = 0

    def add() -> None:
        nonlocal seq
        seq += 1
        eng.add_request(str(seq), None, SamplingParams(max_tokens=rng.randint(2, 8), ignore_eos=True),
                        prompt_token_ids=[rng.randint(1, 999) for _ in range(rng.randint(8, 64))],
                        arrival_time=clock.now, priority=rng.randint(0, 3))

    for _ in range(n_waiting + 32):
        add()
    t_sched = t_upd = 0.0
    for _ in range(steps):
        t = time.perf_counter()
        so = eng.begin_step(clock.now)
        t_sched += time.perf_counter() - t
        res = runner.execute(so)
        clock.now += res.step_time_s
        t = time.perf_counter()
        outs = eng.finish_step(so, res, clock.now, finished_only=True)
        t_upd += time.perf_counter() - t
        for _ in outs:
            add()
    return t_sched / steps * 1e6, t_upd / steps * 1e6, eng.scheduler.num_waiting


def main() -> None:
    for policy in sys.argv[1:] or ["fcfs", "program-fcfs", "priority"]:
        for n in (10, 1000, 10000):
            best = min(run(n, policy) for _ in range(3))
            print(f"{policy:<13} waiting {n:>6}: schedule {best[0]:8.1f} us/step, update {best[1]:6.1f} us/step "
                  f"(waiting at end {best[2]})", flush=True)


if __name__ == "__main__":
    main()
