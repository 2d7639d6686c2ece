"""Agent programs: multi-turn LLM-call chains with tool calls between turns, the unit of ``pitstop bench agents``.

An ``AgentProgram`` is an ordered list of ``AgentTurn``. Turn ``k``'s prompt is turn ``k-1``'s prompt, plus
turn ``k-1``'s output, plus ``new_input_tokens`` (the tool result / user message the agent appends), so the
prefix reuse between turns is exactly what a real agent produces. After every non-final turn the agent runs
``tool_name`` for ``tool_time_s`` seconds and then sends the next turn.

Loaders (``agentcgroup.py``, ``tracelab.py``) produce programs at trace scale; ``scale_programs`` multiplies
token counts by ``token_scale`` and tool times by ``time_scale`` and clips each program to a model context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from pitstop.workloads.lengths import percentile


@dataclass(frozen=True)
class AgentTurn:
    """One LLM call of a program.

    Attributes:
        new_input_tokens: tokens appended to the context before this call (turn 0: the whole initial prompt).
        output_tokens: tokens the call generates (>= 1).
        tool_name: the tool the agent runs after this call ("unknown" if not known; None after the last turn).
        tool_time_s: seconds the tool runs before the next call (0.0 after the last turn).
    """

    new_input_tokens: int
    output_tokens: int
    tool_name: str | None = "unknown"
    tool_time_s: float = 0.0


@dataclass
class AgentProgram:
    """One agent session: ``program_id``, its turns, and where it came from (``source``: trace key)."""

    program_id: str
    turns: list[AgentTurn]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def prompt_len(self, k: int) -> int:
        """Prompt length of turn ``k``: all new tokens of turns ``0..k`` plus the outputs of turns ``0..k-1``."""
        return sum(t.new_input_tokens for t in self.turns[:k + 1]) + sum(t.output_tokens for t in self.turns[:k])

    def context_len(self) -> int:
        """Tokens in the context after the last turn (prompt + output of the final turn)."""
        return sum(t.new_input_tokens + t.output_tokens for t in self.turns)

    def total_tool_time_s(self) -> float:
        """Sum of the tool times between turns (the last turn's is not counted)."""
        return sum(t.tool_time_s for t in self.turns[:-1])


def finalize(turns: list[AgentTurn]) -> list[AgentTurn]:
    """Mark the last turn as final: no tool after it."""
    if turns:
        turns[-1] = replace(turns[-1], tool_name=None, tool_time_s=0.0)
    return turns


@dataclass(frozen=True)
class ScaleInfo:
    """What ``scale_programs`` did, for reports."""

    token_scale: float
    time_scale: float
    max_model_len: int
    max_turns: int | None
    turns_in: int
    turns_out: int
    turns_cut_by_context: int
    turns_cut_by_max_turns: int
    programs_cut_by_context: int
    first_turns_clipped: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def scale_programs(programs: Sequence[AgentProgram], token_scale: float, time_scale: float,
                   max_model_len: int, max_turns: int | None = None,
                   max_tool_time_s: float | None = None) -> tuple[list[AgentProgram], ScaleInfo]:
    """Scale token counts and tool times, and clip programs to ``max_model_len``.

    Every token count becomes ``max(1, round(n * token_scale))`` (new input tokens of turns after the first
    may not vanish: an agent always appends something); every tool time is multiplied by ``time_scale`` (then
    capped at ``max_tool_time_s`` if given). A program keeps turns while its turn's prompt + output fits in
    ``max_model_len`` (the engine needs prompt + max_tokens <= max_model_len); the first turn that does not
    fit and all later ones are cut (counted in ``turns_cut_by_context``). A first turn that alone does not
    fit is clipped to fit (``first_turns_clipped``). ``max_turns`` keeps at most that many turns.
    """
    if token_scale <= 0 or time_scale < 0:
        raise ValueError(f"token_scale must be > 0 and time_scale >= 0, got {token_scale}, {time_scale}")
    out: list[AgentProgram] = []
    turns_in = turns_out = cut_ctx = cut_max = progs_cut = first_clipped = 0
    for p in programs:
        turns_in += len(p.turns)
        new_turns: list[AgentTurn] = []
        ctx = 0
        for k, t in enumerate(p.turns):
            if max_turns is not None and k >= max_turns:
                cut_max += len(p.turns) - k
                break
            new = max(1, round(t.new_input_tokens * token_scale))
            outp = max(1, round(t.output_tokens * token_scale))
            tool = t.tool_time_s * time_scale
            if max_tool_time_s is not None:
                tool = min(tool, max_tool_time_s)
            if k == 0 and new + outp > max_model_len:
                outp = min(outp, max(1, max_model_len // 8))
                new = max(1, max_model_len - outp - 1)
                first_clipped += 1
            if ctx + new + outp > max_model_len:
                cut_ctx += len(p.turns) - k
                progs_cut += 1
                break
            ctx += new + outp
            new_turns.append(AgentTurn(new, outp, t.tool_name, tool))
        turns_out += len(new_turns)
        if new_turns:
            out.append(AgentProgram(p.program_id, finalize(new_turns), p.source, dict(p.meta)))
    info = ScaleInfo(token_scale, time_scale, max_model_len, max_turns, turns_in, turns_out, cut_ctx, cut_max,
                     progs_cut, first_clipped)
    return out, info


def sample_programs(programs: Sequence[AgentProgram], n: int | None, seed: int = 0,
                    min_turns: int = 1) -> list[AgentProgram]:
    """A seeded sample of ``n`` programs with at least ``min_turns`` turns (all of them if ``n`` is None);
    with replacement (ids suffixed ``#i``) when ``n`` exceeds what is available."""
    pool = [p for p in programs if p.num_turns >= min_turns]
    if not pool:
        raise ValueError(f"no program has >= {min_turns} turns")
    if n is None or n == len(pool):
        return list(pool)
    rng = random.Random(seed)
    if n < len(pool):
        return rng.sample(pool, n)
    picked = []
    for i in range(n):
        p = rng.choice(pool)
        picked.append(AgentProgram(f"{p.program_id}#{i}", list(p.turns), p.source, dict(p.meta)))
    return picked


def poisson_program_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Program start times (s): the first at 0, then exponential gaps with mean ``1/rate`` (seeded)."""
    if rate <= 0:
        raise ValueError(f"program rate must be > 0, got {rate}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def summarize_programs(programs: Sequence[AgentProgram]) -> dict:
    """Counts and percentiles of a program set (tokens, seconds), for reports."""
    if not programs:
        return {"num_programs": 0}
    turns = [p.num_turns for p in programs]
    first = [p.turns[0].new_input_tokens for p in programs]
    later_new = [t.new_input_tokens for p in programs for t in p.turns[1:]]
    outs = [t.output_tokens for p in programs for t in p.turns]
    tools = [t.tool_time_s for p in programs for t in p.turns[:-1]]
    ctx = [p.context_len() for p in programs]

    def pct(xs):
        return {"p50": percentile(xs, 50), "p90": percentile(xs, 90), "max": max(xs)} if xs else {}

    return {
        "num_programs": len(programs), "num_turns": sum(turns), "turns_per_program": pct(turns),
        "first_prompt_tokens": pct(first), "new_tokens_per_later_turn": pct(later_new),
        "output_tokens_per_turn": pct(outs), "tool_time_s": pct(tools), "final_context_tokens": pct(ctx),
        "total_tool_time_s": sum(tools),
        "total_prompt_tokens_if_no_reuse": sum(p.prompt_len(k) for p in programs for k in range(p.num_turns)),
        "total_new_tokens": sum(t.new_input_tokens for p in programs for t in p.turns),
        "total_output_tokens": sum(outs),
    }
