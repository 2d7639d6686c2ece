"""Sensitivity of the simulated agent replay to step time: the whole-run fit of a saved agent fidelity run,
scaled by 0.95-1.05, for both policies (JCT, preemptions, re-prefilled tokens). Run from the repository root:

    .venv/bin/python benchmarks/agents_sensitivity.py benchmarks/simulate/agents_fidelity.profile.json
"""
import sys
sys.path.insert(0, "benchmarks")
from simulate_fidelity_agents import sim_run
from simulate_fidelity import ScaledCostModel
from pitstop.bench.agents import build_parser, load_programs
from pitstop.sim.cost_models import ProfiledCostModel
from pitstop.workloads.agent_program import poisson_program_arrivals
args = build_parser().parse_args([])
programs, _ = load_programs(args)
arrivals = poisson_program_arrivals(len(programs), args.program_rate, args.seed)
cm = ProfiledCostModel.load(sys.argv[1])
for combo in (("fcfs", "none"), ("program-fcfs", "continuum")):
    for f in (0.95, 0.98, 1.0, 1.02, 1.05):
        s = sim_run(args, programs, arrivals, *combo, ScaledCostModel(cm, f))
        print(combo, f, f"JCT mean {s['jct_s']['mean']:.1f} p90 {s['jct_s']['p90']:.1f} preemptions {s['preemptions']} reprefilled {s['reprefilled_tokens']}", flush=True)
