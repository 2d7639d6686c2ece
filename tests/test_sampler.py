"""Sampler: greedy, seeded reproducibility, masks, penalties, min_tokens, logprobs, distribution."""

from __future__ import annotations

import math

import pytest
import torch

from pitstop.model.sampler import (Sampler, SamplingRow, apply_min_p, apply_penalties,
                                   apply_top_k_top_p)
from pitstop.sampling_params import SamplingParams

NEG = float("-inf")


def row(seed: int | None = None, prompt=(), output=(), eos=(), **kw) -> SamplingRow:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(SamplingParams(seed=seed, **kw), gen, list(prompt), list(output), set(eos))


def kept(masked: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(r != NEG).flatten().tolist() for r in masked]


def log_probs(*ps: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in ps])


# ----------------------------------------------------------------------------- greedy / seeds


def test_greedy_is_argmax_fast_path() -> None:
    logits = torch.randn(5, 50)
    out = Sampler()(logits, [row(temperature=0.0) for _ in range(5)])
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None and out.top_token_ids is None


def test_greedy_rows_mixed_with_random_rows() -> None:
    logits = torch.randn(4, 50)
    rows = [row(temperature=0.0), row(), row(top_k=1), row(seed=3)]
    out = Sampler()(logits, rows)
    assert out.token_ids[0] == logits[0].argmax() and out.token_ids[2] == logits[2].argmax()
    assert out.token_ids.dtype == torch.int64 and out.token_ids.shape == (4,)


def test_seeded_reproducible_across_batches() -> None:
    torch.manual_seed(0)
    target = torch.randn(1000)
    others = torch.randn(3, 1000)
    alone = [int(Sampler()(target[None].clone(), [row(seed=42)]).token_ids[0]) for _ in range(1)]
    # The same seed, a fresh generator, batched with other rows in different positions.
    a = Sampler()(torch.stack([target, others[0], others[1]]),
                  [row(seed=42), row(), row(seed=7)]).token_ids[0]
    b = Sampler()(torch.stack([others[2], others[1], target]),
                  [row(seed=5), row(), row(seed=42)]).token_ids[2]
    assert alone[0] == int(a) == int(b)


def test_seeded_sequence_reproducible() -> None:
    logits = torch.zeros(1, 1000)
    seqs = []
    for _ in range(2):
        r = row(seed=123)
        seqs.append([int(Sampler()(logits, [r]).token_ids[0]) for _ in range(10)])
    assert seqs[0] == seqs[1] and len(set(seqs[0])) > 1  # generator advances between steps


def test_different_seeds_differ_on_flat_distribution() -> None:
    logits = torch.zeros(8, 10_000)
    out = Sampler()(logits, [row(seed=s) for s in range(8)]).token_ids
    assert len(set(out.tolist())) >= 7


def test_distribution_chi_square() -> None:
    torch.manual_seed(1)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 20_000
    logits = probs.log().expand(n, 4).clone()
    counts = torch.bincount(Sampler()(logits, [row() for _ in range(n)]).token_ids, minlength=4)
    expected = probs * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # 3 dof, p = 0.001


def test_temperature_sharpens_distribution() -> None:
    torch.manual_seed(2)
    probs = torch.tensor([0.2, 0.8])
    n = 20_000
    logits = probs.log().expand(n, 2).clone()
    counts = torch.bincount(Sampler()(logits, [row(temperature=0.5) for _ in range(n)]).token_ids)
    p_hi = 0.8 ** 2 / (0.8 ** 2 + 0.2 ** 2)
    assert abs(float(counts[1]) / n - p_hi) < 4 * math.sqrt(p_hi * (1 - p_hi) / n)


def test_masked_tokens_never_sampled() -> None:
    logits = torch.tensor([[5.0, 4.9, 4.8, -1.0, -2.0]]).expand(2000, 5).clone()
    out = Sampler()(logits, [row(top_k=2) for _ in range(2000)]).token_ids
    assert set(out.tolist()) == {0, 1}


# ----------------------------------------------------------------------------- masks


