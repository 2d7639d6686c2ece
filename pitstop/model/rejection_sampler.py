"""Verification of speculative drafts: which draft tokens the target model accepts, and the token that follows.

A verify row is one sequence with K draft tokens ``d_0 .. d_{K-1}`` and the target's logits at the K + 1 positions
that predict ``d_0 .. d_{K-1}`` and the token after them. Each position's logits go through the same pipeline as the
ordinary sampler (``pitstop.model.sampler``: penalties and min_tokens over the output *including the drafts before
it*, temperature, min-p, top-k, top-p; the grammar mask is applied by the caller), giving the target distribution
``p_j``. Then:

- greedy: accept while ``argmax p_j == d_j``; the first mismatch emits ``argmax p_j`` instead, and when all K match
  ``argmax p_K`` is emitted (the bonus token). Token for token what non-speculative greedy decoding emits.
- sampling: the drafts come from a deterministic proposer, i.e. a point mass ``q_j = 1[d_j]``. Speculative sampling
  (Leviathan et al., ICML'23; Chen et al., arXiv 2302.01318) accepts ``d_j`` with probability
  ``min(1, p_j(d_j) / q_j(d_j)) = p_j(d_j)``; on rejection it samples from ``max(p_j - q_j, 0)`` renormalised, i.e.
  ``p_j`` with ``d_j`` removed; if all K are accepted it samples the bonus token from ``p_K``. Every emitted token
  is then distributed exactly as the target's (the output distribution is unchanged).

Seeded requests draw their uniforms and samples from their own generator (reproducible, though not the same tokens
as without speculation: the draws differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pitstop.model.sampler import (SamplingRow, _any_penalty, _filtered_probs, _min_tokens_active, apply_min_tokens,
                                   apply_penalties)


@dataclass
class VerifyRow:
    """One sequence to verify.

    Attributes:
        row: its sampling row (params, generator, prompt and output tokens *before* the drafts).
        draft_token_ids: the K >= 1 draft tokens.
    """

    row: SamplingRow
    draft_token_ids: list[int]


def verify_drafts(logits: torch.Tensor, rows: list[VerifyRow]) -> list[list[int]]:
    """The tokens each verify row emits: its accepted drafts (a prefix) and one token from the target.

    Args:
        logits: ``[sum(K_i + 1), V]`` float logits, row ``i``'s ``K_i + 1`` positions consecutive in ``rows`` order
            (grammar masks already applied). Not modified.
        rows: the verify rows.
    Returns:
        per row, ``1 .. K_i + 1`` token ids.
    Raises:
        ValueError: ``logits`` has not ``sum(K_i + 1)`` rows.
    """
    total = sum(len(r.draft_token_ids) + 1 for r in rows)
    if logits.dim() != 2 or logits.shape[0] != total:
        raise ValueError(f"logits must be [{total}, V] for these drafts, got {tuple(logits.shape)}")
    out, at = [], 0
    plain_argmax = None
    if all(_plain_greedy(r.row) for r in rows):
        plain_argmax = logits.argmax(dim=-1).tolist()
    for r in rows:
        k = len(r.draft_token_ids)
        if plain_argmax is not None:
            out.append(_accept_greedy(plain_argmax[at:at + k + 1], r.draft_token_ids))
        else:
            out.append(_verify_one(logits[at:at + k + 1], r))
        at += k + 1
    return out


def _plain_greedy(row: SamplingRow) -> bool:
    return row.params.greedy and not _any_penalty(row) and row.params.min_tokens == 0


def _accept_greedy(targets: list[int], drafts: list[int]) -> list[int]:
    """``targets``: the target's argmax at each of the K + 1 positions."""
    out = []
    for d, t in zip(drafts, targets):
        if d != t:
            out.append(t)
            return out
        out.append(d)
    out.append(targets[len(drafts)])
    return out


def _position_rows(r: VerifyRow) -> list[SamplingRow]:
    """The sampling row of each position: the output then holds the drafts before it (penalties, min_tokens)."""
    base = r.row
    return [SamplingRow(params=base.params, generator=base.generator, prompt_token_ids=base.prompt_token_ids,
                        output_token_ids=list(base.output_token_ids) + r.draft_token_ids[:j],
                        eos_token_ids=base.eos_token_ids) for j in range(len(r.draft_token_ids) + 1)]


def _verify_one(logits: torch.Tensor, r: VerifyRow) -> list[int]:
    rows = _position_rows(r)
    logits = logits.float()
    if any(_any_penalty(x) for x in rows):
        logits = apply_penalties(logits.clone(), rows)
    if any(_min_tokens_active(x) for x in rows):
        before = logits
        masked = apply_min_tokens(logits.clone(), rows)
        empty = torch.isinf(masked).all(dim=-1)  # a grammar allowing only EOS wins over min_tokens (as the sampler)
        logits = torch.where(empty.unsqueeze(1), before, masked)
    if r.row.params.greedy:
        return _accept_greedy(logits.argmax(dim=-1).tolist(), r.draft_token_ids)
    probs = _filtered_probs(logits, rows)
    return accept_point_mass(probs, r.draft_token_ids, r.row.generator)


def accept_point_mass(probs: torch.Tensor, drafts: list[int], generator: torch.Generator | None) -> list[int]:
    """Speculative sampling with point-mass drafts.

    Args:
        probs: ``[K + 1, V]`` target probabilities (rows sum to 1) at the K draft positions and the bonus position.
        drafts: the K draft token ids.
        generator: the draws' generator (None: torch's global one).
    Returns:
        the accepted drafts and one token drawn from the target (the residual at the first rejection, else
        ``probs[K]``), ``1 .. K + 1`` ids.
    """
    out = []
    p_draft = probs[torch.arange(len(drafts)), torch.tensor(drafts, dtype=torch.long)].tolist()
    for j, d in enumerate(drafts):
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        if u < p_draft[j]:
            out.append(d)
            continue
        residual = probs[j].clone()
        residual[d] = 0.0  # max(p - q, 0) for the point mass q at d; multinomial renormalises
        if not bool((residual > 0).any()):
            residual = probs[j]  # p(d) == 1 is never rejected; float guard only
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(probs[len(drafts)], 1, generator=generator)))
    return out
