"""The drafting step of speculative decoding, run by the engine after each step: every running sequence that is
decoding gets its draft tokens for the next step (``Request.spec_token_ids``), cut to what the request may still
emit, under structured outputs to the prefix its grammar accepts, and (``draft_budget="goodput"``) to the tokens
that pay for the larger step (``draft_budget``)."""

from __future__ import annotations

from pitstop.config import SpeculativeConfig
from pitstop.engine.spec_decode.draft_budget import (AcceptanceEstimate, StepTimeModel, allocate_drafts,
                                                     geometric_values)
from pitstop.engine.spec_decode.metrics import SpecDecodeStats
from pitstop.engine.spec_decode.proposer import Proposer
from pitstop.engine.spec_decode.registry import build_proposer
from pitstop.request import Request
from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


class Drafter:
    """Args:
        config: the speculative-decoding settings.
        max_model_len: context limit (tokens); a draft never runs past it.
        proposer: the proposer (None: ``build_proposer(config)``).

    Raises:
        ValueError: the proposer cannot be built (see ``build_proposer``).
    """

    def __init__(self, config: SpeculativeConfig, max_model_len: int, proposer: Proposer | None = None) -> None:
        self.config = config
        self.num_speculative_tokens = config.num_speculative_tokens
        self.max_model_len = max_model_len
        self.proposer = proposer or build_proposer(config)
        self.stats = SpecDecodeStats()
        self.step_time = StepTimeModel()
        self.acceptance = AcceptanceEstimate()
        self._active: dict[str, Request] = {}  # requests the proposer holds state for
        self._prefill_tokens = 0  # the last step's prefill tokens: the next step likely carries as many
        self._valued: dict[str, list[float]] = {}  # the proposer's values of the drafts sent to the next step

    def propose(self, running: list[Request]) -> None:
        """Set ``spec_token_ids`` of each running request that decodes next (all its known tokens but the last
        computed); release the proposer's state of requests that ended."""
        self._release_ended()
        self._valued.clear()
        proposed_values: dict[str, list[float]] = {}  # the proposer's expected values of this step's drafts
        k_max, mml, proposer, active = self.num_speculative_tokens, self.max_model_len, self.proposer, self._active
        limit = self.config.disable_by_batch_size
        off = limit is not None and len(running) > limit
        decoding = []
        for req in running:
            if req.num_computed_tokens != len(req.all_token_ids) - 1:
                req.spec_token_ids = []
                continue
            decoding.append(req)
            if off or not req.sampling_params.speculative:
                req.spec_token_ids = []
                continue
            k = min(k_max, req.max_tokens - len(req.output_token_ids) - 1, mml - len(req.all_token_ids) - 1)
            if k < 1:
                req.spec_token_ids = []
                continue
            active[req.request_id] = req
            drafts, values = proposer.propose_with_values(req, k)
            if drafts and req.grammar is not None:
                drafts = req.grammar.valid_prefix(req.output_token_ids, drafts)
            req.spec_token_ids = drafts
            if values is not None:
                proposed_values[req.request_id] = values
        if self.config.draft_budget == "goodput" and any(r.spec_token_ids for r in decoding):
            self._apply_budget(decoding, proposed_values)

    def _apply_budget(self, decoding: list[Request], proposed_values: dict[str, list[float]]) -> None:
        """Cut the drafts to the goodput-best allocation (``draft_budget.allocate_drafts``)."""
        drafts = {}
        for r in decoding:
            if r.spec_token_ids:
                values = proposed_values.get(r.request_id)
                n = len(r.spec_token_ids)  # a grammar may have cut the draft
                if values is not None and len(values) >= n:  # the proposer's estimate, calibrated by the outcomes
                    c = self.acceptance.calibration()
                    drafts[r.request_id] = [min(1.0, v * c) for v in values[:n]]
                    self._valued[r.request_id] = values[:n]
                else:
                    drafts[r.request_id] = geometric_values(n, self.acceptance.rate(r.request_id))
        keep = allocate_drafts(len(decoding) + self._prefill_tokens, len(decoding), drafts, self.step_time)
        for r in decoding:
            if r.spec_token_ids:
                r.spec_token_ids = r.spec_token_ids[:keep[r.request_id]]

    def _release_ended(self) -> None:
        ended = [req for req in self._active.values() if req.is_finished]
        for req in ended:
            del self._active[req.request_id]
            self.proposer.finish(req)
            self.acceptance.forget(req.request_id)

    def observe(self, so: SchedulerOutput, result: ExecutorResult) -> None:
        """Count the step's verifies and learn its time and acceptances (call after ``Scheduler.update``)."""
        self.step_time.observe(so.num_batched_tokens, result.step_time_s)
        self._prefill_tokens = so.num_prefill_tokens
        for s in so.scheduled:
            if s.draft_token_ids:
                emitted = result.spec_tokens.get(s.request.request_id)
                if emitted is not None:
                    drafted, accepted = len(s.draft_token_ids), len(emitted) - 1
                    self.stats.observe(drafted, accepted, s.request.num_new_tokens)
                    self.acceptance.observe(s.request.request_id, drafted, min(accepted, drafted))
                    values = self._valued.get(s.request.request_id)
                    if values is not None:
                        self.acceptance.observe_values(sum(values[:drafted]), min(accepted, drafted))

