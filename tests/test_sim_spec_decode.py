"""Speculative decoding in the simulator: verify steps are priced as K + 1 tokens per sequence by the cost models and
an acceptance model draws each verify's accepted length, so cluster what-ifs can include speculation."""

from __future__ import annotations

import pytest

from pitstop.executor.acceptance import AcceptanceModel
from pitstop.request import Request
from pitstop.sampling_params import SamplingParams
from pitstop.scheduler_output import ScheduledRequest, SchedulerOutput
from pitstop.sim.cluster import SimRequest
from pitstop.sim.cost_models.interface import StepShape
from pitstop.sim.simulator import SimConfig, simulate
from pitstop.sim.workload import PromptFactory


def _reqs(n, plen, olen):
    pf = PromptFactory(1000)
    return [SimRequest(f"r{i}", 0.0, plen, olen, pf.unique(i, plen), (i,), 16) for i in range(n)]


def _run(spec, n=4):
    cfg = SimConfig(model="smollm2-135m", hardware="CPU-this-machine", cost_model="roofline", replicas=1,
                    kv_cache_tokens=16384, max_model_len=2048, speculative_config=spec)
    res, cluster = simulate(cfg, _reqs(n, 200, 64))
    return res["summary"], cluster


def test_acceptance_model_rates():
    m = AcceptanceModel(0.6, seed=1)
    draws = [m.num_accepted(4) for _ in range(20000)]
    mean = sum(draws) / len(draws)
    assert abs(mean + 1 - m.expected_tokens(4)) < 0.03  # E[accepted] + 1 = sum_{j<=K} 0.6^j
    assert AcceptanceModel([1.0, 0.0]).num_accepted(5) == 1
    assert AcceptanceModel(1.0).num_accepted(5) == 5 and AcceptanceModel(0.0).num_accepted(5) == 0
    with pytest.raises(ValueError):
        AcceptanceModel([1.5])


def test_verify_shape_counts_logits_rows_and_draft_tokens():
    req = Request("a", [1] * 10, SamplingParams(), 0.0, 16)
    so = SchedulerOutput([ScheduledRequest(req, 5, 10, [], True, [7, 7, 7, 7])])
    sh = StepShape.from_output(so)
    assert (sh.num_tokens, sh.num_sampled, sh.draft_tokens) == (5, 5, 4)
    assert sh.prefill_attn_pairs == 5 * (10 + 3)  # a causal 5-token chunk on 10 cached tokens


def test_high_acceptance_lowers_tpot_and_zero_acceptance_raises_it():
    base, _ = _run(None)
    good, cluster = _run({"num_speculative_tokens": 4, "acceptance_rate": 0.9})
    bad, _ = _run({"num_speculative_tokens": 4, "acceptance_rate": 0.0})
    assert good["completed"] == bad["completed"] == base["completed"] == 4
    assert good["tpot_ms"]["mean"] < 0.6 * base["tpot_ms"]["mean"]
    assert bad["tpot_ms"]["mean"] > base["tpot_ms"]["mean"]
    stats = cluster.replicas[0].engine.stats()
    assert stats["spec_num_draft_tokens"] > 0
    assert 0.82 < stats["spec_acceptance_rate_per_position"][0] < 0.98  # the model's 0.9 at the first position
    assert 0.65 < stats["spec_acceptance_rate"] < 0.9  # geometric: (0.9 + .. + 0.9^4) / 4 = 0.77


def test_profiler_measures_verify_steps(tmp_path):
    """The profiler's ``verify`` scenario: real steps of b sequences verifying K drafts each (K + 1 tokens per
    sequence), recorded with their draft tokens and logits rows."""
    from model_fixtures import make_tiny_model

    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine
    from pitstop.sim.profiler import Profiler

    engine = build_engine(EngineConfig(model=str(make_tiny_model(tmp_path, "llama")), dtype="float32",
                                       kv_cache_memory="2MiB", max_model_len=128, skip_tokenizer_init=True))
    grid = {"prefill": [], "prefill_with_prefix": [], "decode_batches": [], "decode_contexts": [], "mixed": [],
            "verify": [(3, 4, 20)], "decode_steps": 3, "repeats": 1}
    prof = Profiler(engine=engine)
    prof.run(grid, log=lambda *a, **k: None)
    verify = [p for p in prof.points if p["kind"] == "verify"]
    assert verify and verify[0]["draft_tokens"] == 12 and verify[0]["num_tokens"] == 15
    assert verify[0]["num_sampled"] == 15


def test_simulate_cli_flag_is_checked():
    import argparse

    from pitstop.cli.simulate import _spec_json
    assert _spec_json('{"num_speculative_tokens": 4, "acceptance_rate": 0.7}') == {"num_speculative_tokens": 4,
                                                                                   "acceptance_rate": 0.7}
    for bad in ('{"acceptance_rate": 1.5}', '{"k": 4}', "[1]", "{oops"):
        with pytest.raises(argparse.ArgumentTypeError):
            _spec_json(bad)
