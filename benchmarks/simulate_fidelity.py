"""Fidelity of the simulator on this machine: the same seeded Azure-conv workload on the real engine
(SmolLM2-135M-Instruct, bf16, CPU) and in the simulator with the ``profiled`` cost model; relative error of mean
and p90 TTFT, TPOT and E2EL. The profile is read from ``pitstop/data/model_configs/SmolLM2-135M.profile.cpu.json``
(``pitstop profile --model SmolLM2-135M-Instruct``), or measured first with --reprofile.

    .venv/bin/python benchmarks/simulate_fidelity.py --rates 1,2,3 --num-requests 40 [--output results/fid.json]

The real engine is warmed up first (``--warmup-requests`` of another seed), each rate's real replay starts with an
empty prefix cache (as the simulated replica does), and the cost model's error on every real step is printed per
step kind (prefill / decode / mixed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.sim.cost_models import ProfiledCostModel, profile_path
from pitstop.sim.fidelity import METRICS, compare, run_real
from pitstop.sim.profiler import DEFAULT_GRID, Profiler, grid_within
from pitstop.workloads import load_dataset, poisson_arrivals, sample_specs, scale_lengths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--rates", default="1,2,3")
    p.add_argument("--num-requests", type=int, default=40)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--reprofile", action="store_true")
    p.add_argument("--profile", default=None, help="profiled fit JSON (default: the model's shipped one)")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads of the real engine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-requests", type=int, default=16,
                   help="requests (other seed) replayed on the real engine before measuring: the first replay after "
                        "loading pays for first-use kernels (oneDNN builds one per GEMM shape); 0 = none")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    engine = LLMEngine(EngineConfig(model=a.model, kv_cache_memory="512MiB", max_model_len=a.max_model_len,
                                    max_num_batched_tokens=1024, skip_tokenizer_init=True,
                                    num_threads=a.num_threads))
    path = Path(a.profile) if a.profile else profile_path(a.model)
    if a.reprofile or not path.is_file():
        prof = Profiler(engine=engine)
        prof.run(grid_within(DEFAULT_GRID, engine.max_model_len))
        prof.detach()
        cm = prof.fit({"model": a.model, "machine": {"tag": "cpu"}})
        if a.output:  # the fit used for this comparison, kept beside its results
            cm.save(Path(a.output).with_suffix(".profile.json"), grid=prof.points)
    else:
        cm = ProfiledCostModel.load(path)
    print(f"cost model: {json.dumps(cm.describe())}")
    base = load_dataset("azure-conv")
    specs, factor = scale_lengths(sample_specs(base, a.num_requests, seed=a.seed, contiguous=True), a.max_model_len)
    out = {"length_scale": factor, "runs": {}}
    rates = [float(x) for x in a.rates.split(",")]
    if a.warmup_requests:
        warm, _ = scale_lengths(sample_specs(base, a.warmup_requests, seed=a.seed + 1), a.max_model_len)
        run_real(engine, poisson_arrivals(warm, max(rates), seed=a.seed + 1), seed=a.seed + 1)
    print(f"{'rate':>5} {'metric':<13} {'real':>9} {'sim':>9} {'rel err':>8}")
    for rate in rates:
        res = compare(engine, poisson_arrivals(specs, rate, seed=a.seed), cm)
        out["runs"][str(rate)] = res
        for m, q in METRICS:
            print(f"{rate:>5g} {m[:-3] + ' ' + q:<13} {res['real'][m][q]:>9.1f} {res['sim'][m][q]:>9.1f} "
                  f"{res['rel_error'][f'{m}.{q}']:>+8.1%}")
        print(f"{rate:>5g} throughput    {res['real']['output_throughput']:>9.1f} {res['sim']['output_throughput']:>9.1f}")
        for kind, e in res["step_error"].items():
            print(f"{rate:>5g} steps {kind:<7} n={e['steps']:<5} measured {e['measured_s']:7.2f} s, predicted "
                  f"{e['predicted_s']:7.2f} s ({e['total_rel_error']:+.1%}), per step |err| {e['mean_abs_rel_error']:.1%}")
    if a.output:
        with open(a.output, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