def test_top_k_mask() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [1.0, 5.0, 3.0, 2.0, 4.0],
                           [1.0, 5.0, 3.0, 2.0, 4.0]])
    out = apply_top_k_top_p(logits.clone(), torch.tensor([2, 0, 5]), None)
    assert kept(out) == [[1, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert torch.equal(out[0, [1, 4]], logits[0, [1, 4]])  # survivors unchanged


def test_top_k_ties_kept() -> None:
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    assert kept(apply_top_k_top_p(logits.clone(), torch.tensor([2]), None)) == [[0, 1, 2]]
    # Same result through the sort path (top-k combined with a top-p that keeps all survivors).
    out = apply_top_k_top_p(logits.clone(), torch.tensor([2]), torch.tensor([0.99]))
    assert kept(out) == [[0, 1, 2]]


def test_top_p_mask() -> None:
    logits = log_probs(0.2, 0.5, 0.3).expand(5, 3).clone()
    p = torch.tensor([0.5, 0.75, 0.8, 0.81, 1e-9])
    out = apply_top_k_top_p(logits, None, p)
    # mass 0.5 >= 0.5 -> {1}; 0.75 needs {1, 2} (0.8); exactly 0.8 -> {1, 2}; 0.81 -> all; tiny -> top.
    assert kept(out) == [[1], [1, 2], [1, 2], [0, 1, 2], [1]]


def test_mixed_rows_match_row_by_row() -> None:
    torch.manual_seed(4)
    logits = torch.randn(6, 40) * 2
    k = torch.tensor([3, 0, 10, 0, 5, 40])
    p = torch.tensor([0.5, 0.7, 1.0, 1.0, 0.9, 0.3])
    batched = apply_top_k_top_p(logits.clone(), k, p)
    for i in range(6):
        single = apply_top_k_top_p(logits[i:i + 1].clone(), k[i:i + 1], p[i:i + 1])
        assert torch.equal(batched[i:i + 1], single)
    assert len(kept(batched[2:3])[0]) == 10 and len(kept(batched[3:4])[0]) == 40


def test_top_p_disabled_keeps_tiny_tokens() -> None:
    logits = torch.cat([torch.tensor([30.0]), torch.full((1000,), -30.0)])[None]
    out = apply_top_k_top_p(logits.clone(), None, torch.tensor([1.0]))
    assert torch.equal(out, logits)


def test_top_k_then_top_p_renormalises() -> None:
    # top-k=2 keeps {0.4, 0.3} -> renormalised {0.571, 0.429}; top-p 0.5 keeps only the first.
    logits = log_probs(0.4, 0.3, 0.2, 0.1)[None]
    out = apply_top_k_top_p(logits.clone(), torch.tensor([2]), torch.tensor([0.5]))
    assert kept(out) == [[0]]
    out = apply_top_k_top_p(logits.clone(), torch.tensor([3]), torch.tensor([0.8]))
    assert kept(out) == [[0, 1, 2]]  # renormalised 0.444 + 0.333 = 0.778 < 0.8


def test_min_p_mask() -> None:
    logits = log_probs(0.5, 0.25, 0.15, 0.1).expand(3, 4).clone()
    out = apply_min_p(logits, torch.tensor([0.0, 0.3, 0.5]))
    # thresholds: 0, 0.15, 0.25 (tokens with p < threshold dropped)
    assert kept(out) == [[0, 1, 2, 3], [0, 1, 2], [0, 1]]


def test_min_p_one_keeps_top() -> None:
    out = apply_min_p(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1.0]))
    assert kept(out) == [[1]]


# ----------------------------------------------------------------------------- penalties


def test_repetition_penalty_prompt_and_output() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 1.0]])
    out = apply_penalties(logits.clone(), [row(prompt=[0], output=[1], repetition_penalty=2.0)])
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, 2.0, -2.0, 1.0]]))


def test_frequency_and_presence_penalties_on_output_only() -> None:
    logits = torch.zeros(1, 4)
    r = row(prompt=[3, 3], output=[0, 0, 0, 1], frequency_penalty=0.5, presence_penalty=1.0)
    out = apply_penalties(logits, [r])
    assert torch.allclose(out, torch.tensor([[-2.5, -1.5, 0.0, 0.0]]))


def test_penalties_per_row_and_greedy_uses_penalised_logits() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0], [3.0, 2.5, 0.0]])
    rows = [row(output=[0], presence_penalty=1.0, temperature=0.0), row(output=[0], temperature=0.0)]
    assert Sampler()(logits, rows).token_ids.tolist() == [1, 0]


def test_min_tokens_masks_eos_and_stop_ids() -> None:
    logits = torch.tensor([[9.0, 8.0, 1.0, 0.0]]).expand(3, 4).clone()
    rows = [row(output=[2], eos=[0], min_tokens=2, stop_token_ids=[1], temperature=0.0),
            row(output=[2, 2], eos=[0], min_tokens=2, temperature=0.0),
            row(output=[2], eos=[0], min_tokens=2, temperature=0.0)]
    assert Sampler()(logits, rows).token_ids.tolist() == [2, 0, 1]


def test_min_tokens_random_rows_never_sample_eos() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0]]).expand(500, 3).clone()
    out = Sampler()(logits, [row(eos=[0], min_tokens=3) for _ in range(500)]).token_ids
    assert 0 not in out.tolist()


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax_and_top_k() -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, 30)
    rows = [row(logprobs=2, temperature=0.0, presence_penalty=2.0, output=[int(logits[0].argmax())]),
            row(logprobs=5, temperature=0.7, top_p=0.9), row()]
    out = Sampler()(logits, rows)
    ref = logits.log_softmax(-1)
    assert out.logprobs is not None and out.top_token_ids is not None and out.top_logprobs is not None
    assert torch.allclose(out.logprobs, ref.gather(1, out.token_ids[:, None]).squeeze(1))
    assert out.top_token_ids.shape == (3, 5) and out.top_logprobs.dtype == torch.float32
    assert torch.equal(out.top_token_ids, ref.argsort(-1, descending=True)[:, :5])
    assert torch.allclose(out.top_logprobs, ref.sort(-1, descending=True).values[:, :5])
    assert out.token_ids[0] != logits[0].argmax()  # penalty changed the token, not the logprobs


def test_logprobs_zero_gives_empty_top() -> None:
    out = Sampler()(torch.randn(2, 10), [row(logprobs=0, temperature=0.0), row(temperature=0.0)])
    assert out.logprobs is not None and out.top_token_ids is not None
    assert out.top_token_ids.shape == (2, 0)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        Sampler()(torch.randn(2, 10), [row()])
