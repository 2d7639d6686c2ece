"""The goodput draft budget of speculative decoding (SmartSpec's rule): the learned step time, the acceptance
estimates, the allocation on flat and linear step costs, and the drafter applying it (or not: ``draft_budget``
"none", ``disable_by_batch_size``)."""

from __future__ import annotations

import pytest

from pitstop.config import SpeculativeConfig
from pitstop.engine.spec_decode.draft_budget import (AcceptanceEstimate, StepTimeModel, allocate_drafts,
                                                     geometric_values as geo, token_bucket)


def _model(fn, counts) -> StepTimeModel:
    m = StepTimeModel()
    for n in counts:
        m.observe(n, fn(n))
    return m


def test_token_bucket() -> None:
    assert [token_bucket(n) for n in (1, 17, 32)] == [1, 17, 32]
    assert token_bucket(33) == 32 and token_bucket(100) == 96 and token_bucket(1000) == 960
    assert len({token_bucket(n) for n in range(64, 128)}) == 8  # 8 buckets per doubling


def test_step_time_model_interpolates_and_extrapolates() -> None:
    m = StepTimeModel()
    assert m.predict(5) is None
    m.observe(2, 0.010)
    m.observe(10, 0.030)
    m.observe(0, 1.0)  # ignored: no tokens
    assert m.predict(1) == pytest.approx(0.005)  # below the smallest bucket: proportional
    assert m.predict(6) == pytest.approx(0.020)  # between: linear
    assert m.predict(20) == pytest.approx(0.060)  # above the largest: proportional
    m.observe(10, 0.050)  # moving average, weight 0.2 for the newest
    assert m.predict(10) == pytest.approx(0.034)


def test_acceptance_model() -> None:
    a = AcceptanceEstimate(prior=0.5, prior_weight=4)
    assert a.rate("x") == pytest.approx(0.5)
    for _ in range(10):
        a.observe("good", 8, 8)  # every draft accepted: no rejection counted
        a.observe("bad", 8, 0)
    assert a.rate("good") > 0.9 and a.rate("bad") < 0.3
    assert a.rate("new") == pytest.approx(a.global_rate())  # a new request starts from the engine-wide rate
    a.forget("good")
    assert "good" not in a.per_request


def test_flat_step_time_keeps_every_draft() -> None:
    # memory-bound: a step costs the same at 1..64 tokens, so any draft with a chance of acceptance pays
    flat = _model(lambda n: 0.030, range(1, 65))
    keep = allocate_drafts(1, 1, {"r": geo(8, 0.3)}, flat)
    assert keep == {"r": 8}


def test_linear_step_time_cuts_unlikely_drafts() -> None:
    # compute-bound: a fixed part plus the same cost per token; 32 decodes; a draft token pays only if its expected
    # value exceeds the step's expected tokens per token of cost
    linear = _model(lambda n: 0.010 + 0.001 * n, range(16, 600, 7))
    drafts = {f"r{i}": geo(8, 0.3) for i in range(32)}
    assert sum(allocate_drafts(32, 32, drafts, linear).values()) == 0
    keep = allocate_drafts(32, 32, {**drafts, "likely": geo(8, 0.99)}, linear)
    assert keep["likely"] == 8 and sum(keep.values()) == 8


def test_knee_keeps_drafts_up_to_the_knee() -> None:
    # flat to 16 tokens, then linear: 4 decodes with low acceptance get drafts only up to about the knee
    knee = _model(lambda n: 0.030 * max(1.0, n / 16), range(1, 200))
    keep = allocate_drafts(4, 4, {f"r{i}": geo(8, 0.4) for i in range(4)}, knee)
    assert 8 <= sum(keep.values()) <= 16
    assert max(keep.values()) - min(keep.values()) <= 1  # equal rates: spread evenly, first positions first


def test_no_data_keeps_all() -> None:
    assert allocate_drafts(1, 1, {"r": geo(5, 0.1)}, StepTimeModel()) == {"r": 5}


def test_proposer_values_order_the_tokens() -> None:
    # a proposer's own estimates (e.g. suffix-tree path probabilities): the confident draft is kept longer
    linear = _model(lambda n: 0.010 + 0.001 * n, range(16, 600, 7))
    keep = allocate_drafts(32, 32, {"sure": [0.99, 0.98, 0.9, 0.2], "unsure": [0.3, 0.1]}, linear)
    assert keep == {"sure": 3, "unsure": 0}


