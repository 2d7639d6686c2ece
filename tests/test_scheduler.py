"""Scheduler behaviour on the engine loop with a paged echo executor (token-level test double)."""

from __future__ import annotations

import pytest

from fake_executor import Clock, PagedEchoExecutor
from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.sampling_params import SamplingParams


def make_engine(num_blocks=64, block_size=4, **cfg) -> tuple[LLMEngine, PagedEchoExecutor]:
    ex = PagedEchoExecutor(num_blocks, block_size)
    config = EngineConfig(block_size=block_size, **cfg)
    eng = LLMEngine(config, executor=ex, clock=Clock(), num_blocks=num_blocks, eos_token_ids=frozenset({0}),
                    vocab_size=1000, max_model_len=cfg.get("max_model_len") or 256)
    return eng, ex


def run_all(eng: LLMEngine) -> dict:
    done = {}
    for _ in range(10_000):
        if not eng.has_unfinished_requests():
            break
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    assert not eng.has_unfinished_requests()
    eng.scheduler.check_kv_accounting()
    return done


def reference(prompt: list[int], n: int, vocab: int = 1000) -> list[int]:
    ex = PagedEchoExecutor(1, 1, vocab)
    ctx, out = list(prompt), []
    for _ in range(n):
        t = ex.next_token(ctx)
        out.append(t)
        ctx.append(t)
    return out


PROMPTS = [list(range(1, 1 + L)) for L in (3, 17, 9, 30, 1, 12)]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def test_token_budget_and_decodes_before_prefills_in_priority():
    eng, ex = make_engine(max_num_batched_tokens=8, max_num_seqs=4)
    for p in PROMPTS:
        eng.add_request(None, p, GREEDY)
    done = run_all(eng)
    for so in ex.steps:
        assert so.num_batched_tokens <= 8
        assert len(so.scheduled) <= 4
        kinds = [s.is_prefill for s in so.scheduled]
        assert kinds == sorted(kinds, reverse=True)  # prefills first in the flattened batch
    assert any(so.num_prefill_tokens and so.num_decode_tokens for so in ex.steps)  # mixed steps
    for rid, p in zip(sorted(done, key=int), PROMPTS):
        assert done[rid].outputs[0].token_ids == reference(p, 12)


@pytest.mark.parametrize("budget", [1, 3, 5, 64])
def test_chunked_prefill_gives_same_tokens(budget):
    eng, ex = make_engine(max_num_batched_tokens=budget)
    eng.add_request(None, PROMPTS[3], GREEDY)
    out = run_all(eng)["1"]
    assert out.outputs[0].token_ids == reference(PROMPTS[3], 12)
    assert max(s.num_tokens for so in ex.steps for s in so.scheduled) <= budget


