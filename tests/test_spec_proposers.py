"""Proposers of speculative decoding: prompt lookup (n-grams) and SuffixDecoding (per-request and global suffix
trees, frequency-based drafts, adaptive length, bounded global cache), and the drafter's caps."""

from __future__ import annotations

import pytest

from pitstop.config import SpeculativeConfig
from pitstop.engine.spec_decode.drafter import Drafter
from pitstop.engine.spec_decode.ngram import NgramProposer, propose_ngram
from pitstop.engine.spec_decode.proposer import Proposer
from pitstop.engine.spec_decode.suffix_tree import PySuffixCache, SuffixTree
from pitstop.engine.spec_decode.registry import build_proposer
from pitstop.request import Request, RequestStatus
from pitstop.sampling_params import SamplingParams


def _req(rid: str, prompt: list[int], output: list[int] = (), max_tokens: int = 100, **params) -> Request:
    r = Request(rid, list(prompt), SamplingParams(**params), arrival_time=0.0, max_tokens=max_tokens)
    for t in output:
        r.append_output(t)
    r.num_computed_tokens = r.num_tokens - 1
    return r


# ---- n-grams ------------------------------------------------------------------------------------------------------
def test_ngram_proposes_what_followed_the_latest_match():
    assert propose_ngram([1, 2, 3, 4, 5, 1, 2, 3], 2, 3, 4) == [4, 5, 1, 2]
    assert propose_ngram([1, 2, 3, 7, 2, 3, 8, 2, 3], 2, 2, 1) == [8]  # latest occurrence wins
    assert propose_ngram([1, 2, 3, 4], 2, 3, 4) == []
    assert propose_ngram([9, 9], 2, 3, 4) == []


def test_ngram_prefers_the_longest_n():
    toks = [1, 2, 3, 9, 5, 2, 3, 8, 5, 2, 3]  # 3-gram "5 2 3" -> 8 ; 2-gram "2 3" latest -> 8 too; make them differ
    toks = [7, 2, 3, 10, 5, 2, 3, 11, 7, 2, 3]  # "7 2 3" matches at 0 (-> 10); "2 3" latest at 5 (-> 11)
    assert propose_ngram(toks, 2, 3, 1) == [10]
    assert propose_ngram(toks, 2, 2, 1) == [11]


def test_ngram_ignores_matches_across_token_boundaries():
    # int32 bytes of [256, 1] contain the bytes of [1, 0]'s tail pieces; only aligned matches count
    assert propose_ngram([1 << 8, 0, 1, 2, 0, 1], 2, 2, 4) == [2, 0, 1]
    assert propose_ngram([0, 1 << 8, 5, 1, 0], 2, 2, 3) == []


def test_ngram_proposer_on_a_request():
    p = NgramProposer(1, 3)
    assert p.propose(_req("a", [4, 5, 6, 4], [5]), 3) == [6, 4, 5]
    with pytest.raises(ValueError):
        NgramProposer(3, 2)


