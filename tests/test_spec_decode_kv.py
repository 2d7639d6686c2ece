"""Speculative decoding in the engine loop on a paged test double: drafts are budgeted, verified in the same step
as other requests, rejected drafts are rolled back (blocks freed, never cached with wrong tokens) and the tokens
equal those of non-speculative decoding, through chunked prefill, prefix hits, preemption, n > 1 and stop
conditions."""

from __future__ import annotations

import pytest

from fake_executor import Clock, PagedEchoExecutor
from pitstop.config import EngineConfig, SpeculativeConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.engine.spec_decode.drafter import Drafter
from pitstop.engine.spec_decode.proposer import Proposer
from pitstop.sampling_params import SamplingParams
from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


class SpecEchoExecutor(PagedEchoExecutor):
    """The paged echo double, verifying drafts: the target's token after a context is ``next_token(context)``; a
    verify accepts drafts while each equals the target's token after the tokens before it. Every slot it reads must
    hold the token of that position (so a rollback that leaves a rejected draft's K/V under a computed position, or a
    wrong block table, fails)."""

    def execute(self, so: SchedulerOutput) -> ExecutorResult:
        self.steps.append(so)
        sampled, spec = {}, {}
        bs = self.block_size
        for s in so.scheduled:
            req = s.request
            known = req.all_token_ids[s.start:s.start + s.num_known_tokens]
            seq = known + list(s.draft_token_ids)
            for i, tok in enumerate(seq):
                pos = s.start + i
                self.slots[s.block_ids[pos // bs] * bs + pos % bs] = tok
            self.computed_tokens += s.num_tokens
            if not s.sample:
                continue
            end = s.start + s.num_known_tokens
            ctx = [self.slots[s.block_ids[p // bs] * bs + p % bs] for p in range(end)]
            assert ctx == req.all_token_ids[:end], f"KV of {req.request_id} does not hold its tokens"
            if not s.draft_token_ids:
                sampled[req.request_id] = self.next_token(ctx)
                continue
            out = []
            for d in s.draft_token_ids:
                t = self.next_token(ctx)
                out.append(t)
                if t != d:
                    break
                ctx = ctx + [d]
            else:
                out.append(self.next_token(ctx))
            spec[req.request_id] = out
        return ExecutorResult(sampled=sampled, step_time_s=0.0, spec_tokens=spec)


class OracleProposer(Proposer):
    """Drafts the target's next ``good`` tokens (cycling 0..max through the calls) then wrong ones, so every
    acceptance length occurs."""

    def __init__(self, ex: PagedEchoExecutor) -> None:
        self.ex = ex
        self.calls = 0
        self.finished: list[str] = []

    def propose(self, request, max_tokens):
        self.calls += 1
        good = self.calls % (max_tokens + 1)
        ctx, out = list(request.all_token_ids), []
        for j in range(max_tokens):
            t = self.ex.next_token(ctx) if j < good else (self.ex.next_token(ctx) + 1) % self.ex.vocab
            out.append(t)
            ctx.append(t)
        return out

    def finish(self, request):
        self.finished.append(request.request_id)


def make_engine(spec: bool, num_blocks=64, block_size=4, k=3, **cfg):
    ex = SpecEchoExecutor(num_blocks, block_size)
    config = EngineConfig(block_size=block_size, speculative_config={"method": "ngram", "num_speculative_tokens": k}
                          if spec else None, **cfg)
    eng = LLMEngine(config, executor=ex, clock=Clock(), num_blocks=num_blocks, eos_token_ids=frozenset({0}),
                    vocab_size=1000, max_model_len=cfg.get("max_model_len") or 256)
    proposer = None
    if spec:
        proposer = OracleProposer(ex)
        eng.drafter = Drafter(config.speculative_config, eng.max_model_len, proposer)
    return eng, ex, proposer


def run_all(eng: LLMEngine) -> dict:
    done = {}
    for _ in range(10_000):
        if not eng.has_unfinished_requests():
            break
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
        eng.scheduler.check_kv_accounting()
        _check_cached_blocks(eng)
    return done


def _check_cached_blocks(eng: LLMEngine) -> None:
    """Every block a request holds that is registered in the prefix cache has the key of that request's tokens."""
    kv = eng.kv_manager
    for rid, blocks in kv.req_blocks.items():
        req = eng.scheduler.requests[rid]
        hashes = kv._block_hashes(req, min(len(blocks), len(req.all_token_ids) // kv.block_size))
        for i, b in enumerate(blocks):
            if b.block_hash is not None and i < len(hashes):
                assert b.key == hashes[i][1], f"block {i} of {rid} cached under other tokens"
        assert len(blocks) <= -(-(req.num_computed_tokens + 1 + 3) // kv.block_size) + 1


def _tokens(done):
    return {rid: [c.token_ids for c in o.outputs] for rid, o in done.items()}


def _generate(spec, prompts, params, **cfg):
    eng, ex, prop = make_engine(spec, **cfg)
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, params)
    done = run_all(eng)
    eng.kv_manager.assert_idle() if not eng.scheduler.programs.has_pins else None
    return _tokens(done), eng, ex, prop


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], list(range(1, 30)), [3] * 13, [42, 17]]


@pytest.mark.parametrize("cfg", [dict(), dict(max_num_batched_tokens=5), dict(num_blocks=20, max_model_len=64),
                                 dict(enable_prefix_caching=False), dict(block_size=1, num_blocks=256),
                                 dict(max_num_seqs=2)])
def test_speculation_emits_the_same_tokens(cfg):
    params = SamplingParams(temperature=0, max_tokens=25, ignore_eos=True)
    base, *_ = _generate(False, PROMPTS, params, **cfg)
    spec, eng, ex, prop = _generate(True, PROMPTS, params, **cfg)
    assert spec == base
    stats = eng.drafter.stats
    assert stats.num_accepted_tokens > 0 and stats.num_accepted_tokens < stats.num_draft_tokens
    assert sum(so.num_draft_tokens for so in ex.steps) == stats.num_draft_tokens
    assert sorted(prop.finished) == sorted(str(i) for i in range(len(PROMPTS)))  # proposer state released
    if cfg.get("num_blocks") == 20:
        assert eng.scheduler.num_preemptions > 0


def test_verify_runs_in_the_same_step_as_prefill_and_decodes():
    eng, ex, _ = make_engine(True)
    eng.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    eng.step()  # a's prefill
    eng.add_request("b", list(range(10, 30)), SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    eng.add_request("c", [7], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, speculative=False))
    eng.step()
    so = ex.steps[-1]
    kinds = {s.request.request_id: (s.num_tokens, len(s.draft_token_ids)) for s in so.scheduled}
    assert kinds["a"][1] > 0 and kinds["a"][0] == 1 + kinds["a"][1]  # a verify ...
    assert kinds["b"] == (20, 0)  # ... with a prefill
    run_all(eng)


def test_opt_out_gets_no_drafts():
    eng, ex, _ = make_engine(True)
    eng.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, speculative=False))
    run_all(eng)
    assert all(not s.draft_token_ids for so in ex.steps for s in so.scheduled)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 4, 7])
def test_max_tokens_inside_a_run(max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    base, *_ = _generate(False, PROMPTS, params)
    spec, eng, *_ = _generate(True, PROMPTS, params)
    assert spec == base
    assert all(len(t[0]) == max_tokens for t in spec.values())


def test_stop_token_inside_an_accepted_run_truncates():
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    base, *_ = _generate(False, PROMPTS, params)
    stop = base["1"][0][6]  # a token the second request emits mid-run
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop_token_ids=[stop])
    base, *_ = _generate(False, PROMPTS, params)
    spec, *_ = _generate(True, PROMPTS, params)
    assert spec == base
    assert spec["1"][0][-1] == stop and len(spec["1"][0]) <= 7


def test_max_model_len_bounds_drafts():
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=None)
    base, *_ = _generate(False, [list(range(1, 20))], params, max_model_len=32)
    spec, eng, ex, _ = _generate(True, [list(range(1, 20))], params, max_model_len=32)
    assert spec == base and len(spec["0"][0]) == 32 - 19
    assert max(s.start + s.num_tokens for so in ex.steps for s in so.scheduled) <= 31


