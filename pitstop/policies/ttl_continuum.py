"""``continuum``: choose the pin TTL from tool-duration statistics (Continuum, arXiv 2511.02230).

When a turn ends in tool ``t``, pin for the tau that maximises

    J(tau) = P(d_t <= tau) * B  -  C(tau)

- ``P(d_t <= tau)``: empirical CDF of tool ``t``'s observed durations; with fewer than
  ``min_samples`` observations, the CDF of all tools; with fewer still, an exponential prior
  ``1 - exp(-tau / prior_mean_s)`` (cold start).
- ``B`` (seconds) = re-prefill time of the context (``context_tokens / prefill_rate``, the rate
  measured online) + the expected queueing delay a re-submitted turn would pay (recent mean).
- ``C(tau)`` (seconds) = ``u**2 * (num_blocks / total_blocks) * tau``: the share of KV memory held,
  for tau seconds, weighted by ``u**2`` (``u`` = pool usage) as a smooth proxy for the chance that
  memory is the binding constraint. An idle pool makes holding free; a full one makes it cost the
  held fraction of the engine's capacity. (Continuum prices held memory by pressure; this weighting
  is pitstop's choice, stated here.)

Candidates for tau are the observed durations themselves (J only changes at them) or, under the
prior, a grid of its quantiles. tau is capped at ``max_ttl_s``. Returns 0 (no pin) when no tau has
J > 0.

The pin is kept for ``tau + o``, where ``o`` (``PinContext.gap_overhead``) is the engine's measured mean
of a gap's time outside the tool (reply delivery, client work, the tool report, the next request's way
in), and it is priced for that long: a client-reported tool duration leaves that time out, and a pin
that lasts exactly the tool's duration expires before the next turn arrives. (pitstop's addition, not
in Continuum; ``o`` is 0 until gaps with reported tool times have been seen.)
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque

from pitstop.policies.ttl_base import PinContext, TTLPolicy


class ContinuumTTL(TTLPolicy):
    """Args:
        min_samples: observations of a tool before its own CDF is trusted.
        prior_mean_s: mean of the exponential cold-start prior, seconds.
        max_ttl_s: upper bound on any TTL, seconds.
        window: observations kept per tool (most recent).
    """

    name = "continuum"

    def __init__(self, min_samples: int = 5, prior_mean_s: float = 1.0, max_ttl_s: float = 60.0,
                 window: int = 2000) -> None:
        self.min_samples = min_samples
        self.prior_mean_s = prior_mean_s
        self.max_ttl_s = max_ttl_s
        self._by_tool: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._all: deque[float] = deque(maxlen=window)

    def observe_tool(self, tool_name: str, duration_s: float) -> None:
        if duration_s < 0 or not math.isfinite(duration_s):
            return
        self._by_tool[tool_name or "unknown"].append(duration_s)
        self._all.append(duration_s)

    def samples(self, tool_name: str) -> list[float] | None:
        """Sorted durations used for ``tool_name`` (its own, else all tools), or None (use the prior)."""
        own = self._by_tool.get(tool_name)
        if own is not None and len(own) >= self.min_samples:
            return sorted(own)
        if len(self._all) >= self.min_samples:
            return sorted(self._all)
        return None

    def benefit_s(self, ctx: PinContext) -> float:
        """B: re-prefill seconds of the context plus the expected queueing delay."""
        return ctx.context_tokens / max(ctx.prefill_rate, 1e-9) + max(ctx.queue_delay, 0.0)

    def cost_rate(self, ctx: PinContext) -> float:
        """dC/dtau: seconds of engine capacity lost per second of pinning."""
        return ctx.usage**2 * ctx.num_blocks / max(ctx.total_blocks, 1)

    def ttl(self, ctx: PinContext) -> float:
        b, c = self.benefit_s(ctx), self.cost_rate(ctx)
        data = self.samples(ctx.tool_name)
        if data is None:
            qs = [0.5, 0.75, 0.9, 0.95, 0.99]
            cands = [(-self.prior_mean_s * math.log(1 - q), q) for q in qs]
        else:
            n = len(data)
            cands = [(d, bisect.bisect_right(data, d) / n) for d in dict.fromkeys(data)]
        o = max(ctx.gap_overhead, 0.0)
        best_tau, best_j = 0.0, 0.0
        for tau, p in cands:
            tau = min(tau, self.max_ttl_s)
            j = p * b - c * (tau + o)
            if j > best_j:
                best_tau, best_j = tau, j
        # a duration equal to tau must still find the pin: keep a small margin
        return min(best_tau * 1.05 + o * 1.5, self.max_ttl_s) + 1e-3 if best_j > 0 else 0.0
