"""How many of the proposed draft tokens to verify next step: the goodput rule of SmartSpec (Liu et al.,
"Optimizing Speculative Decoding for Serving Large Language Models Using Goodput", arXiv 2406.14066).

A verify of ``k`` drafts costs ``k`` more tokens in the step; it pays only if the tokens it is expected to add
outweigh what the larger step costs. Both sides are learned while serving:

- :class:`StepTimeModel`: step time (seconds) as a function of the tokens in the step, from the executor's own
  ``step_time_s`` (measured by the model runner, predicted by the simulator's cost model). On a CPU a step is nearly
  flat in its token count while the weights' streaming dominates (batch-1 decode: 8 more rows cost little) and
  linear once compute dominates (batch 32: every drafted token costs about a decoded one), so drafting that wins
  at batch 1 can lose at batch 32.
- the expected value of each draft token: the probability that it and the drafts before it are accepted. A proposer
  that estimates it gives it (SuffixDecoding's path probabilities, count of a child over count of its parent
  multiplied along the path); otherwise :class:`AcceptanceEstimate` gives, per request, the probability ``a`` that
  a position is accepted given the one before it was (counts of accepted positions and of rejections, with the
  engine-wide rate as the prior), so ``k`` drafts add ``a + a**2 + ... + a**k`` tokens in expectation.

:func:`allocate_drafts` then orders all proposed draft tokens by expected value (a request's ``j``-th draft token
adds ``a**j``) and keeps the prefix of that order with the highest expected tokens per second of the whole step
(its goodput) ``(N + sum of the kept values) / T(n + kept)``, ``N`` the tokens the step emits without drafts and
``n`` its tokens without drafts (SmartSpec grows the drafts greedily while goodput rises; taking the best prefix
is the same on a convex ``T`` and not stopped early by a noisy bump in a learned one).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

EXACT_TOKENS = 32  # token counts up to this get a bucket each; above, buckets grow geometrically (1/8 octave)


def token_bucket(n: int) -> int:
    """The bucket of a step with ``n`` tokens: ``n`` itself up to :data:`EXACT_TOKENS`, else ``n`` rounded down to
    a multiple of ``2 ** (bit_length(n) - 4)`` (at most 8 buckets per doubling)."""
    if n <= EXACT_TOKENS:
        return n
    step = 1 << (n.bit_length() - 4)
    return n // step * step


@dataclass
class StepTimeModel:
    """Step time by token count: an exponential moving average (weight ``alpha`` for the newest step) per
    :func:`token_bucket`; :meth:`predict` interpolates linearly between observed buckets and outside them
    extrapolates proportionally from the nearest (``T(n) = T(b) * n / b``: every token as costly as the average one
    there). Proportional is pessimistic above (a compute-bound guess) and optimistic below, so a draft length never
    tried looks costly rather than free: the engine then drafts less, observes the smaller steps, and learns where the
    cost is flat (a flat guess below the smallest observed size instead kept drafting at that size for ever)."""

    alpha: float = 0.2
    times: dict[int, float] = field(default_factory=dict)
    _keys: list[int] = field(default_factory=list, repr=False)  # the buckets of ``times``, sorted

    def observe(self, num_tokens: int, seconds: float) -> None:
        """Record an executed step of ``num_tokens`` tokens that took ``seconds``."""
        if num_tokens <= 0 or seconds <= 0:
            return
        b = token_bucket(num_tokens)
        old = self.times.get(b)
        if old is None:
            bisect.insort(self._keys, b)
        self.times[b] = seconds if old is None else old + self.alpha * (seconds - old)

    @property
    def largest_observed(self) -> int:
        """The largest bucket observed (tokens); 0 before any step."""
        return self._keys[-1] if self._keys else 0

    def predict(self, num_tokens: int) -> float | None:
        """Estimated seconds of a step of ``num_tokens`` tokens; None before any step was observed (called for
        every draft token the budget weighs, so a binary search over the kept-sorted buckets)."""
        keys = self._keys
        if not keys:
            return None
        if num_tokens <= keys[0]:
            return self.times[keys[0]] * num_tokens / keys[0]
        if num_tokens >= keys[-1]:
            return self.times[keys[-1]] * num_tokens / keys[-1]
        i = bisect.bisect_left(keys, num_tokens)
        lo, hi = keys[i - 1], keys[i]
        return self.times[lo] + (self.times[hi] - self.times[lo]) * (num_tokens - lo) / (hi - lo)


@dataclass
class AcceptanceEstimate:
    """Per-position acceptance probabilities: engine-wide and per request (censored geometric counts: a verify
    of ``d`` drafts with ``a`` accepted adds ``a`` accepted positions and one rejection when ``a < d``); and how
    well a proposer's own estimates (e.g. suffix-tree frequencies) predicted the accepted tokens.

    Attributes:
        prior: the rate assumed before any verify (0.5).
        prior_weight: pseudo-positions the engine-wide rate counts for in a request's estimate.
    """

    prior: float = 0.5
    prior_weight: float = 4.0
    accepted: float = 0.0
    rejected: float = 0.0
    per_request: dict[str, list[int]] = field(default_factory=dict)
    predicted: float = 0.0
    realized: float = 0.0

    def observe_values(self, predicted: float, accepted: int) -> None:
        """A verify of drafts whose proposer predicted ``predicted`` accepted tokens (the sum of their values);
        ``accepted`` were."""
        self.predicted += predicted
        self.realized += accepted

    def calibration(self) -> float:
        """Accepted over predicted tokens of proposer-valued drafts (1 before any, ``prior_weight`` pseudo-tokens
        at 1): the factor a proposer's values are scaled by."""
        w = self.prior_weight
        return (self.realized + w) / (self.predicted + w)

    def observe(self, request_id: str, num_drafts: int, num_accepted: int) -> None:
        """One verify of ``num_drafts`` drafts of ``request_id``, ``num_accepted`` accepted."""
        rej = 1 if num_accepted < num_drafts else 0
        self.accepted += num_accepted
        self.rejected += rej
        counts = self.per_request.setdefault(request_id, [0, 0])
        counts[0] += num_accepted
        counts[1] += rej

    def global_rate(self) -> float:
        """The engine-wide per-position acceptance probability (``prior`` weighted as ``prior_weight`` positions)."""
        w = self.prior_weight
        return (self.accepted + w * self.prior) / (self.accepted + self.rejected + w)

    def rate(self, request_id: str) -> float:
        """The request's per-position acceptance probability, shrunk toward :meth:`global_rate`."""
        a, r = self.per_request.get(request_id, (0, 0))
        w = self.prior_weight
        return (a + w * self.global_rate()) / (a + r + w)

    def forget(self, request_id: str) -> None:
        """Drop an ended request's counts."""
        self.per_request.pop(request_id, None)


