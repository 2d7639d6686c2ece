"""Fidelity of the simulator on this machine: the same seeded Azure-conv workload on the real engine
(SmolLM2-135M-Instruct, bf16, CPU) and in the simulator with the ``profiled`` cost model; relative error of mean
and p90 TTFT, TPOT and E2EL. The profile is read from ``pitstop/data/model_configs/SmolLM2-135M.profile.cpu.json``
(``pitstop profile --model SmolLM2-135M-Instruct``), or measured first with --reprofile.

    .venv/bin/python benchmarks/simulate_fidelity.py --rates 1,2,3 --num-requests 40 [--output results/fid.json]

The real engine is warmed up first (``--warmup-requests`` of another seed), each rate's real replay starts with an
empty prefix cache (as the simulated replica does), and the cost model's error on every real step is printed per
step kind (prefill / decode / mixed). With --output every real step (shape and wall time) is saved beside the
result (``.steps.json``), and

    .venv/bin/python benchmarks/simulate_fidelity.py --rescore results/fid.json --profile other.profile.json

scores another cost model against that recorded real run without running the engine again.

--interleave measures the grid in segments (one repeat before each rate, one after the last) so that the fit spans
the same minutes as the replays (this machine's speed drifts by up to ~10% over minutes), and also scores two other
fits per rate: 'adjacent' (only the two segments around that rate) and 'calibrated' (the grid plus the steps of the
warm-up replay, which has another seed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pitstop.config import EngineConfig
from pitstop.entrypoints.engine_builder import build_engine
from pitstop.sim.cost_models import ProfiledCostModel, profile_path
from pitstop.sim.cost_models.interface import CostModel, StepShape
from pitstop.sim.fidelity import METRICS, record_real, rescore, run_real
from pitstop.sim.profiler import DEFAULT_GRID, Profiler, fit_points, grid_within
from pitstop.workloads import load_dataset, poisson_arrivals, sample_specs, scale_lengths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--rates", default="1,2,3")
    p.add_argument("--num-requests", type=int, default=40)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--reprofile", action="store_true", help="measure the profile grid first, in this process")
    p.add_argument("--interleave", action="store_true",
                   help="measure the profile grid in segments, one repeat before each rate and one after the last "
                        "(the fit spans the same minutes as the replays); also scores a fit per rate on the two "
                        "segments around it ('adjacent')")
    p.add_argument("--profile", default=None, help="profiled fit JSON (default: the model's shipped one)")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads of the real engine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-requests", type=int, default=32,
                   help="requests (other seed) replayed on the real engine before measuring: the first replay after "
                        "loading pays for first-use kernels (oneDNN builds one per GEMM shape); 0 = none")
    p.add_argument("--output", default=None)
    p.add_argument("--rescore", default=None, metavar="RESULT",
                   help="a result saved with --output: simulate its workload again with --profile (no real run)")
    p.add_argument("--refit", action="store_true",
                   help="with --rescore: fit the --profile JSON's measured grid again (current fitting code)")
    p.add_argument("--scale-to-measured", action="store_true",
                   help="with --rescore, a diagnostic: multiply the cost model, per rate, by the recorded real steps' "
                        "total time / its prediction of them, so that only the errors of the step *mix* and of the "
                        "scheduling remain (not a prediction: it uses the run's own step times)")
    a = p.parse_args()
    if a.rescore:
        return rescore_saved(a)
    engine = build_engine(EngineConfig(model=a.model, kv_cache_memory="512MiB", max_model_len=a.max_model_len,
                                    max_num_batched_tokens=1024, skip_tokenizer_init=True,
                                    num_threads=a.num_threads))
    rates = [float(x) for x in a.rates.split(",")]
    specs, factor = workload(a)
    out = {"length_scale": factor, "runs": {}}
    path = Path(a.profile) if a.profile else profile_path(a.model)
    if not (a.reprofile or a.interleave) and not path.is_file():
        raise SystemExit(f"no profile at {path}: pass --reprofile or --profile")
    grid = grid_within(DEFAULT_GRID, engine.max_model_len)
    prof = Profiler(engine=engine) if a.reprofile or a.interleave else None
    if a.reprofile and not a.interleave:
        prof.run(grid)
        prof.detach()
    warm_steps: list = []
    if a.warmup_requests:
        warm, _ = scale_lengths(sample_specs(load_dataset("azure-conv"), a.warmup_requests, seed=a.seed + 1),
                                a.max_model_len)
        run_real(engine, poisson_arrivals(warm, max(rates), seed=a.seed + 1), seed=a.seed + 1, steps=warm_steps)
    recorded = {}
    arrivals = {rate: poisson_arrivals(specs, rate, seed=a.seed) for rate in rates}
    for i, rate in enumerate(rates):
        if a.interleave:
            print(f"profile segment {i}: {len(prof.run_segment(grid, i))} points", flush=True)
        recorded[rate] = record_real(engine, arrivals[rate])
        print(f"rate {rate:g}: real run done ({len(recorded[rate]['steps'])} steps)", flush=True)
    if a.interleave:
        print(f"profile segment {len(rates)}: {len(prof.run_segment(grid, len(rates)))} points", flush=True)
    meta = {"model": a.model, "machine": {"tag": "cpu"}}
    cm = prof.fit(meta) if prof is not None else ProfiledCostModel.load(path)
    print(f"cost model: {json.dumps(cm.describe())}")
    if prof is not None and a.output:  # the fit used for this comparison, kept beside its results
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        cm.save(Path(a.output).with_suffix(".profile.json"), grid=prof.points)
    variants = {}
    if a.interleave:  # the grid segments measured just before and just after each rate
        variants["adjacent"] = {r: fit_points([p for p in prof.points if p["segment"] in (i, i + 1)], meta)
                                for i, r in enumerate(rates)}
    if prof is not None and warm_steps:  # the grid plus the steps of the warm-up replay (other seed)
        extra = [{"kind": "warmup_replay", "time_s": t, **asdict(s)} for s, t in warm_steps]
        calibrated = fit_points(prof.points + extra, meta)
        variants["calibrated"] = {r: calibrated for r in rates}
    for rate in rates:
        rec = recorded[rate]
        res = {**rec, **rescore(rec, arrivals[rate], cm)}
        if variants:
            res["variants"] = {name: rescore(rec, arrivals[rate], fits[rate]) for name, fits in variants.items()}
        if not a.output:
            res.pop("steps")
        out["runs"][str(rate)] = res
    report(out, a.output)


def workload(a):
    """The seeded Azure-conv workload of the comparison and its length scale."""
    specs, factor = scale_lengths(sample_specs(load_dataset("azure-conv"), a.num_requests, seed=a.seed,
                                               contiguous=True), a.max_model_len)
    return specs, factor


def rescore_saved(a) -> None:
    """Score ``--profile`` against the real runs recorded in ``--rescore`` (same --num-requests, --seed,
    --max-model-len as the recorded run)."""
    saved = json.loads(Path(a.rescore).read_text())
    steps = json.loads(Path(a.rescore).with_suffix(".steps.json").read_text())
    cm = ProfiledCostModel.load(a.profile or profile_path(a.model))
    if a.refit:  # the profile's measured grid fitted again by this version's fitting code
        cm = fit_points(cm.meta["grid"], cm.meta)
    specs, factor = workload(a)
    if abs(factor - saved["length_scale"]) > 1e-9:
        raise SystemExit(f"--rescore: length scale {factor} != recorded {saved['length_scale']}: use the recorded "
                         f"run's --num-requests/--seed/--max-model-len")
    out = {"length_scale": factor, "rescored": a.rescore, "runs": {}}
    for rate, rec in saved["runs"].items():
        rec = dict(rec, steps=steps[rate])
        model = cm
        if a.scale_to_measured:
            shapes = [(StepShape(*r[:-1]), r[-1]) for r in steps[rate]]
            model = ScaledCostModel(cm, sum(t for _, t in shapes) / sum(cm.predict(s) for s, _ in shapes))
        res = out["runs"][rate] = {"real": rec["real"],
                                   **rescore(rec, poisson_arrivals(specs, float(rate), seed=a.seed), model)}
        if a.scale_to_measured:
            res["scale"] = model.factor
            print(f"rate {rate}: cost model scaled x{model.factor:.3f}")
    report(out, a.output, save_steps=False)


class ScaledCostModel(CostModel):
    """``factor`` x another cost model (``--scale-to-measured``: a diagnostic, never a prediction)."""

    def __init__(self, inner: CostModel, factor: float) -> None:
        self.inner, self.factor, self.name = inner, factor, inner.name

    def predict(self, s: StepShape) -> float:
        return self.factor * self.inner.predict(s)


def report(out: dict, output: str | None, save_steps: bool = True) -> None:
    """Print the comparison table; with ``output`` save it (steps in a ``.steps.json`` beside it)."""
    print(f"{'rate':>5} {'metric':<13} {'real':>9} {'sim':>9} {'rel err':>8}")
    for rate, res in out["runs"].items():
        rate = float(rate)
        for m, q in METRICS:
            print(f"{rate:>5g} {m[:-3] + ' ' + q:<13} {res['real'][m][q]:>9.1f} {res['sim'][m][q]:>9.1f} "
                  f"{res['rel_error'][f'{m}.{q}']:>+8.1%}")
        print(f"{rate:>5g} throughput    {res['real']['output_throughput']:>9.1f} {res['sim']['output_throughput']:>9.1f}")
        for kind, e in res["step_error"].items():
            print(f"{rate:>5g} steps {kind:<7} n={e['steps']:<5} measured {e['measured_s']:7.2f} s, predicted "
                  f"{e['predicted_s']:7.2f} s ({e['total_rel_error']:+.1%}), per step |err| {e['mean_abs_rel_error']:.1%}")
        for name, v in res.get("variants", {}).items():
            errs = " ".join(f"{k} {x:+.1%}" for k, x in v["rel_error"].items())
            print(f"{rate:>5g} fit '{name}': {errs}; steps {v['step_error']['all']['total_rel_error']:+.1%}")
    if output:
        steps = {rate: res.pop("steps") for rate, res in out["runs"].items() if "steps" in res}
        with open(output, "w") as f:
            json.dump(out, f, indent=1, default=str)
        if save_steps and steps:
            Path(output).with_suffix(".steps.json").write_text(json.dumps(steps))


if __name__ == "__main__":
    main()