# ---- suffix decoding -----------------------------------------------------------------------------------------------
def _has_arctic() -> bool:
    try:
        import arctic_inference.suffix_decoding  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ["python", pytest.param("arctic", marks=pytest.mark.skipif(
    not _has_arctic(), reason="the arctic-inference package is not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _suffix(backend, **kw):
    return build_proposer(SpeculativeConfig(method="suffix", suffix_backend=backend, **kw))


def test_suffix_matches_the_requests_own_prompt(backend):
    p = _suffix(backend)
    prompt = [10, 11, 12, 13, 14, 15, 16, 17, 50, 51, 10, 11, 12]
    assert p.propose(_req("a", prompt), 5) == [13, 14, 15]  # match length 3: at most 3 tokens (factor 1)
    p.finish(_req("a", prompt))


def test_suffix_global_tree_learns_past_outputs_and_prefers_the_frequent_continuation(backend):
    p = _suffix(backend, suffix_min_token_prob=0.0)
    # three past requests answered "1 2 3 -> 4 5 6" twice and "1 2 3 -> 7 8 9" once
    for i, tail in enumerate([[4, 5, 6], [7, 8, 9], [4, 5, 6]]):
        r = _req(f"old{i}", [100 + i], [1, 2, 3] + tail)
        p.propose(r, 1)
        r.status = RequestStatus.FINISHED_STOPPED
        p.finish(r)
    assert p.num_cached_outputs == 3 and p.num_active == 0
    new = _req("new", [200, 201], [1, 2, 3])
    assert p.propose(new, 3) == [4, 5, 6]


def test_suffix_draft_length_adapts_to_the_match_length(backend):
    p = _suffix(backend, suffix_max_spec_factor=1.0, suffix_min_token_prob=0.0)
    r = _req("x", [300], list(range(1, 21)))
    p.propose(r, 1)
    p.finish(r)
    short = _req("s", [400], [19])  # matches "19" only (length 1): at most 1 * 1 + 0 tokens
    assert len(p.propose(short, 10)) <= 1
    long = _req("l", [401], [5, 6, 7, 8])  # match length 4: up to 4 tokens
    assert p.propose(long, 10) == [9, 10, 11, 12]


def test_suffix_global_cache_is_bounded(backend):
    p = _suffix(backend, suffix_max_cached_requests=2, suffix_min_token_prob=0.0)
    for i in range(5):
        r = _req(f"r{i}", [1000 + i], [500 + i, 600 + i, 700 + i])
        p.propose(r, 1)
        p.finish(r)
    assert p.num_cached_outputs == 2  # r3 and r4; a new request's output takes a slot too (evicting r3)
    assert p.propose(_req("q", [1], [504, 604]), 1) == [704]
    assert p.propose(_req("q2", [1], [500, 600]), 1) == []  # the oldest outputs were evicted


def test_suffix_arctic_backend_needs_the_package_or_says_so(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_arctic(name, *a, **kw):
        if name.startswith("arctic_inference"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_arctic)
    with pytest.raises(ValueError, match="arctic-inference"):
        build_proposer(SpeculativeConfig(method="suffix", suffix_backend="arctic"))
    assert isinstance(build_proposer(SpeculativeConfig(method="suffix")).cache, PySuffixCache)  # auto: falls back
    with pytest.raises(ValueError, match="suffix_backend"):
        SpeculativeConfig(method="suffix", suffix_backend="rust")


def test_suffix_tree_counts_insert_and_remove():
    t = SuffixTree(max_depth=3)
    t.extend("a", [1, 2, 1, 2])
    assert t.root.children[1].count == 2 and t.root.children[1].children[2].count == 2
    assert 1 not in t.root.children[1].children[2].children[1].children  # depth 3: "1 2 1" is the deepest
    node, n = t.match([9, 9, 1, 2])
    assert n == 2 and node is t.root.children[1].children[2]  # "1 2" is followed by 1 (depth limit 3)
    assert t.speculate([5, 1], 4, 10.0, 0.0, 0.0).token_ids == [2, 1]  # the tree's paths end at depth 3
    t.extend("b", [2, 7])
    assert t.root.children[2].count == 3
    t.remove("a")
    assert set(t.root.children) == {2, 7} and t.root.children[2].count == 1
    t.remove("b")
    assert not t.root.children and t.num_nodes == 1


def test_suffix_tree_frequency_and_probability_threshold():
    t = SuffixTree(max_depth=8)
    t.extend("a", [1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 4])  # after "1 2": 3 twice, 4 once
    d = t.speculate([1, 2], 3, 5.0, 0.0, 0.0)
    assert d.token_ids[0] == 3 and d.probs[0] == pytest.approx(2 / 3) and d.match_len == 2
    assert t.speculate([1, 2], 3, 5.0, 0.0, 0.7).token_ids == []  # 2/3 is under the threshold


# ---- the drafter ---------------------------------------------------------------------------------------------------
class _Fixed(Proposer):
    def __init__(self):
        self.asked = []
        self.finished = []

    def propose(self, request, max_tokens):
        self.asked.append(max_tokens)
        return list(range(1, max_tokens + 1))

    def finish(self, request):
        self.finished.append(request.request_id)


def test_drafter_caps_drafts_and_skips_ineligible_requests():
    prop = _Fixed()
    d = Drafter(SpeculativeConfig(method="ngram", num_speculative_tokens=5), max_model_len=20, proposer=prop)
    near_max = _req("m", [1, 2], [3], max_tokens=3)  # 2 more tokens allowed: 1 draft + the target's token
    near_len = _req("l", list(range(1, 17)), [1])  # 17 tokens of 20: 2 drafts at most
    opted_out = _req("o", [1], [2], speculative=False)
    prefill = _req("f", [1, 2, 3])
    prefill.num_computed_tokens = 1
    d.propose([near_max, near_len, opted_out, prefill])
    assert near_max.spec_token_ids == [1] and near_len.spec_token_ids == [1, 2]
    assert opted_out.spec_token_ids == prefill.spec_token_ids == []
    near_max.status = RequestStatus.FINISHED_LENGTH
    d.propose([near_len])
    assert prop.finished == ["m"]