def test_n_greater_than_one_and_prefix_hits():
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=3)
    base, *_ = _generate(False, PROMPTS[:2], params)
    spec, eng, *_ = _generate(True, PROMPTS[:2], params)
    assert spec == base
    assert eng.kv_manager.prefix_hits > 0


def test_rollback_frees_the_rejected_drafts_blocks():
    eng, ex, prop = make_engine(True, block_size=2, k=6, num_blocks=128)
    eng.drafter.proposer = type("Wrong", (Proposer,), {"propose": lambda self, r, k: [999] * k})()
    eng.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    eng.step()  # prefill: 3 tokens, 2 blocks
    free_before = eng.kv_manager.num_free_blocks
    eng.step()  # verify 1 + 6 tokens: positions 3..9 need 5 blocks, then every draft is rejected
    so = ex.steps[-1]
    assert so.scheduled[0].num_tokens == 7 and len(so.scheduled[0].block_ids) == 5
    req = so.scheduled[0].request
    assert req.num_computed_tokens == 4 and len(req.output_token_ids) == 2
    assert len(eng.kv_manager.req_blocks["a"]) == 2  # 4 computed tokens: 2 blocks kept, 3 freed
    assert eng.kv_manager.num_free_blocks == free_before
    assert eng.kv_manager.block_ids("a") == so.scheduled[0].block_ids[:2]
    run_all(eng)


def test_no_room_for_drafts_decodes_without_them():
    eng, ex, _ = make_engine(True, num_blocks=5, block_size=4, k=8, max_model_len=20)
    eng.add_request("a", list(range(1, 16)), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    eng.add_request("b", [1, 2, 3], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    run_all(eng)
    assert eng.scheduler.num_preemptions == 0


def test_unknown_method_and_bad_values_raise():
    with pytest.raises(ValueError, match="method"):
        EngineConfig(speculative_config={"method": "eagle"})
    with pytest.raises(ValueError, match="unknown key"):
        EngineConfig(speculative_config={"method": "ngram", "num_spec_tokens": 3})
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(method="ngram", num_speculative_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        SpeculativeConfig(method="ngram", prompt_lookup_min=4, prompt_lookup_max=2)
    with pytest.raises(ValueError, match="method"):
        EngineConfig(speculative_config={"num_speculative_tokens": 3})


def test_program_pins_with_speculation():
    """A non-final turn's KV (written partly by verifies) is pinned and found by the next turn; same tokens."""
    def turns(spec):
        eng, ex, _ = make_engine(spec, num_blocks=128, ttl_policy="fixed", ttl_seconds=60.0,
                                 scheduling_policy="program-fcfs")
        params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
        eng.add_request("t0", list(range(1, 12)), params, program_id="p", is_last_turn=False)
        first = run_all(eng)["t0"].outputs[0].token_ids
        eng.add_request("t1", list(range(1, 12)) + first + [5, 6, 7], params, program_id="p", is_last_turn=True)
        second = run_all(eng)["t1"]
        return first, second.outputs[0].token_ids, second.num_cached_tokens, eng

    base = turns(False)
    spec = turns(True)
    assert spec[:2] == base[:2]
    assert spec[2] == base[2] > 0  # the pinned blocks were hit as without speculation
    assert spec[3].stats()["pin_hits"] == 1