def test_calibration_of_proposer_values() -> None:
    a = AcceptanceEstimate(prior_weight=4)
    assert a.calibration() == pytest.approx(1.0)
    for _ in range(20):
        a.observe_values(predicted=2.0, accepted=0)  # a proposer that promised 2 tokens a verify and got none
    assert a.calibration() < 0.1


def test_config_keys() -> None:
    assert SpeculativeConfig.parse({"method": "ngram"}).draft_budget == "goodput"
    assert SpeculativeConfig.parse({"method": "ngram", "draft_budget": "none", "disable_by_batch_size": 4})
    with pytest.raises(ValueError, match="draft_budget"):
        SpeculativeConfig.parse({"method": "ngram", "draft_budget": "max"})
    with pytest.raises(ValueError, match="disable_by_batch_size"):
        SpeculativeConfig.parse({"method": "ngram", "disable_by_batch_size": 0})


# ---- the drafter in an engine (the paged echo double; step time from a cost function of the step's tokens) --------
from fake_executor import Clock  # noqa: E402
from pitstop.config import EngineConfig  # noqa: E402
from pitstop.engine.llm_engine import LLMEngine  # noqa: E402
from pitstop.engine.spec_decode.drafter import Drafter  # noqa: E402
from pitstop.engine.spec_decode.proposer import Proposer  # noqa: E402
from pitstop.sampling_params import SamplingParams  # noqa: E402
from test_spec_decode_kv import SpecEchoExecutor, run_all  # noqa: E402


class CostEcho(SpecEchoExecutor):
    """The verifying echo double with ``step_time_s = cost(tokens in the step)``."""

    def __init__(self, cost, *a) -> None:
        super().__init__(*a)
        self.cost = cost

    def execute(self, so):
        res = super().execute(so)
        res.step_time_s = self.cost(so.num_batched_tokens)
        return res


class WrongProposer(Proposer):
    """Always drafts ``max_tokens`` tokens the target never emits (the echo's next token plus one)."""

    def __init__(self, ex) -> None:
        self.ex = ex

    def propose(self, request, max_tokens):
        return [(self.ex.next_token(list(request.all_token_ids)) + 1) % self.ex.vocab] * max_tokens


def _run(cost, budget: str, num_requests: int = 4, **spec) -> tuple[dict, list]:
    ex = CostEcho(cost, 128, 4)
    config = EngineConfig(block_size=4, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                                            "draft_budget": budget, **spec})
    eng = LLMEngine(config, executor=ex, clock=Clock(), num_blocks=128, eos_token_ids=frozenset({0}),
                    vocab_size=1000, max_model_len=256)
    eng.drafter = Drafter(config.speculative_config, eng.max_model_len, WrongProposer(ex))
    for i in range(num_requests):
        eng.add_request(str(i), [5 + i, 6, 7, 8], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    done = run_all(eng)
    eng.kv_manager.assert_idle()
    return {rid: o.outputs[0].token_ids for rid, o in done.items()}, ex.steps


def test_goodput_budget_stops_useless_drafts_on_linear_cost() -> None:
    linear = lambda n: 0.002 + 0.01 * n  # noqa: E731
    tokens_none, steps_none = _run(linear, "none")
    tokens_gp, steps_gp = _run(linear, "goodput")
    assert tokens_gp == tokens_none  # drafts never change the output
    drafted_none = sum(so.num_draft_tokens for so in steps_none)
    drafted_gp = sum(so.num_draft_tokens for so in steps_gp)
    assert drafted_none >= 4 * 4 * 30  # every decode step drafted 4 per request
    assert drafted_gp <= drafted_none // 10  # after a few verifies the rejections stop the drafts


def test_goodput_budget_keeps_drafts_on_flat_cost() -> None:
    flat = lambda n: 0.030  # noqa: E731
    _, steps_none = _run(flat, "none")
    _, steps_gp = _run(flat, "goodput")
    # all but the first steps' (the model learns that a smaller step costs the same: see StepTimeModel)
    assert sum(so.num_draft_tokens for so in steps_gp) >= 0.9 * sum(so.num_draft_tokens for so in steps_none)


def test_disable_by_batch_size() -> None:
    flat = lambda n: 0.030  # noqa: E731
    _, steps = _run(flat, "none", num_requests=4, disable_by_batch_size=2)
    assert all(so.num_draft_tokens == 0 for so in steps if len(so.scheduled) > 2)
    _, steps = _run(flat, "none", num_requests=2, disable_by_batch_size=2)
    assert sum(so.num_draft_tokens for so in steps) > 0
