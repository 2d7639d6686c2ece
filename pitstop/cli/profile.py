"""``pitstop profile``: run real engine steps over a grid and fit the ``profiled`` cost model of this machine.

Saves JSON (coefficients, grid, every measured step with its prediction, fit error) next to the model config,
``pitstop/data/model_configs/<model>.profile.<machine>.json`` unless ``--output`` is given. Run it on an idle
machine: other busy processes on the cores distort every step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="measure engine steps and fit the simulator's profiled cost model",
                       description=__doc__)
    p.add_argument("--machine", default="cpu", help="tag of this machine in the file name (default: %(default)s)")
    p.add_argument("--output", default=None, help="JSON path (default: next to the model config)")
    p.add_argument("--repeats", type=int, default=None, help="grid repeats (default: 2)")
    p.add_argument("--quick", action="store_true", help="a tiny grid (tests, ~20 s)")
    return p


QUICK_GRID = {"prefill": [32, 256, 1024], "prefill_with_prefix": [(512, 256)], "decode_batches": [1, 8, 24],
              "decode_contexts": [64, 768], "mixed": [(8, 256)], "decode_steps": 4, "repeats": 1}


def run(args: argparse.Namespace) -> int:
    from pitstop.cli.engine_args import engine_kwargs
    from pitstop.config import EngineConfig
    from pitstop.model.cpu_features import choose_kernels
    from pitstop.sim.cost_models import profile_path
    from pitstop.sim.profiler import DEFAULT_GRID, Profiler, machine_info

    grid = dict(QUICK_GRID if args.quick else DEFAULT_GRID)
    if args.repeats:
        grid["repeats"] = args.repeats
    kw = engine_kwargs(args)
    need = max(max(grid["prefill"]), max(c + p for c, p in grid["prefill_with_prefix"]))
    kw["max_num_batched_tokens"] = max(kw["max_num_batched_tokens"], need)
    kw["max_num_seqs"] = max(kw["max_num_seqs"], max(grid["decode_batches"]))
    kw.pop("ttl_policy", None), kw.pop("ttl_seconds", None)
    kw["dtype"] = choose_kernels(kw["dtype"]).dtype  # the profile records the dtype it measured
    config = EngineConfig(**{k: v for k, v in kw.items() if k in EngineConfig.__dataclass_fields__},
                          skip_tokenizer_init=True)
    prof = Profiler(config)
    print(f"profiling {args.model} ({config.dtype}) over {json.dumps(grid)}", flush=True)
    prof.run(grid)
    meta = {"model": args.model, "dtype": config.dtype, "machine": dict(machine_info(), tag=args.machine),
            "engine": {"block_size": config.block_size, "max_num_batched_tokens": config.max_num_batched_tokens}}
    model = prof.fit(meta)
    out = Path(args.output) if args.output else profile_path(args.model, args.machine)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, grid=prof.points)
    data = json.loads(out.read_text())
    data["grid_spec"] = grid
    out.write_text(json.dumps(data, indent=1))
    print(f"coefficients: {json.dumps(model.coefficients)}")
    print(f"fit error: {json.dumps(model.meta['fit_error'])}")
    print(f"saved {out}")
    return 0
