"""The ``pitstop`` console script: ``generate``, ``chat``, ``demo``, ``serve``, ``bench throughput|serve|agents``,
``simulate``, ``profile``, ``info``, ``agent run SPEC TASK`` (an agent described in a YAML or TOML file)."""

from __future__ import annotations

import argparse
import sys

from pitstop.cli import agent, chat, demo, generate, info, profile, serve, simulate
from pitstop.cli.engine_args import add_engine_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pitstop", description="An agent-aware LLM serving engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in (generate, chat, demo, serve):
        p = mod.add_parser(sub)
        add_engine_args(p)
        p.set_defaults(func=mod.run)
    simulate.add_parser(sub).set_defaults(func=simulate.run)
    info.add_parser(sub).set_defaults(func=info.run)
    agent.add_parser(sub).set_defaults(func=agent.run)
    p = profile.add_parser(sub)
    add_engine_args(p)
    p.set_defaults(func=profile.run)
    bench = sub.add_parser("bench", help="benchmarks (throughput, serve, agents)")
    bench.add_argument("kind", choices=["throughput", "serve", "agents"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _bench(args: argparse.Namespace) -> int:
    if args.kind == "agents":
        from pitstop.bench.agents import main as agents_main
        return agents_main(args.rest) or 0
    if args.kind == "serve":
        from pitstop.bench.serve import main as serve_main
        return serve_main(args.rest) or 0
    from pitstop.bench.throughput import main as throughput_main
    return throughput_main(args.rest) or 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:  # bad model path, bad settings: one clear line
        print(f"pitstop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
