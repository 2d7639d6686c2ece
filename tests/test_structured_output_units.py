"""Structured-output parts without the model: the sampler's in-place bitmask, the matcher's rollback (what a
preemption that dropped tokens would need), the compile cache (one compile per spec, failures cached), and the
cache key."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pitstop.engine.structured_output.backend import grammar_key
from pitstop.engine.structured_output.compile_cache import CompileCache
from pitstop.model.sampler import Sampler, SamplingRow, apply_token_bitmask_
from pitstop.sampling_params import SamplingParams
from pitstop.sampling_params import StructuredOutputsParams as SO


def _bitmask(allowed: list[list[int]], vocab: int) -> torch.Tensor:
    words = (vocab + 31) // 32
    bm = np.zeros((len(allowed), words), dtype=np.uint32)
    for r, toks in enumerate(allowed):
        for t in toks:
            bm[r, t // 32] |= np.uint32(1 << (t % 32))
    return torch.from_numpy(bm.view(np.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitmask_masks_only_the_named_rows_in_place(dtype):
    """Every logits dtype the runner uses (fp32 on CPUs without native bf16): the bias is built bit-wise per dtype."""
    vocab = 70  # not a multiple of 32: the last word is partial
    logits = torch.randn(3, vocab).to(dtype)
    before = logits.clone()
    out = apply_token_bitmask_(logits, _bitmask([[5, 31, 32, 69], [0]], vocab), rows=[2, 0])
    assert out is logits
    assert torch.equal(logits[1], before[1])  # unconstrained row untouched
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [5, 31, 32, 69]
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [0]
    assert torch.equal(logits[2, [5, 31, 32, 69]], before[2, [5, 31, 32, 69]])


def test_bitmask_narrower_than_vocab_forbids_the_rest_and_sampler_obeys():
    logits = torch.zeros(2, 100)
    logits[:, 99] = 10.0  # the favourite lies past the bitmask's 64 tokens
    bm = _bitmask([[3, 7], [40]], 64)
    rows = [SamplingRow(SamplingParams(temperature=0)), SamplingRow(SamplingParams(temperature=1.0, seed=1))]
    out = Sampler()(logits, rows, (bm, None))
    assert out.token_ids.tolist()[1] == 40 and out.token_ids.tolist()[0] in (3, 7)
    with pytest.raises(ValueError, match="bitmask has 2 rows for 1"):
        apply_token_bitmask_(torch.zeros(2, 64), bm, rows=[0])


def test_grammar_key_keeps_property_order_and_canonicalises_text():
    a = grammar_key(SO(json={"type": "object", "properties": {"b": {}, "a": {}}}))
    b = grammar_key(SO(json='{ "type": "object",  "properties": {"b": {}, "a": {}} }'))
    assert a == b and a[1].index('"b"') < a[1].index('"a"')
    assert grammar_key(SO(json={"type": "object"}, disable_any_whitespace=True)) != grammar_key(
        SO(json={"type": "object"}))
    with pytest.raises(ValueError, match=r"structured_outputs\.json is not valid JSON"):
        grammar_key(SO(json="{"))


def test_compile_cache_compiles_each_key_once_and_caches_failures():
    calls: list = []
    gate = threading.Event()

    def compile_fn(key):
        calls.append(key)
        gate.wait(30)
        if key[1] == "bad":
            raise ValueError("structured_outputs.regex: bad")
        return object()

    cache = CompileCache(compile_fn)
    k1, k2 = ("regex", "a+", False), ("regex", "bad", False)
    f1, f1b, f2 = cache.get(k1), cache.get(k1), cache.get(k2)
    assert f1 is f1b and not cache.compiled(k1)
    gate.set()
    assert f1.result(30) is not None and isinstance(f2.exception(30), ValueError)
    assert cache.compiled(k1) and not cache.compiled(k2) and cache.get(k2) is f2
    assert calls == [k1, k2] and cache.hits == 2 and cache.misses == 2
    assert len(cache.compile_times_s) == 2
    cache.shutdown()


def test_matcher_rollback_reflects_exactly_the_kept_tokens(smollm2_dir):
    from pitstop.engine.structured_output.llguidance_backend import LLGuidanceBackend
    from pitstop.engine.structured_output.request_grammar import RequestGrammar
    from pitstop.entrypoints.engine_builder import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    backend = LLGuidanceBackend(tok, 49152, frozenset({tok.eos_token_id}))
    key = grammar_key(SO(choice=["alpha beta", "alpha gamma"]))
    backend.validate(key)
    released = []

    class Owner:
        def __init__(self):
            self.backend = backend

        def release(self, g):
            released.append(g)

    from concurrent.futures import Future
    fut: Future = Future()
    fut.set_result(backend.compile(key))
    g = RequestGrammar(Owner(), "r", "r", fut, deadline=1e18)
    assert g.ready()
    beta = tok(" beta", add_special_tokens=False).input_ids
    gamma = tok(" gamma", add_special_tokens=False).input_ids
    alpha = tok("alpha", add_special_tokens=False).input_ids
    out = alpha + beta
    g.sync(out)
    assert g.num_accepted == len(out) and g.matcher.is_terminated()
    g.sync(alpha)  # tokens dropped: the matcher is rolled back to exactly these
    assert g.num_accepted == len(alpha) and not g.matcher.is_terminated()
    for t in gamma:
        assert g.accept(t)
    assert g.matcher.is_terminated()
    assert not g.accept(beta[0]) and "rejected token" in g.error
    g.free()
    assert released == [g] and g.matcher is None


def test_completed_grammar_wins_over_min_tokens():
    logits = torch.randn(2, 64)
    rows = [SamplingRow(SamplingParams(temperature=0, min_tokens=5), output_token_ids=[7], eos_token_ids={2}),
            SamplingRow(SamplingParams(temperature=1.0, seed=3, min_tokens=5), output_token_ids=[7],
                        eos_token_ids={2})]
    out = Sampler()(logits, rows, (_bitmask([[2], [2, 9]], 64), None))
    assert out.token_ids.tolist() == [2, 9]  # row 0: only EOS left -> EOS; row 1: min_tokens still bars EOS


def test_rejected_token_is_the_requests_fault_only_when_the_mask_allowed_it_or_allowed_nothing():
    """A token the step's mask allowed (or a row allowing nothing) that the grammar then rejects is the grammar's
    own inconsistency with the vocabulary (a 400); a masked-out token means the engine ignored its mask (a 500).
    The real path is ``test_grammar_this_vocabulary_cannot_follow_...`` in test_structured_outputs.py."""
    from pitstop.engine.structured_output.manager import _rejection_type
    from pitstop.scheduler_output import StructuredBatch

    bitmask = np.zeros((2, 3), dtype=np.int32)
    bitmask[0, 1] = 1 << 5  # row 0 allows token 37 only; row 1 allows nothing
    batch = StructuredBatch(bitmask=bitmask, rows={"a": 0, "b": 1})
    assert _rejection_type(batch, "a", 37) == "invalid_request_error"
    assert _rejection_type(batch, "a", 36) == "server_error"
    assert _rejection_type(batch, "a", 10_000) == "server_error"  # past the row: forbidden
    assert _rejection_type(batch, "b", 3) == "invalid_request_error"
    assert _rejection_type(batch, "c", 37) == "server_error"  # no row: not constrained this step
