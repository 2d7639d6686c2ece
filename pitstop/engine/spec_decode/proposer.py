"""The proposer interface (vLLM's shape): after each step a proposer drafts up to K tokens per running
sequence from what it has seen; the scheduler budgets them and the runner verifies them in the next forward, with
the other requests' prefill chunks and decodes.

Proposers here are model-free (they copy spans of earlier tokens), so drafting costs microseconds and no forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pitstop.request import Request


class Proposer(ABC):
    """Drafts tokens that are likely to follow a request's tokens.

    Lifecycle: ``propose`` is called for a running request after each of its steps (its ``all_token_ids`` then end
    with the last sampled token); ``finish`` once the request has ended (finished, aborted), so per-request state
    can go.
    """

    @abstractmethod
    def propose(self, request: Request, max_tokens: int) -> list[int]:
        """At most ``max_tokens`` (>= 1) draft token ids to follow ``request.all_token_ids``; [] for none."""

    def propose_with_values(self, request: Request, max_tokens: int) -> tuple[list[int], list[float] | None]:
        """``propose`` plus the expected value of each draft token (the probability that it and every draft before
        it are accepted), or None when the proposer has no estimate (the default)."""
        return self.propose(request, max_tokens), None

    def finish(self, request: Request) -> None:
        """The request has ended: drop its per-request state (default: none kept)."""


class PlaceholderProposer(Proposer):
    """The simulator's proposer: ``max_tokens`` placeholder drafts (token 0) every step; the simulated runner's
    acceptance model decides how many are accepted (token values never matter there)."""

    def propose(self, request: Request, max_tokens: int) -> list[int]:
        return [0] * max_tokens
