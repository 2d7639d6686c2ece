"""Fidelity check: the same seeded workload on the real engine (wall clock) and in the simulator (virtual clock,
``profiled`` cost model of this machine); relative errors of mean and p90 TTFT, TPOT and E2EL.

The real run replays arrivals in real time into one ``LLMEngine`` (the loop a server runs: add what has arrived,
step, sleep when idle). The simulated run gives the same lengths and arrival times to one simulated replica with
the same engine settings and the same number of KV blocks.
"""

from __future__ import annotations

import random
import time
from dataclasses import astuple

from pitstop.config import EngineConfig
from pitstop.sampling_params import SamplingParams
from pitstop.sim.cluster import FinishedRequest
from pitstop.sim.cost_models.interface import CostModel, StepShape
from pitstop.sim.metrics import summarize_sim
from pitstop.sim.profiler import StepRecorder
from pitstop.sim.simulator import SimConfig, simulate
from pitstop.sim.workload import specs_to_sim
from pitstop.workloads.lengths import RequestSpec


def run_real(engine, specs: list[RequestSpec], seed: int = 0,
             steps: list[tuple[StepShape, float]] | None = None) -> list[FinishedRequest]:
    """Replay ``specs`` on a real engine in wall-clock time; timings relative to the replay start (seconds).

    When ``steps`` is a list, each ``engine.step()`` call appends ``(shape of the step, its wall time in s)``.
    """
    rng = random.Random(seed)
    vocab = int(engine.vocab_size or 32000)
    prompts = [[rng.randrange(100, vocab) for _ in range(s.input_len)] for s in specs]
    recorder = None
    if steps is not None:
        recorder = engine.executor = StepRecorder(engine.executor)
    try:
        return _replay(engine, specs, prompts, steps, recorder)
    finally:
        if recorder is not None:
            engine.executor = recorder.inner


def _replay(engine, specs: list[RequestSpec], prompts: list[list[int]], steps: list | None,
            recorder: StepRecorder | None) -> list[FinishedRequest]:
    """The replay loop of ``run_real``: add what has arrived, step, sleep when idle."""
    order = sorted(range(len(specs)), key=lambda k: specs[k].arrival_s)
    times: dict[str, list[float]] = {}
    out: list[FinishedRequest] = []
    clock = engine.clock
    t0 = clock()
    i = 0
    while i < len(order) or engine.has_unfinished_requests():
        now = clock() - t0
        while i < len(order) and specs[order[i]].arrival_s <= now:
            k = order[i]
            s = specs[k]
            engine.add_request(f"f{k}", prompts[k], SamplingParams(temperature=0.0, max_tokens=s.output_len,
                                                                   ignore_eos=True), arrival_time=t0 + s.arrival_s)
            times[f"f{k}"] = []
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, specs[order[i]].arrival_s - (clock() - t0)))
            continue
        if recorder is None:
            outs = engine.step()
        else:
            outs, shape, dt = recorder.step(engine, clock)
            if shape is not None:
                steps.append((shape, dt))
        t = clock() - t0
        for o in outs:
            times[o.request_id].append(t)
            if o.finished:
                m = o.metrics
                out.append(FinishedRequest(o.request_id, 0, m.arrival_time - t0, m.first_token_time - t0,
                                           m.finished_time - t0, len(o.prompt_token_ids),
                                           len(o.outputs[0].token_ids), o.num_cached_tokens, m.num_preemptions,
                                           times.pop(o.request_id)))
    return out


METRICS = (("ttft_ms", "mean"), ("ttft_ms", "p90"), ("tpot_ms", "mean"), ("tpot_ms", "p90"), ("e2el_ms", "mean"),
           ("e2el_ms", "p90"))


def compare(engine, specs: list[RequestSpec], cost_model: CostModel, model: str = "smollm2-135m",
            slo_ms: dict | None = None, keep_steps: bool = False) -> dict:
    """Run both; returns ``{"real": summary, "sim": summary, "rel_error": {"ttft_ms.mean": ...},
    "step_error": step_errors(...) of the real run's steps, "sim_config": the simulated replica's settings}``, and
    with ``keep_steps`` ``"steps"``: every real step as ``[*StepShape fields, wall time s]`` (``rescore`` input)."""
    rec = record_real(engine, specs, model, slo_ms)
    res = {**rec, **rescore(rec, specs, cost_model, slo_ms)}
    if not keep_steps:
        res.pop("steps")
    return res


