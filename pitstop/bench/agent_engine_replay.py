"""Replays agent programs closed-loop on an in-process ``LLMEngine`` (``pitstop bench agents --backend engine|sim``).

The engine runs a real model on the wall clock, or the simulator's step times on a virtual clock.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Callable, Sequence

from pitstop.replay.agent_replay import ProgramRecord, ProgramReplay
from pitstop.sampling_params import SamplingParams
from pitstop.workloads.agent_program import AgentProgram


def call_optional(obj: Any, name: str, *args: Any) -> Any:
    """``obj.name(*args)``, or None if ``obj`` has no such method or it raises KeyError / ValueError."""
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except (KeyError, ValueError):
        return None


def _add_turn(engine: Any, rid: str, prompt: list[int], max_tokens: int, arrival: float, program_id: str,
              last: bool, tool_name: str | None) -> None:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    engine.add_request(rid, None, params, prompt_token_ids=prompt, arrival_time=arrival, program_id=program_id,
                       is_last_turn=last, tool_name=tool_name)


def run_engine_backend(engine, programs: Sequence[AgentProgram], arrivals: Sequence[float], seed: int = 0,
                       report_tool_results: bool = True, timeout_s: float | None = None,
                       sleep: Callable[[float], None] = time.sleep,
                       progress: Callable[[str], None] | None = None) -> tuple[list[ProgramRecord], float]:
    """Replay ``programs`` (program ``i`` starts at ``arrivals[i]`` s) on an ``LLMEngine``.

    Returns (records, makespan in s). Requests still running at ``timeout_s`` are aborted (their programs
    are reported as unfinished). Times are the engine's clock (``engine.clock``) minus the start.
    """
    clock = engine.clock
    t0 = clock()
    replay = ProgramReplay(programs, arrivals, seed, engine.vocab_size or 32000)
    records = replay.records
    events: list[tuple[float, int, int, int]] = []  # (abs time, seq, program index, turn)
    seq = 0
    for at, i, k in replay.first_turns():
        heapq.heappush(events, (t0 + at, seq, i, k))
        seq += 1
    inflight: dict[str, tuple[int, int]] = {}
    try:
        while events or inflight:
            now = clock()
            if timeout_s is not None and now - t0 > timeout_s:
                break
            while events and events[0][0] <= now:
                at, _, i, k = heapq.heappop(events)
                tq = replay.start_turn(i, k, at - t0)
                if tq.prev_tool is not None and report_tool_results:
                    call_optional(engine, "report_tool_result", tq.program_id, *tq.prev_tool)
                _add_turn(engine, tq.request_id, tq.prompt, tq.max_tokens, at, tq.program_id, tq.is_last_turn,
                          tq.tool_name)
                inflight[tq.request_id] = (i, k)
            if engine.has_unfinished_requests():
                steps_before = len(engine.step_history)
                outs = engine.step()
                if not outs and len(engine.step_history) == steps_before:
                    # nothing could run (e.g. waiting for pinned KV to expire): let time pass, a virtual
                    # clock included, instead of spinning
                    sleep(0.001)
                for out in outs:
                    if not out.finished or out.request_id not in inflight:
                        continue
                    i, k = inflight.pop(out.request_id)
                    prog, rec, m = programs[i], records[i], out.metrics
                    fin = m.finished_time if m.finished_time is not None else clock()
                    nxt = replay.finish_turn(
                        i, k, list(out.outputs[0].token_ids), fin - t0,
                        ok=out.outputs[0].finish_reason in ("length", "stop"),
                        first_scheduled_s=None if m.first_scheduled_time is None else m.first_scheduled_time - t0,
                        first_token_s=None if m.first_token_time is None else m.first_token_time - t0,
                        cached_tokens=m.num_cached_tokens, computed_prompt_tokens=m.num_computed_prompt_tokens,
                        preemptions=m.num_preemptions)
                    stats = call_optional(engine, "program_stats", prog.program_id)
                    if isinstance(stats, dict):  # None once the engine has ended the program
                        rec.stats = dict(stats)
                    if nxt is not None:
                        heapq.heappush(events, (t0 + nxt, seq, i, k + 1))
                        seq += 1
                    else:
                        call_optional(engine, "end_program", prog.program_id)
                        if progress:
                            progress(f"{replay.num_done}/{len(programs)} programs done "
                                     f"(t={clock() - t0:.0f}s)")
            elif events:
                sleep(max(0.0, min(events[0][0] - clock(), 0.05)))
    finally:
        if inflight:
            engine.abort_request(list(inflight))
            while engine.has_unfinished_requests():
                engine.step()
            for i, k in inflight.values():
                records[i].turns[k].ok = False
                records[i].turns[k].error = "aborted (timeout)"
        for p in programs:
            call_optional(engine, "end_program", p.program_id)
    return records, clock() - t0