def test_preemption_recomputes_and_gives_same_tokens():
    eng, ex = make_engine(num_blocks=13, block_size=4, max_num_batched_tokens=64, max_model_len=52)
    for p in PROMPTS[:4]:
        eng.add_request(None, p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    done = run_all(eng)
    assert eng.scheduler.num_preemptions > 0
    assert any(o.metrics.num_preemptions for o in done.values())
    for i, p in enumerate(PROMPTS[:4], 1):
        assert done[str(i)].outputs[0].token_ids == reference(p, 20)


def test_preemption_victim_is_newest():
    eng, ex = make_engine(num_blocks=10, block_size=4, max_num_batched_tokens=64, max_model_len=40)
    for p in PROMPTS[:3]:
        eng.add_request(None, p, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    first = None
    while eng.has_unfinished_requests() and first is None:
        eng.step()
        so = ex.steps[-1]
        first = so.preempted_ids[0] if so.preempted_ids else None
    running = [r.request_id for r in eng.scheduler.running] + [first]
    assert first == max(running, key=int)
    run_all(eng)


def test_prefix_cache_hit_computes_only_new_tokens():
    eng, ex = make_engine(block_size=4)
    shared = list(range(100, 124))  # 6 full blocks
    eng.add_request(None, shared + [1, 2], GREEDY)
    run_all(eng)
    before = ex.computed_tokens
    eng.add_request(None, shared + [3, 4, 5], GREEDY)
    out = run_all(eng)["2"]
    assert out.num_cached_tokens == 24
    assert ex.computed_tokens - before == 3 + 11  # the 3 new prompt tokens + 11 decode steps
    assert out.outputs[0].token_ids == reference(shared + [3, 4, 5], 12)


def test_cache_salt_separates_tenants():
    eng, ex = make_engine(block_size=4)
    shared = list(range(100, 124))
    eng.add_request(None, shared + [1], GREEDY, cache_salt="a")
    run_all(eng)
    eng.add_request(None, shared + [2], GREEDY, cache_salt="b")
    eng.add_request(None, shared + [3], GREEDY, cache_salt="a")
    done = run_all(eng)
    assert done["2"].num_cached_tokens == 0
    assert done["3"].num_cached_tokens == 24


def test_n_completions_share_prompt_blocks():
    eng, ex = make_engine(block_size=4)
    prompt = list(range(1, 30))
    eng.add_request(None, prompt, SamplingParams(n=3, temperature=0, max_tokens=5, ignore_eos=True))
    out = run_all(eng)["1"]
    assert len(out.outputs) == 3 and all(o.token_ids == reference(prompt, 5) for o in out.outputs)
    # the first computes the prompt; siblings hit its 7 full blocks and compute only the last token
    assert ex.computed_tokens == 29 + 2 * 1 + 3 * 4


def test_stop_conditions():
    eng, ex = make_engine()
    p = PROMPTS[1]
    ref = reference(p, 12)
    eng.add_request("eos", p, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[ref[4]]))
    eng.add_request("len", p, SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))
    eng.add_request("min", p, SamplingParams(temperature=0, max_tokens=12, min_tokens=6,
                                              stop_token_ids=[ref[2]], ignore_eos=True))
    done = run_all(eng)
    assert done["eos"].outputs[0].token_ids == ref[:5] and done["eos"].outputs[0].finish_reason == "stop"
    assert done["eos"].outputs[0].stop_reason == ref[4]
    assert done["len"].outputs[0].token_ids == ref[:7] and done["len"].outputs[0].finish_reason == "length"
    assert done["min"].outputs[0].finish_reason == "length" or ref[2] in ref[6:]


def test_max_model_len_stops_with_length():
    eng, ex = make_engine(max_model_len=20)
    eng.add_request(None, list(range(1, 16)), SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    out = run_all(eng)["1"]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 20
    assert out.outputs[0].finish_reason == "length"


def test_abort_frees_blocks_mid_flight():
    eng, ex = make_engine()
    eng.add_request("a", PROMPTS[3], GREEDY)
    eng.add_request("b", PROMPTS[1], GREEDY)
    eng.step()
    assert eng.kv_manager.req_blocks
    eng.abort_request("a")
    outs = eng.step()
    assert any(o.request_id == "a" and o.outputs[0].finish_reason == "abort" for o in outs)
    done = run_all(eng)
    assert done["b"].outputs[0].token_ids == reference(PROMPTS[1], 12)


def test_invalid_prompts_rejected():
    eng, _ = make_engine(max_model_len=32)
    with pytest.raises(ValueError, match="empty"):
        eng.add_request(None, [], GREEDY)
    with pytest.raises(ValueError, match="max_model_len=32"):
        eng.add_request(None, list(range(1, 40)), GREEDY)
    with pytest.raises(ValueError, match="outside"):
        eng.add_request(None, [5, 1000], GREEDY)
    assert not eng.has_unfinished_requests()


def test_kv_cache_smaller_than_context_is_rejected():
    with pytest.raises(ValueError, match="raise kv_cache_memory"):
        make_engine(num_blocks=4, block_size=4, max_model_len=64)
