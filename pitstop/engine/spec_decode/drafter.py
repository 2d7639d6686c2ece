"""The drafting step of speculative decoding, run by the engine after each step: every running sequence that is
decoding gets its draft tokens for the next step (``Request.spec_token_ids``), cut to what the request may still
emit and, under structured outputs, to the prefix its grammar accepts."""

from __future__ import annotations

from pitstop.config import SpeculativeConfig
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
        self._active: dict[str, Request] = {}  # requests the proposer holds state for

    def propose(self, running: list[Request]) -> None:
        """Set ``spec_token_ids`` of each running request that decodes next (all its known tokens but the last
        computed); release the proposer's state of requests that ended."""
        self._release_ended()
        k_max, mml, proposer, active = self.num_speculative_tokens, self.max_model_len, self.proposer, self._active
        for req in running:
            if req.num_computed_tokens != len(req.all_token_ids) - 1 or not req.sampling_params.speculative:
                req.spec_token_ids = []
                continue
            k = min(k_max, req.max_tokens - len(req.output_token_ids) - 1, mml - len(req.all_token_ids) - 1)
            if k < 1:
                req.spec_token_ids = []
                continue
            active[req.request_id] = req
            drafts = proposer.propose(req, k)
            if drafts and req.grammar is not None:
                drafts = req.grammar.valid_prefix(req.output_token_ids, drafts)
            req.spec_token_ids = drafts

    def _release_ended(self) -> None:
        ended = [req for req in self._active.values() if req.is_finished]
        for req in ended:
            del self._active[req.request_id]
            self.proposer.finish(req)

    def observe(self, so: SchedulerOutput, result: ExecutorResult) -> None:
        """Count the step's verifies (call after ``Scheduler.update``)."""
        for s in so.scheduled:
            if s.draft_token_ids:
                emitted = result.spec_tokens.get(s.request.request_id)
                if emitted is not None:
                    self.stats.observe(len(s.draft_token_ids), len(emitted) - 1, s.request.num_new_tokens)

