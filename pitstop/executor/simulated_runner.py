"""The simulated executor: same interface as ``ModelRunner`` (``execute(SchedulerOutput) -> ExecutorResult``),
but no model. The step time comes from a cost model (a ``StepTimeModel``: ``pitstop.sim.cost_models``) and the
sampled tokens are synthetic: output lengths are forced by the workload through ``SamplingParams(max_tokens=n, ignore_eos=True)``,
so token values never decide when a request ends.

With a ``VirtualClock`` and ``advance_clock=True`` the runner moves the clock by the predicted step time, so an
``LLMEngine`` stepping with that clock records first-token and finish times at the end of each step, exactly as
the real engine does with wall time. The cluster simulator (``pitstop.sim.cluster``) keeps the clock itself and
passes ``advance_clock=False``.
"""

from __future__ import annotations

from pitstop.clock import VirtualClock
from pitstop.executor.acceptance import AcceptanceModel
from pitstop.executor.interface import StepTimeModel
from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


class SimulatedRunner:
    """Executor for the simulator.

    Args:
        cost_model: predicts each step's seconds.
        clock: the virtual clock to advance (None: the caller keeps time).
        vocab_size: synthetic tokens are drawn in ``[1, vocab_size)``.
        avoid_token_ids: ids never emitted (EOS, so a request without ``ignore_eos`` still runs to its length).
        advance_clock: move ``clock`` forward by each step's predicted time.
        acceptance: how many draft tokens a speculative verify accepts (a public attribute, may be set after
            construction); None: every draft is rejected (a verify then emits one token).
    """

    def __init__(self, cost_model: StepTimeModel, clock: VirtualClock | None = None, vocab_size: int = 32000,
                 avoid_token_ids: frozenset[int] = frozenset(), advance_clock: bool = True,
                 acceptance: AcceptanceModel | None = None) -> None:
        self.cost_model = cost_model
        self.clock = clock
        self.vocab_size = max(2, int(vocab_size))
        self.avoid = frozenset(avoid_token_ids)
        self.advance_clock = advance_clock and clock is not None
        self.num_steps = 0
        self.busy_s = 0.0
        self.last_step_time_s = 0.0
        self.kv_bytes_per_block = 0  # bytes a migrated KV block carries (set by the simulator from the model shape)
        self.acceptance = acceptance

    def token_for(self, position: int) -> int:
        """The synthetic token sampled at ``position`` (deterministic, never in ``avoid_token_ids``)."""
        tok = 1 + (position * 7919) % (self.vocab_size - 1)
        while tok in self.avoid:
            tok = 1 + tok % (self.vocab_size - 1)
        return tok

    def execute(self, scheduler_output: SchedulerOutput) -> ExecutorResult:
        dt = self.cost_model.step_time(scheduler_output)
        sampled = {}
        spec: dict[str, list[int]] = {}
        modulus, avoid = self.vocab_size - 1, self.avoid
        for s in scheduler_output.scheduled:
            if s.draft_token_ids:  # a speculative verify: the acceptance model draws how many drafts pass
                k = len(s.draft_token_ids)
                accepted = self.acceptance.num_accepted(k) if self.acceptance is not None else 0
                first = s.start + s.num_tokens - k
                spec[s.request.request_id] = [self.token_for(first + j) for j in range(accepted + 1)]
            elif s.sample:
                pos = s.start + s.num_tokens
                tok = 1 + (pos * 7919) % modulus  # token_for(pos) without the call (runs every step)
                sampled[s.request.request_id] = tok if tok not in avoid else self.token_for(pos)
        self.num_steps += 1
        self.busy_s += dt
        self.last_step_time_s = dt
        if self.advance_clock:
            self.clock.advance(dt)
        return ExecutorResult(sampled, {}, dt, spec)  # logprobs given: no default_factory call
