"""A request inside the engine: its tokens, progress, state and timings.

State transitions live in one place (``RequestStatus`` and ``Scheduler``):

    WAITING --admit--> RUNNING --preempt--> PREEMPTED (queued again, recomputed from the prefix cache)
    RUNNING --stop/length--> FINISHED_STOPPED / FINISHED_LENGTH
    any --abort--> FINISHED_ABORTED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pitstop.outputs import RequestMetrics
from pitstop.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def finished(self) -> bool:
        return self._value_ in _FINISHED_VALUES  # by value: hashing a member runs Enum.__hash__ in Python

    @property
    def finish_reason(self) -> str | None:
        return _REASONS.get(self)


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED}
_FINISHED_VALUES = frozenset(s.value for s in _FINISHED)
_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort"}


@dataclass(eq=False)
class Request:
    """One sequence being generated.

    Attributes:
        request_id: unique id inside the engine (``parent_id`` + ``-i`` for the i-th of ``n`` completions).
        prompt_token_ids: prompt tokens.
        sampling_params: how to sample.
        arrival_time: seconds, engine clock.
        max_tokens: resolved output limit (tokens).
        eos_token_ids: tokens that stop generation unless ``ignore_eos``.
        num_computed_tokens: tokens whose K/V are in the KV cache (prompt and output).
        generator: a seeded ``torch.Generator`` when ``sampling_params.seed`` is set (made by the model runner at
            the first sampled token, seed ``seed + index``; None until then).
        wait_for: id of a sibling whose prefill must finish before this one is admitted (``n`` > 1
            completions then share the prompt's blocks through the prefix cache).
        program_id / is_last_turn / tool_name / priority / cache_salt: scheduling hints (the program
            this turn belongs to, whether it is its last, the tool the client runs after it).
        grammar: its structured-output state (``pitstop.engine.structured_output.RequestGrammar``) while it has
            ``sampling_params.structured_outputs`` and has not ended; None otherwise. The scheduler admits it only
            once ``grammar.ready()`` and frees it when the request ends.
        spec_token_ids: draft tokens a speculative proposer made after the last step (verified in the next step
            the request is scheduled in; never part of ``all_token_ids`` unless accepted).
        num_new_tokens: output tokens the last step appended (1, or more after a speculative verify).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    max_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    arrival_seq: int = 0
    parent_id: str | None = None
    index: int = 0
    generator: Any = None
    wait_for: str | None = None
    program_id: str | None = None
    is_last_turn: bool = True
    tool_name: str | None = None
    priority: int = 0
    cache_salt: str | None = None
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    stop_reason: str | int | None = None
    grammar: Any = None
    spec_token_ids: list[int] = field(default_factory=list)
    num_new_tokens: int = 0
    metrics: RequestMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status._value_ in _FINISHED_VALUES  # = status.finished, one call less (every request, every step)

    def append_output(self, token_id: int, logprobs: Any = None) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if logprobs is not None:
            self.logprobs.append(logprobs)