def record_real(engine, specs: list[RequestSpec], model: str = "smollm2-135m", slo_ms: dict | None = None) -> dict:
    """The real half of ``compare``: ``{"real": summary, "sim_config": the simulated replica's settings, "steps":
    [[*StepShape fields, wall time s], ...]}``, to be scored by ``rescore`` (now or later, with any cost model)."""
    steps: list[tuple[StepShape, float]] = []
    engine.reset_prefix_cache()  # the simulated replica starts cold: so must the real one (same prompts per rate)
    real = summarize_sim(run_real(engine, specs, steps=steps), slo_ms or {}, len(specs))
    c: EngineConfig = engine.config
    cfg = dict(model=model, block_size=c.block_size, max_num_seqs=c.max_num_seqs,
               max_num_batched_tokens=c.max_num_batched_tokens, enable_prefix_caching=c.enable_prefix_caching,
               enable_chunked_prefill=c.enable_chunked_prefill, scheduling_policy=c.scheduling_policy,
               max_model_len=engine.max_model_len, kv_cache_tokens=engine.kv_manager.num_blocks * c.block_size,
               vocab_size=int(engine.vocab_size or 32000))
    return {"real": real, "sim_config": cfg, "steps": [[*astuple(s), t] for s, t in steps]}


def rescore(recorded: dict, specs: list[RequestSpec], cost_model: CostModel, slo_ms: dict | None = None) -> dict:
    """The simulated half of ``compare`` against an already recorded real run (``recorded`` holds its ``real``
    summary, ``sim_config`` and ``steps``, as ``record_real`` returns them): ``{"sim", "rel_error", "step_error"}``.
    ``specs`` must be the workload of the recorded run. Lets another cost model be scored without rerunning the
    real engine."""
    slo = slo_ms or {}
    cfg = dict(recorded["sim_config"])
    vocab = cfg.pop("vocab_size")
    sim_cfg = SimConfig(cost_model=cost_model.name, replicas=1, slo_ms=slo, record_steps=False, **cfg)
    sim_res, _ = simulate(sim_cfg, specs_to_sim(specs, vocab, prefix="f"), cost_model)
    sim = sim_res["summary"]
    steps = [(StepShape(*row[:-1]), row[-1]) for row in recorded.get("steps", [])]
    return {"sim": sim, "rel_error": rel_errors(recorded["real"], sim), "step_error": step_errors(steps, cost_model)}


def rel_errors(real: dict, sim: dict, metrics: tuple[tuple[str, str], ...] = METRICS) -> dict[str, float]:
    """``{"metric.stat": (sim - real) / real}`` over ``metrics`` (pairs of summary key and statistic); a metric whose
    real value is 0 is left out."""
    return {f"{m}.{q}": (sim[m][q] - real[m][q]) / real[m][q] for m, q in metrics if real[m][q]}


def step_kind(s: StepShape) -> str:
    """``prefill`` (chunks only), ``decode`` (1-token sequences only) or ``mixed``."""
    if not s.decode_seqs:
        return "prefill"
    return "mixed" if s.prefill_tokens else "decode"


def step_errors(steps: list[tuple[StepShape, float]], cost_model: CostModel) -> dict:
    """The cost model's error on measured steps, per ``step_kind``: count, measured and predicted total seconds,
    ``total_rel_error`` ((predicted - measured) / measured over the sum) and the mean |relative error| per step."""
    out: dict = {}
    for kind in ("prefill", "decode", "mixed", "all"):
        rows = [(s, t) for s, t in steps if kind in ("all", step_kind(s)) and t > 0]
        if not rows:
            continue
        pred = [cost_model.predict(s) for s, _ in rows]
        real = sum(t for _, t in rows)
        out[kind] = {"steps": len(rows), "measured_s": real, "predicted_s": sum(pred),
                     "total_rel_error": (sum(pred) - real) / real,
                     "mean_abs_rel_error": sum(abs(p - t) / t for p, (_, t) in zip(pred, rows)) / len(rows)}
    return out
