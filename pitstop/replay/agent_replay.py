"""Closed-loop replay state of agent programs, whatever runs their requests.

Shared by ``pitstop bench agents`` (in-process engine, virtual-clock engine, HTTP) and ``pitstop simulate
--workload agents`` (the cluster simulator).

A program's turn ``k + 1`` is sent when turn ``k`` has finished and its tool time has elapsed; its prompt is turn
``k``'s prompt + the tokens turn ``k`` actually generated + the turn's new tokens (random ids, seeded per program),
so the prefix reuse between turns is what a real agent produces. ``ProgramReplay`` holds that state (prompt
builders, per-turn records) independently of what runs the requests: a backend calls ``start_turn`` when a turn's
time has come and ``finish_turn`` when the turn's request has finished, and gets back when the next turn is due.
Times are seconds from the start of the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from pitstop.workloads.agent_program import AgentProgram


@dataclass
class TurnRecord:
    """One turn as measured (times in seconds from the run's start)."""

    turn: int
    prompt_len: int
    new_tokens: int
    max_tokens: int
    output_len: int = 0
    tool_name: str | None = None
    tool_time_s: float = 0.0
    arrival_s: float = 0.0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    cached_tokens: int = 0
    computed_prompt_tokens: int = 0
    preemptions: int = 0
    ok: bool = True
    error: str = ""

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.first_scheduled_s is None else self.first_scheduled_s - self.arrival_s

    @property
    def reprefilled_tokens(self) -> int:
        """Prompt tokens computed beyond the turn's new tokens (context that was not reused)."""
        return max(0, self.computed_prompt_tokens - self.new_tokens)


@dataclass
class ProgramRecord:
    program_id: str
    start_s: float
    num_turns_planned: int
    turns: list[TurnRecord] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (len(self.turns) == self.num_turns_planned and all(t.ok for t in self.turns)
                and self.turns[-1].finished_s is not None)

    @property
    def jct_s(self) -> float | None:
        return self.turns[-1].finished_s - self.start_s if self.done else None

    @property
    def tool_time_s(self) -> float:
        return sum(t.tool_time_s for t in self.turns[:-1])


def token_range(vocab_size: int) -> tuple[int, int]:
    """Ids to draw prompt tokens from: skip the low ids (special tokens in most vocabularies)."""
    lo = 100 if vocab_size > 1000 else max(1, vocab_size // 8)
    return lo, vocab_size - 1


class PromptBuilder:
    """Per program: the growing context (token ids) and a seeded RNG for the new tokens of each turn."""

    def __init__(self, program: AgentProgram, seed: int, vocab_size: int) -> None:
        self.rng = random.Random(f"{seed}:{program.program_id}")
        self.lo, self.hi = token_range(vocab_size)
        self.context: list[int] = []

    def next_prompt(self, new_tokens: int) -> list[int]:
        self.context.extend(self.rng.randint(self.lo, self.hi) for _ in range(new_tokens))
        return list(self.context)

    def add_output(self, ids: Sequence[int]) -> None:
        self.context.extend(int(t) for t in ids)


@dataclass
class TurnRequest:
    """What a backend sends for one turn.

    Attributes:
        request_id: ``"<program_id>:<turn>"``.
        program: index of the program in the replay. turn: turn index.
        prompt: token ids. max_tokens: output length (forced with ``ignore_eos``).
        program_id / is_last_turn / tool_name: the engine's program hints.
        prev_tool: (tool name, seconds) of the tool run that preceded this turn (None for turn 0), for
            ``LLMEngine.report_tool_result``.
    """

    request_id: str
    program: int
    turn: int
    prompt: list[int]
    max_tokens: int
    program_id: str
    is_last_turn: bool
    tool_name: str | None
    prev_tool: tuple[str, float] | None


class ProgramReplay:
    """Turn-by-turn state of a closed-loop replay of ``programs`` (program ``i`` starts at ``arrivals[i]`` s)."""

    def __init__(self, programs: Sequence[AgentProgram], arrivals: Sequence[float], seed: int,
                 vocab_size: int) -> None:
        if len(arrivals) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(arrivals)} arrival times")
        self.programs = list(programs)
        self.records = [ProgramRecord(p.program_id, arrivals[i], p.num_turns) for i, p in enumerate(programs)]
        self.builders = [PromptBuilder(p, seed, vocab_size) for p in programs]
        self.num_done = 0

    def first_turns(self) -> list[tuple[float, int, int]]:
        """``(time s, program index, turn 0)`` of every program's first turn."""
        return [(rec.start_s, i, 0) for i, rec in enumerate(self.records)]

    def start_turn(self, i: int, k: int, arrival_s: float) -> TurnRequest:
        """Build turn ``k`` of program ``i`` (sent at ``arrival_s``) and open its record."""
        prog, rec = self.programs[i], self.records[i]
        turn = prog.turns[k]
        prompt = self.builders[i].next_prompt(turn.new_input_tokens)
        rec.turns.append(TurnRecord(k, len(prompt), turn.new_input_tokens if k else len(prompt),
                                    turn.output_tokens, tool_name=turn.tool_name, tool_time_s=turn.tool_time_s,
                                    arrival_s=arrival_s))
        prev = prog.turns[k - 1] if k else None
        return TurnRequest(f"{prog.program_id}:{k}", i, k, prompt, turn.output_tokens, prog.program_id,
                           k == prog.num_turns - 1, turn.tool_name,
                           None if prev is None else (prev.tool_name or "unknown", prev.tool_time_s))

    def finish_turn(self, i: int, k: int, output_ids: Sequence[int], finished_s: float, *, ok: bool = True,
                    first_scheduled_s: float | None = None, first_token_s: float | None = None,
                    cached_tokens: int = 0, computed_prompt_tokens: int = 0, preemptions: int = 0) -> float | None:
        """Record turn ``k`` of program ``i`` as finished (times in s from the run's start) and append its output to
        the program's context. Returns when the next turn is due (``finished_s`` + tool time), or None when the
        program is over (last turn, or this turn failed)."""
        prog, rec = self.programs[i], self.records[i]
        tr = rec.turns[k]
        tr.output_len = len(output_ids)
        tr.first_scheduled_s, tr.first_token_s, tr.finished_s = first_scheduled_s, first_token_s, finished_s
        tr.cached_tokens, tr.computed_prompt_tokens, tr.preemptions = cached_tokens, computed_prompt_tokens, preemptions
        tr.ok = ok
        self.builders[i].add_output(output_ids)
        if k + 1 < prog.num_turns and ok:
            return finished_s + prog.turns[k].tool_time_s
        self.num_done += 1
        return None
