"""Speculative decoding on real models: greedy output with speculation (n-gram and SuffixDecoding) is token for
token the output without it, on SmolLM2-135M (float32) and a tiny random Llama, with chunked prefill, prefix-cache
hits, preemption, n > 1, stop strings and structured outputs; seeded sampling with speculation is reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from model_fixtures import make_tiny_model
from pitstop import LLM, SamplingParams
from pitstop.sampling_params import StructuredOutputsParams

CODE = ("def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
        "    return 2 * (width + height)\n\n")
PROMPTS = [
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
    CODE + "# Rewrite the two functions above with type hints and docstrings.\n",
    "List the numbers from 1 to 20 separated by commas:",
    "Write a short poem about the sea.",
]
NEW = 48


def _llm(model_dir, spec=None, **kw):
    args = dict(dtype="float32", kv_cache_memory="64MiB", max_model_len=512, max_num_batched_tokens=256)
    args.update(kw)
    if spec is not None:  # these tests check verification itself: every proposed draft is verified
        spec = {"draft_budget": "none", **spec}
    return LLM(str(model_dir), speculative_config=spec, **args)


@pytest.fixture(scope="module")
def base_outputs(smollm2_dir):
    llm = _llm(smollm2_dir)
    sp = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]


def _methods():
    out = [{"method": "ngram"}, {"method": "suffix", "suffix_backend": "python"}]
    try:
        import arctic_inference  # noqa: F401
        out.append({"method": "suffix", "suffix_backend": "arctic"})
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("spec", _methods(), ids=lambda d: "-".join(map(str, d.values())))
def test_greedy_speculation_equals_plain_greedy(smollm2_dir, base_outputs, spec):
    llm = _llm(smollm2_dir, dict(spec, num_speculative_tokens=6))
    sp = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)
    outs = llm.generate(PROMPTS, sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == base_outputs
    stats = llm.llm_engine.stats()
    assert stats["spec_num_accepted_tokens"] > 0 and stats["spec_mean_accepted_length"] > 1.0
    assert len(stats["spec_acceptance_rate_per_position"]) == 6


@pytest.mark.parametrize("chunk", [7, 40])
def test_chunked_prefill_prefix_hits_and_n(smollm2_dir, base_outputs, chunk):
    llm = _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 4}, max_num_batched_tokens=chunk,
               block_size=4)
    sp = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True, n=2)
    first = llm.generate(PROMPTS[:2], sp, use_tqdm=False)
    again = llm.generate(PROMPTS[:2], sp, use_tqdm=False)  # prefix-cache hits, blocks written by verifies
    assert all(o.num_cached_tokens > 0 for o in again)
    for a, b, ref in zip(first, again, base_outputs):
        for c in a.outputs + b.outputs:
            assert c.token_ids == ref


def test_preemption_with_speculation(smollm2_dir, base_outputs):
    # 10 blocks of 16 (one 128-token context and a bit): 4 requests of ~90 tokens preempt and recompute
    llm = _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 8},
               kv_cache_memory=10 * 16 * 30 * 2 * 3 * 64 * 4, max_model_len=128, block_size=16)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True), use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == base_outputs


def test_stop_string_inside_an_accepted_run(smollm2_dir, monkeypatch):
    import pitstop.engine.output_processor as op
    cuts = []
    real_cut = op._truncate_output
    monkeypatch.setattr(op, "_truncate_output", lambda req, n: (cuts.append(len(req.output_token_ids) - n),
                                                                 real_cut(req, n)))
    plain, spec = _llm(smollm2_dir), _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 8})
    sp = SamplingParams(temperature=0, max_tokens=NEW)
    text = plain.generate([PROMPTS[1]], sp, use_tqdm=False)[0].outputs[0].text
    starts = [i for i in range(len(text) // 3, len(text) - 4, 7) if text.find(text[i:i + 4]) == i][:8]
    for at in starts:  # stop strings first seen at several places of a copied span
        sp = SamplingParams(temperature=0, max_tokens=NEW, stop=[text[at:at + 4]])
        a = plain.generate([PROMPTS[1]], sp, use_tqdm=False)[0].outputs[0]
        b = spec.generate([PROMPTS[1]], sp, use_tqdm=False)[0].outputs[0]
        assert (b.text, b.token_ids, b.finish_reason) == (a.text, a.token_ids, a.finish_reason)
        assert a.finish_reason == "stop"
    assert any(c > 0 for c in cuts)  # some stop string ended inside a speculative run: its tail was cut


def test_structured_output_with_speculation(smollm2_dir):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array",
              "items": {"type": "string"}, "maxItems": 4}}, "required": ["name", "tags"]}
    sp = SamplingParams(temperature=0, max_tokens=80, structured_outputs=StructuredOutputsParams(json=schema))
    prompt = 'Give a JSON object for the person "name": "Ada", "tags": ["math", "code", "math", "code"]: '
    plain, spec = _llm(smollm2_dir), _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 6})
    a = plain.generate([prompt], sp, use_tqdm=False)[0].outputs[0]
    b = spec.generate([prompt], sp, use_tqdm=False)[0].outputs[0]
    assert b.token_ids == a.token_ids
    json.loads(b.text)
    assert spec.llm_engine.stats()["spec_num_draft_tokens"] > 0
    assert spec.llm_engine.structured_outputs.num_live == 0


def test_seeded_sampling_with_speculation_is_reproducible(smollm2_dir):
    llm = _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 4})
    sp = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=32, ignore_eos=True)
    a = llm.generate(PROMPTS[:2], sp, use_tqdm=False)
    b = llm.generate(PROMPTS[:2], sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_tiny_model_greedy_equals_plain(tmp_path):
    folder = make_tiny_model(tmp_path, "llama")
    g = torch.Generator().manual_seed(0)
    kw = dict(dtype="float32", kv_cache_memory="16MiB", max_model_len=256, max_num_batched_tokens=24, block_size=8,
              skip_tokenizer_init=True)
    plain = LLM(str(folder), **kw)
    spec = LLM(str(folder), speculative_config={"method": "ngram", "num_speculative_tokens": 5,
                                                "prompt_lookup_min": 1}, **kw)
    vocab = plain.llm_engine.vocab_size
    prompts = []
    for n in (5, 40, 17):
        p = torch.randint(1, vocab, (n,), generator=g).tolist()
        prompts.append(p + p[:n // 2])  # a repeated span: something to look up
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    a = plain.generate(prompts, sp, use_tqdm=False)
    b = spec.generate(prompts, sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    assert spec.llm_engine.stats()["spec_num_draft_tokens"] > 0


def test_logprobs_with_speculation(smollm2_dir):
    plain, spec = _llm(smollm2_dir), _llm(smollm2_dir, {"method": "ngram", "num_speculative_tokens": 6})
    sp = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=2)
    a = plain.generate([PROMPTS[1]], sp, use_tqdm=False)[0].outputs[0]
    b = spec.generate([PROMPTS[1]], sp, use_tqdm=False)[0].outputs[0]
    assert b.token_ids == a.token_ids and len(b.logprobs) == len(a.logprobs) == 32
    for x, y in zip(a.logprobs, b.logprobs):
        assert list(x) == list(y)  # the same top-2 and sampled token, in order
        for tok in x:
            assert x[tok].rank == y[tok].rank and abs(x[tok].logprob - y[tok].logprob) < 1e-3
    assert spec.llm_engine.stats()["spec_num_accepted_tokens"] > 0