def geometric_values(num_drafts: int, rate: float) -> list[float]:
    """Expected value of each draft position under a per-position acceptance ``rate``: ``[rate, rate**2, ...]``."""
    return [rate ** (j + 1) for j in range(num_drafts)]


def allocate_drafts(base_tokens: int, base_outputs: float, drafts: dict[str, list[float]],
                    step_time: StepTimeModel) -> dict[str, int]:
    """How many of each request's drafted tokens to verify (SmartSpec's goodput rule, module docstring).

    Args:
        base_tokens: tokens the next step carries without drafts (decodes plus expected prefill tokens).
        base_outputs: tokens it is expected to emit without drafts (one per decode).
        drafts: request id -> the expected value of each proposed draft token (the probability that it and every
            draft before it are accepted; non-increasing), e.g. :func:`geometric_values` or a suffix tree's path
            probabilities.
        step_time: the learned step time. Before it has data, and when keeping every draft would make a step larger
            than any observed (the cost there is unknown: it is tried once and then known), every draft is kept.

    Returns:
        request id -> draft tokens to keep (0 to the proposed length).
    """
    t0 = step_time.predict(max(base_tokens, 1))
    proposed = sum(len(v) for v in drafts.values())
    if t0 is None or t0 <= 0 or token_bucket(base_tokens + proposed) > step_time.largest_observed:
        return {rid: len(v) for rid, v in drafts.items()}
    # the draft tokens in the order of their expected value
    heap = [(-v[0], rid, 0) for rid, v in drafts.items() if v and v[0] > 0]
    heapq.heapify(heap)
    order: list[tuple[str, int]] = []
    outputs = max(base_outputs, 1e-9)
    best, best_i, expected = outputs / t0, 0, outputs
    while heap:
        neg, rid, j = heapq.heappop(heap)
        order.append((rid, j + 1))
        expected -= neg
        t = step_time.predict(base_tokens + len(order))
        if expected / t >= best:  # the best prefix of the order, so a noisy bump in T does not stop the growth
            best, best_i = expected / t, len(order)
        values = drafts[rid]
        if j + 1 < len(values) and values[j + 1] > 0:
            heapq.heappush(heap, (-values[j + 1], rid, j + 1))
    keep = {rid: 0 for rid in drafts}
    for rid, n in order[:best_i]:
        keep[rid] = n
    return keep
