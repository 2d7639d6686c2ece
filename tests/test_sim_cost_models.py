"""Cost models of the simulator: roofline regimes and monotonicity, the profiled fit, hardware and model specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pitstop.bench.roofline import ModelShape, decode_bound
from pitstop.sim.cost_models import ProfiledCostModel, RooflineCostModel, StepShape, build_cost_model
from pitstop.sim.cost_models.profiled import FEATURES, nnls
from pitstop.sim.hardware import known_hardware, load_hardware
from pitstop.sim.model_configs import known_models, load_model_config, load_model_shape


def test_specs_ship_and_load():
    assert {"A100-80GB", "H100-SXM", "H200", "CPU-this-machine"} <= set(known_hardware())
    assert {"Llama-3.1-8B", "Llama-3.1-70B", "Qwen2.5-7B", "SmolLM2-135M"} <= set(known_models())
    h100 = load_hardware("h100-sxm")
    assert h100.peak_bf16_flops == pytest.approx(989e12) and h100.memory_bandwidth == pytest.approx(3.35e12)
    s8 = load_model_shape("llama-3.1-8b")
    assert 7.9e9 < s8.total_params() < 8.1e9  # Llama-3.1-8B: 8.03 B parameters
    assert 70e9 < load_model_shape("Llama-3.1-70B").total_params() < 71e9  # 70.6 B
    assert 7.5e9 < load_model_shape("qwen2.5-7b").total_params() < 7.7e9  # 7.6 B (biases not counted)
    assert 0.13e9 < load_model_shape("smollm2-135m").total_params() < 0.14e9
    assert load_model_config("smollm2-135m")["tie_word_embeddings"] is True
    # KV capacity: (80 GB * 0.9 - 16 GB of weights) / 128 KiB per token ~ 427k tokens
    assert 400_000 < h100.kv_cache_tokens(s8) < 450_000
    with pytest.raises(ValueError, match="raise --tp"):
        load_hardware("A100-80GB").kv_cache_tokens(load_model_shape("llama-3.1-70b"), tp=1)
    with pytest.raises(ValueError, match="unknown hardware"):
        load_hardware("TPU-v9")


@pytest.fixture(scope="module")
def h100_8b() -> RooflineCostModel:
    return build_cost_model("roofline", "llama-3.1-8b", "H100-SXM")


def test_roofline_regimes_switch_where_expected(h100_8b):
    cm = h100_8b
    hw = cm.hw
    # batch-1 decode: weights dominate -> memory-bound; time ~ weight bytes / achievable bandwidth
    b1 = cm.breakdown(StepShape.of(decode_contexts=[1024]))
    assert b1.linear_regime == "memory"
    weights = cm.shape.total_params() * 2
    assert b1.linear_s == pytest.approx(weights / (hw.memory_bandwidth * hw.bandwidth_efficiency), rel=0.01)
    # the linear group turns compute-bound at T* ~ (peak*eff_f)/(bw*eff_b) * bytes/flop-per-token ratio
    ridge = (hw.peak_bf16_flops * hw.flops_efficiency) / (hw.memory_bandwidth * hw.bandwidth_efficiency)
    t_star = ridge * weights / (2 * cm.shape.params_per_token())
    assert 200 < t_star < 400
    assert cm.breakdown(StepShape.of(prefill=[(int(t_star * 0.7), 0)])).linear_regime == "memory"
    assert cm.breakdown(StepShape.of(prefill=[(int(t_star * 1.5), 0)])).linear_regime == "compute"
    # long-context decodes: attention reads KV -> memory-bound, grows linearly with context
    a1 = cm.breakdown(StepShape.of(decode_contexts=[32_000] * 32))
    a2 = cm.breakdown(StepShape.of(decode_contexts=[64_000] * 32))
    assert a1.attention_regime == "memory" and a2.attention_s == pytest.approx(2 * a1.attention_s, rel=0.01)
    # a long prefill chunk: attention is compute-bound (q x k pairs)
    assert cm.breakdown(StepShape.of(prefill=[(8192, 0)])).attention_regime == "compute"


def test_roofline_agrees_with_the_benchmark_decode_bound(h100_8b):
    """With efficiencies 1 and no overhead the decode step equals pitstop.bench.roofline's bound (up to the KV
    write and activation bytes, which the decode bound ignores)."""
    from dataclasses import replace
    hw = replace(load_hardware("H100-SXM"), flops_efficiency=1.0, bandwidth_efficiency=1.0, step_overhead_s=0.0,
                 seq_overhead_s=0.0)
    shape = load_model_shape("llama-3.1-8b")
    cm = RooflineCostModel(hw, shape)
    ours = cm.predict(StepShape.of(decode_contexts=[2048] * 8))
    ref = decode_bound(shape, 8, 2048, 2, hw.peak_bf16_flops, hw.memory_bandwidth).bound_s
    assert ours == pytest.approx(ref, rel=0.05)


@pytest.mark.parametrize("kind", ["roofline", "profiled"])
def test_cost_models_monotone_in_tokens(kind, h100_8b):
    cm = h100_8b if kind == "roofline" else ProfiledCostModel(dict(zip(FEATURES, [3e-3, 5e-5, 2e-4, 1e-9, 2e-7])))
    prev = 0.0
    for p in (1, 16, 128, 512, 2048, 8192):
        t = cm.predict(StepShape.of(prefill=[(p, 0)]))
        assert t > prev
        prev = t
    prev = 0.0
    for b in (1, 2, 8, 32, 128):
        t = cm.predict(StepShape.of(decode_contexts=[500] * b))
        assert t >= prev
        prev = t
    prev = 0.0
    for c in (10, 1000, 10_000, 100_000):
        t = cm.predict(StepShape.of(decode_contexts=[c] * 4))
        assert t >= prev
        prev = t
    assert cm.predict(StepShape()) == 0.0


def test_tensor_parallel_speeds_up_and_adds_communication():
    one = build_cost_model("roofline", "llama-3.1-70b", "H100-SXM", tp=1)
    four = build_cost_model("roofline", "llama-3.1-70b", "H100-SXM", tp=4)
    s = StepShape.of(decode_contexts=[2000] * 16)
    assert four.predict(s) < one.predict(s) / 2
    assert four.breakdown(s).comm_s > 0 and one.breakdown(s).comm_s == 0


def test_nnls_and_profiled_fit_recover_coefficients(tmp_path):
    rng = np.random.default_rng(0)
    true = dict(zip(FEATURES, [4e-3, 6e-5, 1.5e-4, 2e-9, 3e-7]))
    truth = ProfiledCostModel(true)
    shapes = []
    for p in (32, 128, 512, 1024):
        shapes.append(StepShape.of(prefill=[(p, 0)]))
        shapes.append(StepShape.of(prefill=[(p, 1024)]))
    for b in (1, 4, 16, 48):
        for c in (64, 512, 1536):
            shapes.append(StepShape.of(decode_contexts=[c] * b))
    shapes.append(StepShape.of(prefill=[(256, 0)], decode_contexts=[512] * 8))
    times = [truth.predict(s) * (1 + rng.normal(0, 0.01)) for s in shapes]
    fitted = ProfiledCostModel.from_measurements(shapes, times, {"model": "x"})
    assert all(v >= 0 for v in fitted.coefficients.values())
    assert fitted.meta["fit_error"]["mean_abs_rel_error"] < 0.03
    for s in shapes:
        assert fitted.predict(s) == pytest.approx(truth.predict(s), rel=0.08)
    path = tmp_path / "p.json"
    fitted.save(path, grid=[{"kind": "x"}])
    again = ProfiledCostModel.load(path)
    assert again.coefficients == pytest.approx(fitted.coefficients)
    assert json.loads(path.read_text())["grid"] == [{"kind": "x"}]
    # nnls clips what plain least squares would make negative
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = nnls(a, np.array([1.0, -1.0, 0.0]))
    assert (x >= 0).all() and x[1] == 0.0


def test_step_shape_from_scheduler_output():
    from pitstop.request import Request
    from pitstop.scheduler_output import ScheduledRequest, SchedulerOutput
    from pitstop.sampling_params import SamplingParams

    def req(i):
        return Request(str(i), [1] * 100, SamplingParams(), 0.0, 10)

    so = SchedulerOutput([ScheduledRequest(req(0), 64, 32, [], True), ScheduledRequest(req(1), 1, 99, [], True),
                          ScheduledRequest(req(2), 16, 0, [], False)])
    s = StepShape.from_output(so)
    assert (s.num_tokens, s.num_seqs, s.num_sampled, s.prefill_tokens, s.decode_seqs) == (81, 3, 2, 80, 1)
    assert s.decode_ctx_tokens == 100 and s.kv_read_tokens == 96 + 100 + 16
    assert s.prefill_attn_pairs == pytest.approx(64 * (32 + 32.5) + 16 * 8.5)
    assert ModelShape  # imported for the roofline module's types


def test_roofline_step_time_equals_predict_of_the_shape():
    """The one-pass ``step_time`` the simulator calls gives exactly ``predict(StepShape.from_output(so))``."""
    import random

    from pitstop.request import Request
    from pitstop.scheduler_output import ScheduledRequest, SchedulerOutput
    from pitstop.sampling_params import SamplingParams

    cm = build_cost_model("roofline", "llama-3.1-8b", "H100-SXM", tp=2)
    rng = random.Random(0)
    req = Request("r", [1] * 10, SamplingParams(), 0.0, 10)
    for _ in range(200):
        batch = [ScheduledRequest(req, rng.choice([1, 1, rng.randint(2, 8192)]), rng.randint(0, 100_000), [],
                                  rng.random() < 0.8) for _ in range(rng.randint(0, 12))]
        so = SchedulerOutput(batch)
        assert cm.step_time(so) == cm.predict(StepShape.from_output(so))


def test_profiled_padded_and_mixed_decode_features():
    """Ragged decode batches cost decode_seqs x longest context; decodes beside a prefill chunk cost extra."""
    from pitstop.sim.cost_models.profiled import FEATURES, ProfiledCostModel
    coef = {k: 0.0 for k in FEATURES}
    coef.update(intercept=0.01, decode_padded_ctx=1e-5, mixed_decode_seqs=2e-3)
    cm = ProfiledCostModel(coef)
    even = StepShape.of(decode_contexts=[500, 500])
    ragged = StepShape.of(decode_contexts=[100, 900])  # same sum, longer maximum
    assert even.decode_ctx_tokens == ragged.decode_ctx_tokens and ragged.decode_max_ctx == 900
    assert cm.predict(ragged) - cm.predict(even) == pytest.approx(2 * 400 * 1e-5)
    mixed = StepShape.of(prefill=[(64, 0)], decode_contexts=[500, 500])
    assert cm.predict(mixed) == pytest.approx(cm.predict(even) + 2 * 2e-3)
    old = {k: v for k, v in coef.items() if k not in ("decode_padded_ctx", "mixed_decode_seqs")}
    assert ProfiledCostModel(old).predict(ragged) == pytest.approx(0.01)  # fits saved before: 0 for the new terms


def test_profiled_single_token_feature():
    """A step of exactly one token (batch-1 decode, another GEMM kernel on CPU) gets its own fixed cost."""
    from pitstop.sim.cost_models.profiled import FEATURES, ProfiledCostModel
    coef = {k: 0.0 for k in FEATURES}
    coef.update(intercept=0.01, num_tokens=1e-3, single_token=2e-3)
    cm = ProfiledCostModel(coef)
    assert cm.predict(StepShape.of(decode_contexts=[300])) == pytest.approx(0.01 + 1e-3 + 2e-3)
    assert cm.predict(StepShape.of(decode_contexts=[300, 300])) == pytest.approx(0.01 + 2e-3)
    assert cm.predict(StepShape.of(prefill=[(2, 0)])) == pytest.approx(0.01 + 2e-3)
    old = {k: v for k, v in coef.items() if k != "single_token"}
    assert ProfiledCostModel(old).predict(StepShape.of(decode_contexts=[300])) == pytest.approx(0.011)


def test_fidelity_step_errors_per_kind():
    from pitstop.sim.cost_models.profiled import FEATURES, ProfiledCostModel
    from pitstop.sim.fidelity import step_errors, step_kind

    coef = {k: 0.0 for k in FEATURES}
    coef.update(intercept=0.01, num_tokens=1e-3)
    cm = ProfiledCostModel(coef)
    pre, dec = StepShape.of(prefill=[(10, 0)]), StepShape.of(decode_contexts=[50, 60])
    mix = StepShape.of(prefill=[(10, 0)], decode_contexts=[50])
    assert [step_kind(s) for s in (pre, dec, mix)] == ["prefill", "decode", "mixed"]
    # predictions: 0.02, 0.012, 0.021 s; measured 0.04, 0.012, 0.021 s
    err = step_errors([(pre, 0.04), (dec, 0.012), (mix, 0.021)], cm)
    assert err["prefill"]["steps"] == 1 and err["prefill"]["total_rel_error"] == pytest.approx(-0.5)
    assert err["decode"]["mean_abs_rel_error"] == pytest.approx(0.0)
    assert err["all"]["steps"] == 3
    assert err["all"]["total_rel_error"] == pytest.approx((0.053 - 0.073) / 0.073)
    assert step_errors([], cm) == {}


def test_profiled_prefill_context_feature():
    """A few-token chunk on a long cached context pays for reading that context; decodes do not count in it."""
    from pitstop.sim.cost_models.profiled import FEATURES, ProfiledCostModel
    coef = {k: 0.0 for k in FEATURES}
    coef.update(intercept=0.01, prefill_ctx_tokens=1e-5)
    cm = ProfiledCostModel(coef)
    assert cm.predict(StepShape.of(prefill=[(4, 1000)])) == pytest.approx(0.01 + 1004 * 1e-5)
    assert cm.predict(StepShape.of(prefill=[(4, 0)])) == pytest.approx(0.01 + 4 * 1e-5)
    assert cm.predict(StepShape.of(prefill=[(4, 1000)], decode_contexts=[900])) == pytest.approx(0.01 + 1004 * 1e-5)
    old = {k: v for k, v in coef.items() if k != "prefill_ctx_tokens"}
    assert ProfiledCostModel(old).predict(StepShape.of(prefill=[(4, 1000)])) == pytest.approx(0.01)


def test_grid_within_clips_instead_of_dropping():
    from pitstop.sim.profiler import DEFAULT_GRID, grid_within

    assert grid_within(DEFAULT_GRID, 8192) == DEFAULT_GRID
    g = grid_within(DEFAULT_GRID, 1024)
    room = 1024 - DEFAULT_GRID["decode_steps"] - 16
    assert max(g["prefill"]) == room and max(g["decode_contexts"]) == room
    assert all(c + p <= room and c % 16 == 0 for c, p in g["prefill_with_prefix"])
    assert len(g["decode_ragged"]) == len(DEFAULT_GRID["decode_ragged"])  # ragged batches kept (decode_padded_ctx)
    assert all(lo < hi <= room for _, lo, hi in g["decode_ragged"])


def test_rescore_reproduces_the_simulated_half_of_compare(tmp_path):
    """A recorded real run (JSON round trip, steps kept) scored again with the same cost model gives the same
    simulated summary and step errors; another cost model gives other predictions on the same real steps."""
    import json

    from model_fixtures import make_tiny_model

    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine
    from pitstop.sim.cost_models.profiled import FEATURES, ProfiledCostModel
    from pitstop.sim.fidelity import compare, rescore
    from pitstop.workloads import load_dataset, poisson_arrivals, sample_specs, scale_lengths

    engine = build_engine(EngineConfig(model=str(make_tiny_model(tmp_path, "llama")), dtype="float32",
                                    kv_cache_memory="1MiB", max_model_len=128, skip_tokenizer_init=True))
    specs, _ = scale_lengths(sample_specs(load_dataset("azure-conv"), 4, seed=1), 64)
    specs = poisson_arrivals(specs, rate_rps=50.0, seed=1)
    coef = {k: 0.0 for k in FEATURES}
    coef.update(intercept=1e-3, num_tokens=1e-5)
    cm = ProfiledCostModel(coef)
    res = json.loads(json.dumps(compare(engine, specs, cm, keep_steps=True)))
    assert len(res["steps"]) == res["step_error"]["all"]["steps"] > 0
    again = rescore(res, specs, cm)
    assert again["sim"] == res["sim"] and again["rel_error"] == res["rel_error"]
    assert again["step_error"] == res["step_error"]
    slower = ProfiledCostModel(dict(coef, intercept=2e-3))
    other = rescore(res, specs, slower)
    assert other["step_error"]["all"]["predicted_s"] > res["step_error"]["all"]["predicted_s"]
    assert other["sim"]["e2el_ms"]["mean"] > res["sim"]["e2el_ms"]["mean"]


def test_profiler_segments_between_other_runs(tmp_path):
    """Profiling in segments: each segment's points are tagged with it, the engine gets its own executor back
    after each one (the runs in between are not recorded), and a fit on some points predicts those points."""
    from model_fixtures import make_tiny_model

    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine
    from pitstop.sampling_params import SamplingParams
    from pitstop.sim.profiler import Profiler

    engine = build_engine(EngineConfig(model=str(make_tiny_model(tmp_path, "llama")), dtype="float32",
                                    kv_cache_memory="1MiB", max_model_len=128, skip_tokenizer_init=True))
    own = engine.executor
    grid = {"prefill": [8, 32], "prefill_with_prefix": [(16, 8)], "decode_batches": [1, 3],
            "decode_contexts": [16], "mixed": [], "decode_steps": 2, "repeats": 2}
    prof = Profiler(engine=engine)
    prof.detach()
    first = prof.run_segment(grid, 0)
    assert engine.executor is own and first and {p["segment"] for p in first} == {0}
    engine.add_request("between", [5] * 10, SamplingParams(max_tokens=3, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    second = prof.run_segment(grid, 1)
    assert engine.executor is own and len(second) == len(first)  # one repeat each, whatever grid["repeats"]
    assert prof.points == first + second and {p["segment"] for p in second} == {1}
    cm = prof.fit({"model": "tiny"}, points=second)
    assert all("predicted_s" in p for p in second) and not any("predicted_s" in p for p in first)
    assert cm.meta["fit_error"]["num_points"] == len(second)


def test_profiler_distinct_decode_batches(tmp_path):
    """Decode batches under ``distinct_decode_tokens`` get their own prompts: prefilled in chunks first (kept as
    ``decode_setup`` points, with prefill tokens), then decoded all together, with no prefix-cache hit."""
    from model_fixtures import make_tiny_model

    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine
    from pitstop.sim.profiler import Profiler

    engine = build_engine(EngineConfig(model=str(make_tiny_model(tmp_path, "llama")), dtype="float32",
                                    kv_cache_memory="2MiB", max_model_len=128, max_num_batched_tokens=64,
                                    skip_tokenizer_init=True))
    grid = {"prefill": [], "prefill_with_prefix": [], "decode_batches": [6], "decode_contexts": [40],
            "mixed": [], "decode_steps": 3, "distinct_decode_tokens": 1000, "repeats": 1}
    prof = Profiler(engine=engine)
    prof.run(grid, log=lambda *a, **k: None)
    prof.detach()
    setup = [p for p in prof.points if p["kind"] == "decode_setup"]
    full = [p for p in prof.points if p["kind"] == "decode" and p["decode_seqs"] == 6]
    assert len(setup) >= 6 * 40 // 64 and all(p["prefill_tokens"] for p in setup[:-1])
    assert sum(p["prefill_tokens"] for p in setup) == 6 * 40  # every prompt computed: nothing from the cache
    assert len(full) >= 3 and all(p["prefill_tokens"] == 0 for p in full)
    grid["distinct_decode_tokens"] = 0  # shared prefix: no setup points, the others' 8-token suffixes only
    n = len(prof.points)
    prof.attach()
    prof.run(grid, log=lambda *a, **k: None)
    assert not [p for p in prof.points[n:] if p["kind"] == "decode_setup"]


def test_profiled_fit_total_unbiased_under_timing_noise():
    """Repeats of each shape with 20% multiplicative noise: the fit's predicted total matches the measured total
    (relative error against its own prediction), where dividing by the measured times leans low."""
    from pitstop.sim.cost_models.profiled import features, fit

    rng = np.random.default_rng(1)
    truth = ProfiledCostModel(dict(zip(FEATURES, [4e-3, 6e-5, 1.5e-4, 2e-9, 3e-7])))
    shapes = [StepShape.of(prefill=[(p, 0)]) for p in (32, 128, 512, 1024)]
    shapes += [StepShape.of(decode_contexts=[c] * b) for b in (1, 4, 16, 48) for c in (64, 512, 1536)]
    shapes = shapes * 40
    times = [truth.predict(s) * rng.lognormal(-0.02, 0.2) for s in shapes]  # mean factor 1.0
    total = sum(times)
    coef, _ = fit(shapes, times)
    pred = sum(float(np.dot(features(s), coef)) for s in shapes)
    assert pred / total == pytest.approx(1.0, abs=0.015)
    coef1, _ = fit(shapes, times, iters=1)  # the measured-time weighting alone
    assert sum(float(np.dot(features(s), coef1)) for s in shapes) / total < 0.97
