"""The cost-model interface: predicted duration (seconds) of one engine step from its batch shape.

A step is summarised by a ``StepShape`` (token and context counts, no tensors), so the same features feed the
analytical ``roofline`` model and the fitted ``profiled`` model. The decomposition follows Vidur (Agrawal et al.,
MLSys'24): token-linear work (the matmuls, proportional to tokens in the batch), attention work (proportional to
query x key pairs for prefill chunks and to context length for decodes), and a per-step / per-sequence overhead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from pitstop.scheduler_output import SchedulerOutput


@dataclass(slots=True)
class StepShape:
    """What a cost model needs to know about one step (all counts in tokens or sequences).

    Attributes:
        num_tokens: tokens computed in the step (prefill chunks + decodes).
        num_seqs: sequences in the step.
        num_sampled: logits rows: one per sequence that samples a token, ``K + 1`` per speculative verify of K drafts
            (the lm_head runs on these rows only).
        draft_tokens: speculative draft tokens verified (counted in ``num_tokens``; a verify of K drafts is a
            ``K + 1``-token causal chunk, so its attention is counted as a prefill chunk's).
        prefill_tokens: tokens of chunks longer than one token.
        prefill_attn_pairs: causal query-key pairs of the prefill chunks: ``sum q * (start + (q + 1) / 2)``.
        decode_seqs: sequences computing exactly one token.
        decode_ctx_tokens: keys read by the decodes: ``sum (start + 1)``.
        kv_read_tokens: KV tokens read by attention over the whole step: ``sum (start + q)``.
        decode_max_ctx: the longest decode context (tokens); a batched decode attention that pads every sequence
            to it reads ``decode_seqs * decode_max_ctx`` keys.
    """

    num_tokens: int = 0
    num_seqs: int = 0
    num_sampled: int = 0
    prefill_tokens: int = 0
    prefill_attn_pairs: float = 0.0
    decode_seqs: int = 0
    decode_ctx_tokens: int = 0
    kv_read_tokens: int = 0
    decode_max_ctx: int = 0
    draft_tokens: int = 0

    @classmethod
    def from_output(cls, so: SchedulerOutput) -> "StepShape":
        t = s = sampled = pt = ds = dctx = kv = dmax = drafts = 0
        pairs = 0.0
        for e in so.scheduled:
            q, start = e.num_tokens, e.start
            t += q
            s += 1
            if e.sample:
                sampled += 1
            if e.draft_token_ids:
                drafts += len(e.draft_token_ids)
                sampled += len(e.draft_token_ids)
            kv += start + q
            if q > 1:
                pt += q
                pairs += q * (start + (q + 1) * 0.5)
            else:
                ds += 1
                dctx += start + 1
                if start + 1 > dmax:
                    dmax = start + 1
        return cls(t, s, sampled, pt, pairs, ds, dctx, kv, dmax, drafts)

    @classmethod
    def of(cls, prefill: list[tuple[int, int]] = (), decode_contexts: list[int] = ()) -> "StepShape":
        """A hand-built shape: ``prefill`` = (chunk tokens, tokens already computed) pairs, ``decode_contexts``
        = context length (tokens, the new one included) of each decode."""
        sh = cls()
        for q, start in prefill:
            sh.num_tokens += q
            sh.num_seqs += 1
            sh.num_sampled += 1
            sh.prefill_tokens += q
            sh.prefill_attn_pairs += q * (start + (q + 1) * 0.5)
            sh.kv_read_tokens += start + q
        for c in decode_contexts:
            sh.num_tokens += 1
            sh.num_seqs += 1
            sh.num_sampled += 1
            sh.decode_seqs += 1
            sh.decode_ctx_tokens += c
            sh.kv_read_tokens += c
            sh.decode_max_ctx = max(sh.decode_max_ctx, c)
        return sh


class CostModel(ABC):
    """Predicts the wall time (seconds) of one step."""

    name: str = "base"

    @abstractmethod
    def predict(self, shape: StepShape) -> float:
        """Seconds of one step of this shape (>= 0)."""

    def step_time(self, so: SchedulerOutput) -> float:
        """Seconds of the step the scheduler built."""
        return self.predict(StepShape.from_output(so))

    def describe(self) -> dict:
        """JSON-friendly parameters, for reports."""
        return {"name": self.name}
