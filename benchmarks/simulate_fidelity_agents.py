"""Fidelity of the simulator on agent programs: the same seeded agent replay (``pitstop bench agents``'s workload
and options) on the real engine and on the simulated engine with a ``profiled`` cost model of this machine;
relative error of mean and p90 JCT, and of mean TTFT, per policy combination.

    taskset -c 0 .venv/bin/python benchmarks/simulate_fidelity_agents.py --num-threads 1 --reprofile \\
        --compare fcfs+none,program-fcfs+continuum --output-json benchmarks/simulate/agents_fidelity.json

--reprofile measures the profile grid in this process, one repeat before each policy's real run and one after the
last (the machine's speed drifts over minutes: the fit then spans the same minutes as the runs), and also scores a
fit on the two repeats around each run ('adjacent'); otherwise --profile (default: the model's shipped fit). The
simulated runs follow all real runs. Every other option is ``pitstop bench agents``'s.
The cost model's error on every real step is printed per step kind. ``--rescore RESULT [--profile P] [--refit]``
simulates again against the real runs saved in RESULT (same workload options), without running the engine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pitstop.bench.agent_engine_replay import run_engine_backend
from pitstop.bench.agents import build_engine, build_parser, build_sim_engine, load_programs, parse_combos, warm_up
from pitstop.replay.agent_summary import summarize_run
from pitstop.config import EngineConfig
from pitstop.entrypoints.engine_builder import build_engine as build_model_engine
from pitstop.sim.cost_models import ProfiledCostModel, profile_path
from pitstop.sim.cost_models.interface import StepShape
from pitstop.sim.fidelity import rel_errors, step_errors
from pitstop.sim.profiler import DEFAULT_GRID, Profiler, StepRecorder, fit_points, grid_within
from pitstop.workloads.agent_program import poisson_program_arrivals

METRICS = (("jct_s", "mean"), ("jct_s", "p90"), ("ttft_s", "mean"))


class _TimedRecorder(StepRecorder):
    """``StepRecorder`` that also keeps (shape, executor seconds) of every step: ``bench agents``' replay loop calls
    ``engine.step()`` itself, so the whole step cannot be timed from outside."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.steps: list = []

    def execute(self, so):
        self.last = StepShape.from_output(so)
        t = time.perf_counter()
        res = self.inner.execute(so)
        self.steps.append((self.last, time.perf_counter() - t))
        return res


def profiler(args) -> Profiler:
    """A profiler on its own real engine (same model, threads and step budget as the replays)."""
    engine = build_model_engine(EngineConfig(model=args.model, kv_cache_memory="512MiB", max_model_len=args.max_model_len,
                                    max_num_batched_tokens=args.max_num_batched_tokens, skip_tokenizer_init=True,
                                    num_threads=args.num_threads))
    prof = Profiler(engine=engine)
    prof.detach()
    return prof


def real_run(args, programs, arrivals, sched: str, ttl: str) -> tuple[dict, list]:
    """One policy combination on the real engine: (summary, [(StepShape, executor seconds), ...])."""
    engine = build_engine(args, sched, ttl)
    warm_up(engine)
    rec = engine.executor = _TimedRecorder(engine.executor)
    records, wall = run_engine_backend(engine, programs, arrivals, args.seed, True, args.timeout)
    engine.check_kv_invariants()
    return summarize_run(records, wall), rec.steps


def sim_run(args, programs, arrivals, sched: str, ttl: str, cm: ProfiledCostModel) -> dict:
    """The same combination on the simulated engine with cost model ``cm``."""
    engine, vclock = build_sim_engine(args, sched, ttl, cost_model=cm)
    records, wall = run_engine_backend(engine, programs, arrivals, args.seed, True, args.timeout,
                                       sleep=vclock.advance)
    return summarize_run(records, wall)


