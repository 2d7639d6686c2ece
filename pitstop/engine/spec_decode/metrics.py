"""Counters of speculative decoding: drafted and accepted tokens, overall and per draft position."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodeStats:
    """Counts since the engine started.

    Attributes:
        num_verifies: sequence-steps that verified at least one draft token.
        num_draft_tokens: draft tokens verified.
        num_accepted_tokens: draft tokens accepted.
        num_emitted_tokens: tokens the verifies appended (accepted drafts plus the target's token; less when a stop
            condition cut a run).
        drafted_per_position / accepted_per_position: index ``j``: verifies with a draft at position ``j`` (0-based),
            and how many of those accepted it.
    """

    num_verifies: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)

    def observe(self, num_drafts: int, num_accepted: int, num_emitted: int) -> None:
        """One verify: ``num_drafts`` drafted, the first ``num_accepted`` accepted, ``num_emitted`` tokens appended."""
        self.num_verifies += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        self.num_emitted_tokens += num_emitted
        grow = num_drafts - len(self.drafted_per_position)
        if grow > 0:
            self.drafted_per_position += [0] * grow
            self.accepted_per_position += [0] * grow
        for j in range(num_drafts):
            self.drafted_per_position[j] += 1
        for j in range(num_accepted):
            self.accepted_per_position[j] += 1

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens (0 when nothing was drafted)."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens appended per verify, the target's own token included (vLLM's mean acceptance length; 1 = no
        draft accepted)."""
        return (self.num_accepted_tokens + self.num_verifies) / self.num_verifies if self.num_verifies else 0.0

    def acceptance_rate_per_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    def as_dict(self) -> dict:
        return {"spec_num_verifies": self.num_verifies, "spec_num_draft_tokens": self.num_draft_tokens,
                "spec_num_accepted_tokens": self.num_accepted_tokens,
                "spec_num_emitted_tokens": self.num_emitted_tokens,
                "spec_acceptance_rate": self.acceptance_rate, "spec_mean_accepted_length": self.mean_accepted_length,
                "spec_acceptance_rate_per_position": self.acceptance_rate_per_position()}
