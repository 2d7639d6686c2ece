"""Acceptance models of the simulated executor: how many of a verify's K draft tokens the target would accept.

The simulator has no model, so a verify's outcome is drawn: with per-position acceptance rates ``a_j`` (draft ``j``
accepted given drafts ``0..j-1`` were), the accepted length is the first rejected position. A constant rate
``alpha`` gives the geometric law used in speculative-decoding analyses (Leviathan et al., ICML'23: expected tokens
per verify ``(1 - alpha^(K+1)) / (1 - alpha)``).
"""

from __future__ import annotations

import random


class AcceptanceModel:
    """Per-position acceptance rates, with a seeded generator (reproducible runs).

    Args:
        rates: ``rates[j]``: probability that draft ``j`` is accepted given the ones before were; positions past the
            list use its last rate. Each in [0, 1].
        seed: the generator's seed.

    Raises:
        ValueError: no rate, or one outside [0, 1].
    """

    def __init__(self, rates: list[float] | float, seed: int = 0) -> None:
        rates = [float(rates)] if isinstance(rates, (int, float)) else [float(r) for r in rates]
        if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"acceptance rates must be a non-empty list of values in [0, 1], got {rates!r}")
        self.rates = rates
        self._rng = random.Random(seed)

    def num_accepted(self, num_drafts: int) -> int:
        """Accepted drafts (0 .. ``num_drafts``) of one verify."""
        rates, last, draw = self.rates, self.rates[-1], self._rng.random
        for j in range(num_drafts):
            if draw() >= (rates[j] if j < len(rates) else last):
                return j
        return num_drafts

    def expected_tokens(self, num_drafts: int) -> float:
        """Expected tokens a verify emits (accepted drafts + 1)."""
        total, p = 1.0, 1.0
        for j in range(num_drafts):
            p *= self.rates[j] if j < len(self.rates) else self.rates[-1]
            total += p
        return total