def scored(real: dict, sim: dict, steps: list, cm: ProfiledCostModel) -> dict:
    return {"sim": sim, "rel_error": rel_errors(real, sim, METRICS), "step_error": step_errors(steps, cm)}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    p.description = __doc__
    p.add_argument("--reprofile", action="store_true",
                   help="measure the profile grid in this process, one repeat before each policy's real run and "
                        "one after the last (the fit spans the same minutes as the runs); else --profile")
    p.add_argument("--rescore", default=None, metavar="RESULT",
                   help="simulate again against the real runs saved in RESULT (--output-json of an earlier run, "
                        "same workload options), with --profile (default: RESULT's .profile.json); no real run")
    p.add_argument("--refit", action="store_true", help="with --rescore: fit the profile's measured grid again")
    args = p.parse_args(argv)
    if args.rescore:
        return rescore_saved(args)
    programs, workload = load_programs(args)
    arrivals = poisson_program_arrivals(len(programs), args.program_rate, args.seed)
    combos = parse_combos(args.compare) if args.compare else [(args.scheduling_policy, args.ttl_policy)]
    prof = profiler(args) if args.reprofile else None
    grid = grid_within(DEFAULT_GRID, args.max_model_len)
    reals = {}
    for i, (sched, ttl) in enumerate(combos):
        if prof is not None:
            print(f"profile segment {i}: {len(prof.run_segment(grid, i))} points", flush=True)
        reals[f"{sched}+{ttl}"] = real_run(args, programs, arrivals, sched, ttl)
        print(f"{sched}+{ttl}: real run done", flush=True)
    meta = {"model": args.model, "machine": {"tag": "cpu"}}
    if prof is not None:
        print(f"profile segment {len(combos)}: {len(prof.run_segment(grid, len(combos)))} points", flush=True)
        cm = prof.fit(meta)
        if args.output_json:
            Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
            cm.save(Path(args.output_json).with_suffix(".profile.json"), grid=prof.points)
    else:
        cm = ProfiledCostModel.load(args.profile or profile_path(args.model))
    print(f"cost model: {json.dumps(cm.describe())}", flush=True)
    out: dict = {"workload": workload, "runs": {}}
    for i, (sched, ttl) in enumerate(combos):
        name = f"{sched}+{ttl}"
        real, steps = reals[name]
        res = out["runs"][name] = {"real": real, **scored(real, sim_run(args, programs, arrivals, sched, ttl, cm),
                                                         steps, cm)}
        if prof is not None:  # the grid segments measured just before and just after this run
            adj = fit_points([q for q in prof.points if q["segment"] in (i, i + 1)], meta)
            res["variants"] = {"adjacent": scored(real, sim_run(args, programs, arrivals, sched, ttl, adj),
                                                  steps, adj)}
        report(name, res)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def rescore_saved(args) -> int:
    """The simulated half of ``main`` against saved real runs (their steps are not saved: no step errors)."""
    saved = json.loads(Path(args.rescore).read_text())
    cm = ProfiledCostModel.load(args.profile or Path(args.rescore).with_suffix(".profile.json"))
    grid = cm.meta.get("grid", [])
    meta = {"model": args.model, "machine": {"tag": "cpu"}}
    if args.refit:
        cm = fit_points(grid, meta)
    programs, _ = load_programs(args)
    arrivals = poisson_program_arrivals(len(programs), args.program_rate, args.seed)
    out: dict = {"workload": saved["workload"], "rescored": args.rescore, "runs": {}}
    for i, (name, run) in enumerate(saved["runs"].items()):
        sched, ttl = name.split("+")
        real = run["real"]
        res = out["runs"][name] = {"real": real, **scored(real, sim_run(args, programs, arrivals, sched, ttl, cm),
                                                         [], cm)}
        segment = [q for q in grid if q.get("segment") in (i, i + 1)]
        if segment:  # the adjacent fit is always fitted here, by the current code
            adj = fit_points(segment, meta)
            res["variants"] = {"adjacent": scored(real, sim_run(args, programs, arrivals, sched, ttl, adj), [], adj)}
        report(name, res)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def report(name: str, res: dict) -> None:
    for m, q in METRICS:
        print(f"{name:<28} {m[:-2] + ' ' + q:<10} real {res['real'][m][q]:8.2f} s  sim {res['sim'][m][q]:8.2f} s  "
              f"{res['rel_error'].get(f'{m}.{q}', float('nan')):+7.1%}", flush=True)
    for kind, e in res["step_error"].items():
        print(f"{name:<28} steps {kind:<7} n={e['steps']:<5} measured {e['measured_s']:7.2f} s, predicted "
              f"{e['predicted_s']:7.2f} s ({e['total_rel_error']:+.1%})", flush=True)
    for vname, v in res.get("variants", {}).items():
        errs = " ".join(f"{k} {x:+.1%}" for k, x in v["rel_error"].items())
        steps = v["step_error"].get("all")
        print(f"{name:<28} fit '{vname}': {errs}" + (f"; steps {steps['total_rel_error']:+.1%}" if steps else ""),
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
