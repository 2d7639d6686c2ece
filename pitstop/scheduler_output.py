"""What the scheduler hands the executor for one step, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pitstop.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step.

    Attributes:
        request: the request (same process; the executor reads its tokens and sampling params).
        num_tokens: tokens computed this step (a prefill chunk, or 1 for a decode).
        start: ``num_computed_tokens`` before the step: the new tokens are positions
            ``start .. start + num_tokens - 1``.
        block_ids: the request's block table after allocation (covers ``start + num_tokens`` tokens); shared
            with the KV manager until the request's blocks change: read it, never mutate it.
        sample: True when the step reaches the end of the known tokens, so a token is sampled.
        draft_token_ids: speculative draft tokens verified this step (empty: none). They follow the request's last
            known token and are counted in ``num_tokens`` (a verify computes ``1 + len(draft_token_ids)`` tokens,
            positions ``start ..``); ``sample`` is then set and the executor returns the accepted drafts plus one
            token in ``ExecutorResult.spec_tokens``.
    """

    request: Request
    num_tokens: int
    start: int
    block_ids: list[int]
    sample: bool
    draft_token_ids: list[int] | tuple = ()

    @property
    def is_prefill(self) -> bool:
        return self.num_tokens > 1 and not self.draft_token_ids

    @property
    def num_known_tokens(self) -> int:
        """Tokens of the request's own sequence computed this step (``num_tokens`` less the drafts)."""
        return self.num_tokens - len(self.draft_token_ids)


@dataclass(slots=True)
class StructuredBatch:
    """The step's grammar constraints (structured outputs), built by the engine only when some scheduled
    sequence that samples has a grammar.

    Attributes:
        bitmask: ``[R, ceil(V / 32)]`` int32 numpy array: bit ``j`` of word ``w`` in row ``r`` set when token
            ``32 * w + j`` is allowed; tokens past the last word are not allowed.
        rows: request id -> its row in ``bitmask``; requests not here are unconstrained.
    """

    bitmask: Any
    rows: dict[str, int]


@dataclass(slots=True)
class SchedulerOutput:
    """A step's batch: prefill chunks and speculative verifies (query length > 1) first, then decodes (query
    length 1).

    ``structured``: the grammar bitmask of the constrained sequences that sample this step (None: none)."""

    scheduled: list[ScheduledRequest]
    preempted_ids: list[str] = field(default_factory=list)
    structured: StructuredBatch | None = None

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def num_prefill_tokens(self) -> int:
        n = 0
        for s in self.scheduled:
            if s.num_tokens > 1 and not s.draft_token_ids:
                n += s.num_tokens
        return n

    @property
    def num_decode_tokens(self) -> int:
        """Decode tokens: one per plain decode, ``1 + drafts`` per speculative verify."""
        return sum([s.num_tokens for s in self.scheduled if s.num_tokens <= 1 or s.draft_token_ids])

    @property
    def num_draft_tokens(self) -> int:
        return sum([len(s.draft_token_ids) for s in self.scheduled])

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class ExecutorResult:
    """Sampled tokens of one step.

    Attributes:
        sampled: request id -> sampled token id, for each scheduled request with ``sample`` set and no drafts.
        logprobs: request id -> per-token logprob record (dict token id -> Logprob), when requested; for a
            speculative verify, a list of such records, one per token in ``spec_tokens``.
        step_time_s: seconds the executor spent (measured, or predicted by a cost model).
        spec_tokens: request id -> the tokens a speculative verify emits, for each scheduled request with drafts:
            its accepted drafts (a prefix of them) followed by one token sampled from the target model (the
            correction at the first rejected position, or the bonus token when all were accepted).
    """

    sampled: dict[str, int]
    logprobs: dict[str, Any] = field(default_factory=dict)
    step_time_s: float = 0.0
    spec_tokens: dict[str, list[int]] = field(default_factory=dict)
