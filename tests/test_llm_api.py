"""The public ``LLM`` API on the real default model: validation, sampling, stop strings, logprobs,
n > 1, chat, prefix-cache accounting, and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pitstop import LLM, SamplingParams
from pitstop.model.resolve import ModelNotFoundError


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", kv_cache_memory="128MiB", max_model_len=512)


def test_batch_rejected_before_any_work_with_index(llm):
    good = "Hello there"
    with pytest.raises(ValueError, match=r"request 2"):
        llm.generate([good, good, "", good], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match=r"request 1.*max_model_len=512"):
        llm.generate([good, list(range(1, 600))], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        llm.generate([good] * 3, [SamplingParams()] * 2)
    assert not llm.llm_engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_seeded_sampling_reproducible_across_batches(llm):
    sp = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate(["Tell me a story"], sp, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    mixed = llm.generate(["Why is the sky blue?", "Tell me a story", "abc"], [others, sp, others],
                         use_tqdm=False)[1].outputs[0].token_ids
    assert alone == mixed
    other_seed = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=99, max_tokens=24, ignore_eos=True)
    assert llm.generate(["Tell me a story"], other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_stop_string_trims_text(llm):
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    full = llm.generate(["The capital of France is"], greedy, use_tqdm=False)[0].outputs[0]
    text = full.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assume_ok = stop.strip() and text.find(stop) == len(text) // 2
    if not assume_ok:
        pytest.skip("generated text has no unique stop candidate")
    out = llm.generate(["The capital of France is"],
                       SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]), use_tqdm=False)[0]
    c = out.outputs[0]
    assert c.text == text[: text.find(stop)]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert len(c.token_ids) < len(full.token_ids)


def test_logprobs_match_reference(llm, smollm2_dir):
    from transformers import AutoModelForCausalLM
    ids = llm.get_tokenizer()("The quick brown fox").input_ids
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=3, logprobs=5), use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 3
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1].float(), -1)
    top = torch.topk(ref, 5)
    first = out.logprobs[0]
    assert set(first) == set(top.indices.tolist())  # the greedy token is the top-1
    for tid, lp in zip(top.indices.tolist(), top.values.tolist()):
        assert abs(first[tid].logprob - lp) < 1e-3
    assert first[out.token_ids[0]].rank == 1


def test_n_completions_share_prompt(llm):
    prompt = "Write a list of fruits: " * 6
    out = llm.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_prefix_cache_counts_only_new_prompt_tokens(llm):
    engine = llm.llm_engine
    system = "You are a helpful assistant that answers briefly and precisely. " * 8
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    first = llm.generate([system + "What is 2+2?"], sp, use_tqdm=False)[0]
    before = engine.scheduler.num_computed_tokens
    out = llm.generate([system + "Name a color."], sp, use_tqdm=False)[0]
    computed = engine.scheduler.num_computed_tokens - before
    prompt_len = len(out.prompt_token_ids)
    common = next(i for i, (a, b) in enumerate(zip(first.prompt_token_ids, out.prompt_token_ids)) if a != b)
    assert common > 64 and out.num_cached_tokens == common // 16 * 16
    assert computed == prompt_len - out.num_cached_tokens + 1  # new prompt tokens + one decode
    assert out.metrics.num_computed_prompt_tokens == prompt_len - out.num_cached_tokens


def test_reset_prefix_cache_makes_the_next_run_cold(llm):
    engine = llm.llm_engine
    prompt = "Reset me: the same prompt twice, with the prefix cache dropped in between. " * 4
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    first = llm.generate([prompt], sp, use_tqdm=False)[0]
    assert llm.generate([prompt], sp, use_tqdm=False)[0].num_cached_tokens >= 16
    free = engine.kv_manager.num_free_blocks
    assert engine.reset_prefix_cache() >= len(first.prompt_token_ids) // 16
    assert engine.kv_manager.num_free_blocks == free  # cached free blocks were free already: nothing leaks
    again = llm.generate([prompt], sp, use_tqdm=False)[0]
    assert again.num_cached_tokens == 0 and again.outputs[0].token_ids == first.outputs[0].token_ids


def test_chat_applies_template(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    tok = llm.get_tokenizer()
    assert "<|im_start|>assistant" in tok.decode(out.prompt_token_ids)
    assert "Paris" in out.outputs[0].text


def test_bad_model_path_is_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFoundError):
        LLM(str(tmp_path / "nope"))
    proc = subprocess.run([sys.executable, "-m", "pitstop.cli.main", "generate", "--model", str(tmp_path / "nope"),
                           "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("pitstop: error:") and "nope" in lines[0]
