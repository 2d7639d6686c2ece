"""Verification of speculative drafts: greedy accepts the target's argmax run; sampling with point-mass drafts keeps
the target distribution exactly (chi-square tests at a fixed seed on a small vocabulary)."""

from __future__ import annotations

import pytest
import torch

from pitstop.model.rejection_sampler import VerifyRow, accept_point_mass, verify_drafts
from pitstop.model.sampler import SamplingRow
from pitstop.sampling_params import SamplingParams

CHI2_999 = {2: 13.82, 3: 16.27, 4: 18.47}  # chi-square quantile 0.999 by degrees of freedom


def _chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs) if p > 0)


def _row(**kw) -> SamplingRow:
    return SamplingRow(params=SamplingParams(**kw))


def test_greedy_accepts_the_argmax_run_then_corrects():
    logits = torch.full((4, 10), -5.0)
    for pos, tok in enumerate([3, 4, 5, 6]):
        logits[pos, tok] = 5.0
    row = _row(temperature=0)
    assert verify_drafts(logits, [VerifyRow(row, [3, 4, 5])]) == [[3, 4, 5, 6]]  # all + bonus
    assert verify_drafts(logits, [VerifyRow(row, [3, 9, 5])]) == [[3, 4]]  # correction at the first mismatch
    assert verify_drafts(logits, [VerifyRow(row, [1, 4, 5])]) == [[3]]
    two = torch.cat([logits, logits[:2]])
    assert verify_drafts(two, [VerifyRow(row, [3, 4, 5]), VerifyRow(row, [7])]) == [[3, 4, 5, 6], [3]]
    with pytest.raises(ValueError, match="logits"):
        verify_drafts(logits, [VerifyRow(row, [3])])


def test_greedy_with_penalties_sees_the_drafts_before_each_position():
    logits = torch.zeros(3, 6)
    logits[:, 2] = 1.0
    logits[:, 4] = 0.9
    # repetition penalty 2: once 2 is in the output (the first draft), position 1's argmax becomes 4
    row = SamplingRow(params=SamplingParams(temperature=0, repetition_penalty=2.0))
    assert verify_drafts(logits, [VerifyRow(row, [2, 2])]) == [[2, 4]]


def test_point_mass_rule_first_token_has_the_target_distribution():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25], [0.3, 0.3, 0.1, 0.2, 0.1]])
    g = torch.Generator().manual_seed(1234)
    n = 20000
    first = [0] * 5
    second_after_accept = [0] * 5
    for _ in range(n):
        out = accept_point_mass(p, [2], g)
        first[out[0]] += 1
        if out[0] == 2:
            second_after_accept[out[1]] += 1
    assert _chi2(first, p[0].tolist()) < CHI2_999[4]
    assert _chi2(second_after_accept, p[1].tolist()) < CHI2_999[4]  # the bonus token, from the next position
    assert abs(first[2] / n - 0.3) < 0.02  # the draft is accepted with probability p(d)


def test_point_mass_rule_two_drafts_joint_distribution():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    g = torch.Generator().manual_seed(7)
    n = 20000
    pairs: dict[tuple[int, int], int] = {}
    for _ in range(n):
        out = accept_point_mass(p, [0, 1], g)
        if out[0] == 0:  # first accepted: the second is a draft decision or a correction, drawn from p[1]
            pairs[(0, out[1])] = pairs.get((0, out[1]), 0) + 1
    counts = [pairs.get((0, t), 0) for t in range(3)]
    assert _chi2(counts, p[1].tolist()) < CHI2_999[2]


def test_rejected_draft_never_comes_back_as_the_correction():
    p = torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = accept_point_mass(p, [0], g)
        assert out[0] in (1, 2) and len(out) == 1


def test_verify_applies_temperature_and_top_k_like_the_sampler():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]] * 2)
    row = SamplingRow(params=SamplingParams(temperature=0.7, top_k=3, seed=3),
                      generator=torch.Generator().manual_seed(3))
    target = torch.softmax(logits[0] / 0.7, dim=-1)
    target[3:] = 0
    target /= target.sum()
    counts = [0] * 5
    n = 12000
    for _ in range(n):
        out = verify_drafts(logits, [VerifyRow(row, [1])])[0]
        counts[out[0]] += 1
    assert counts[3] == counts[4] == 0
    assert _chi2(counts[:3], target[:3].tolist()) < CHI2_999[2]


def test_a_wrong_rule_fails_the_test():
    """The chi-square check detects a biased rule (accepting the draft whenever p(d) > 0.2): the test can fail."""
    p = [0.1, 0.2, 0.3, 0.15, 0.25]
    g = torch.Generator().manual_seed(1234)
    counts = [0] * 5
    for _ in range(20000):
        counts[2 if p[2] > 0.2 else int(torch.multinomial(torch.tensor(p), 1, generator=g))] += 1
    assert _chi2(counts, p) > CHI2_999[4]
