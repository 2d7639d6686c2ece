"""Many concurrent agent runs of pitstop's own runtime against ``pitstop serve`` (issue 16): the program-aware
engine (``--scheduling-policy program-fcfs --ttl-policy continuum``) vs a plain one (``fcfs`` + ``none``), with no
hint set by hand: the runtime (``pitstop.agents.Agent`` over ``OpenAIChatModel``) sends ``program_id`` /
``is_last_turn`` on every call, reports every tool run and ends each program.

Each run is a ReAct agent on the default model with three tools (``read_file``, ``run_command``, ``search``) whose
outputs are deterministic texts and whose durations are drawn (seeded by run, turn and tool, so both engines see the
same ones) from the AgentCgroup trace's tool calls of the matching kind (Read, Bash, Grep), scaled and capped
(``../shared/data/traces/agentcgroup_claude_code/tool_calls.csv``, GPL-2.0: read at run time, nothing copied).
The first ``--tool-turns`` turns must call a tool (``tool_choice=required``; the 135M model otherwise answers from
memory), so each run has ``tool_turns + 1`` LLM turns. Runs arrive as a Poisson process (``--arrival-rate``).

The server runs on core 0 and this load generator on core 1 (``taskset``) where the machine has two cores.

    .venv/bin/python benchmarks/agent_runtime_concurrency.py --runs 16 32 64

Reports per engine and run count: mean / p90 run completion time (JCT, seconds), re-prefilled tokens (the
engine's counter: context of an earlier turn computed again), pin hits, and the ratio program-aware / plain.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_process import ROOT, start_serve  # noqa: E402

from pitstop.agents.agent import Agent  # noqa: E402
from pitstop.agents.openai_model import OpenAIChatModel  # noqa: E402
from pitstop.agents.tools import ToolRegistry, make_tool  # noqa: E402
from pitstop.workloads.agentcgroup import tool_call_durations  # noqa: E402

TRACE = ROOT.parent / "shared" / "data" / "traces" / "agentcgroup_claude_code" / "tool_calls.csv"
KINDS = {"read_file": "Read", "run_command": "Bash", "search": "Grep"}
ENGINES = {"program-aware": ["--scheduling-policy", "program-fcfs", "--ttl-policy", "continuum"],
           "plain": ["--scheduling-policy", "fcfs", "--ttl-policy", "none"]}


def trace_durations(path: Path) -> dict[str, list[float]]:
    """Tool-call durations (seconds) of the trace by tool kind (Read, Bash, Grep), in file order.

    Raises:
        SystemExit: the trace is not there (it lives in ../shared, beside a clone).
    """
    try:
        rows = tool_call_durations(path.parent)
    except FileNotFoundError:
        raise SystemExit(f"the AgentCgroup trace is not at {path} (../shared beside the clone); it is read at "
                         "run time and never copied into the repository") from None
    out: dict[str, list[float]] = {k: [] for k in KINDS.values()}
    for _, tool, duration in rows:
        if tool in out:
            out[tool].append(duration)
    return out


class DrawnDurations:
    """Durations drawn from the trace, the same for the same (run, turn, tool) in every engine's run."""

    def __init__(self, by_kind: dict[str, list[float]], seed: int, scale: float, cap_s: float) -> None:
        self.by_kind, self.seed, self.scale, self.cap_s = by_kind, seed, scale, cap_s

    def draw(self, run: int, turn: int, tool: str) -> float:
        key = hashlib.sha256(f"{self.seed}/{run}/{turn}/{tool}".encode()).digest()
        pool = self.by_kind[KINDS[tool]]
        return min(self.cap_s, self.scale * pool[int.from_bytes(key[:8], "little") % len(pool)])


def run_tools(run: int, durations: DrawnDurations, log: list[float]) -> ToolRegistry:
    """The three tools of one run; each call sleeps its drawn duration and returns a deterministic text."""
    turn = {"n": 0}

    async def sleep_for(tool: str) -> None:
        turn["n"] += 1
        d = durations.draw(run, turn["n"], tool)
        log.append(d)
        await asyncio.sleep(d)

    async def read_file(path: str) -> str:
        """Read a file of the repository.

        Args:
            path: the file's path.
        """
        await sleep_for("read_file")
        return f"# {path}\n" + "\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(6))

    async def run_command(command: str) -> str:
        """Run a shell command in the repository.

        Args:
            command: the command line.
        """
        await sleep_for("run_command")
        return f"$ {command}\n" + "\n".join(f"test_{i} PASSED" for i in range(8)) + "\n8 passed in 0.42s"

    async def search(query: str) -> str:
        """Search the repository's files.

        Args:
            query: the text to look for.
        """
        await sleep_for("search")
        return "\n".join(f"src/module_{i}.py:{10 * i}: {query}" for i in range(5))

    return ToolRegistry([make_tool(read_file), make_tool(run_command), make_tool(search)])


TASKS = ["Fix the failing test in tests/test_parser.py.", "Find where the config file is loaded and add a check.",
         "Make the CLI print its version.", "Find out why the build is slow.", "Add type hints to utils.py.",
         "Rename the function load_data to read_data everywhere.", "Check that all tests pass.",
         "Find the TODO comments and list them."]


async def one_run(i: int, base_url: str, args: argparse.Namespace, durations: DrawnDurations,
                  start_at: float, task: str | None = None) -> dict:
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    model = OpenAIChatModel(base_url + "/v1", max_tokens=args.max_tokens)
    drawn: list[float] = []
    agent = Agent(model, run_tools(i, durations, drawn), max_turns=args.tool_turns + 1,
                  forced_tool_turns=args.tool_turns)
    try:
        res = await agent.run(task or TASKS[i % len(TASKS)])
    finally:
        await model.aclose()
    st = res.program_stats or {}
    return {"run": i, "outcome": res.outcome, "error": res.error, "jct_s": res.total_s, "turns": len(res.turns),
            "tool_runs": len(res.tool_runs), "tool_time_s": sum(r.duration_s for r in res.tool_runs),
            "llm_time_s": sum(t.end_s - t.start_s for t in res.turns),
            "prompt_tokens": sum(t.prompt_tokens for t in res.turns),
            "cached_tokens": sum(t.cached_tokens for t in res.turns),
            "reprefilled_tokens": st.get("reprefilled_tokens"), "pin_hits": st.get("pin_hits"),
            "pins": st.get("pins"), "tool_reports": st.get("tool_reports"), "linked": res.program_stats is not None}


async def drive(base_url: str, n: int, args: argparse.Namespace, durations: DrawnDurations) -> list[dict]:
    rng = random.Random(args.seed)
    t, starts = time.perf_counter(), []
    for _ in range(n):
        starts.append(t)
        t += rng.expovariate(args.arrival_rate)
    return list(await asyncio.gather(*(one_run(i, base_url, args, durations, s) for i, s in enumerate(starts))))


def summarize(rows: list[dict], wall_s: float) -> dict:
    jct = sorted(r["jct_s"] for r in rows)
    return {"runs": len(rows), "errors": sum(r["error"] is not None for r in rows), "wall_s": wall_s,
            "jct_mean_s": statistics.fmean(jct), "jct_p50_s": jct[len(jct) // 2],
            "jct_p90_s": jct[min(len(jct) - 1, int(0.9 * len(jct)))],
            "reprefilled_tokens": sum(r["reprefilled_tokens"] or 0 for r in rows),
            "cached_tokens": sum(r["cached_tokens"] for r in rows),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "pin_hits": sum(r["pin_hits"] or 0 for r in rows), "pins": sum(r["pins"] or 0 for r in rows),
            "tool_reports": sum(r["tool_reports"] or 0 for r in rows),
            "all_linked": all(r["linked"] for r in rows),
            "tool_time_mean_s": statistics.fmean(r["tool_time_s"] for r in rows),
            "llm_time_mean_s": statistics.fmean(r["llm_time_s"] for r in rows)}


def serve_flags(args: argparse.Namespace, engine: str) -> list[str]:
    return ["--model", "SmolLM2-135M-Instruct", "--dtype", args.dtype, "--kv-cache-memory", args.kv_cache_memory,
            "--max-num-seqs", str(args.max_num_seqs), "--max-queue", "1024", "--num-threads", "1",
            "--max-model-len", str(args.max_model_len), *ENGINES[engine]]


def run_engine(engine: str, n: int, args: argparse.Namespace, durations: DrawnDurations, out_dir: Path) -> dict:
    pinned = (os.cpu_count() or 1) >= 2
    prefix = ("taskset", "-c", "0") if pinned else ()
    proc, url = start_serve(serve_flags(args, engine), out_dir / f"serve-{engine}-{n}.log", prefix=prefix)
    try:
        if pinned:
            os.sched_setaffinity(0, {1})
        asyncio.run(warm_up(url, args, durations))
        before = engine_counters(url)
        t = time.perf_counter()
        rows = asyncio.run(drive(url, n, args, durations))
        wall = time.perf_counter() - t
        after = engine_counters(url)
    finally:
        proc.terminate()
        proc.wait(30)
    summary = summarize(rows, wall)
    summary["engine"] = {k: after[k] - before.get(k, 0.0) for k in after if k != "pitstop_programs"}
    summary["programs_left"] = after.get("pitstop_programs")
    return {"summary": summary, "rows": rows}


COUNTERS = ("pitstop_num_preemptions", "pitstop_pins", "pitstop_pin_hits", "pitstop_pin_expiries",
            "pitstop_pin_releases", "pitstop_program_reused_tokens", "pitstop_program_reprefilled_tokens",
            "pitstop_prefix_cache_queries_tokens", "pitstop_prefix_cache_hits_tokens", "pitstop_programs")


def engine_counters(url: str) -> dict[str, float]:
    """The engine-wide counters of ``/metrics`` (``COUNTERS``)."""
    out = {}
    for ln in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = ln.partition(" ")
        if name in COUNTERS:
            out[name] = float(value)
    return out


async def warm_up(base_url: str, args: argparse.Namespace, durations: DrawnDurations) -> None:
    """Two untimed runs (first-use kernels, allocator) on tasks the trial does not use, their programs ended."""
    warm = argparse.Namespace(**{**vars(args), "arrival_rate": 100.0})
    await asyncio.gather(*(one_run(10_000 + i, base_url, warm, durations, time.perf_counter(), task="Warm up.")
                           for i in range(2)))


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")),
                platform.processor())
    return {"cpu": name, "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512f": " avx512f" in flags,
            "amx": " amx_tile" in flags}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, nargs="+", default=[16, 32, 64], help="concurrent agent runs per trial")
    p.add_argument("--tool-turns", type=int, default=3, help="turns that must call a tool (each run: +1 turn)")
    p.add_argument("--arrival-rate", type=float, default=4.0, help="runs started per second (Poisson)")
    p.add_argument("--max-tokens", type=int, default=48, help="per LLM turn")
    p.add_argument("--duration-scale", type=float, default=1.0, help="trace tool durations x this")
    p.add_argument("--duration-cap-s", type=float, default=8.0, help="and at most this (seconds)")
    p.add_argument("--kv-cache-memory", default="128MiB", help="KV cache of the server (pressure: see README)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "agent_runtime" / "result.json")
    args = p.parse_args(argv)
    durations = DrawnDurations(trace_durations(TRACE), args.seed, args.duration_scale, args.duration_cap_s)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "machine": machine(), "trials": {}}
    for n in args.runs:
        order = list(ENGINES) if len(result["trials"]) % 2 == 0 else list(ENGINES)[::-1]  # alternate who goes first
        trial = {e: run_engine(e, n, args, durations, args.output.parent) for e in order}
        a, b = trial["program-aware"]["summary"], trial["plain"]["summary"]
        trial["ratio"] = {"jct_mean": b["jct_mean_s"] / a["jct_mean_s"], "jct_p90": b["jct_p90_s"] / a["jct_p90_s"],
                          "reprefilled": b["reprefilled_tokens"] / max(1, a["reprefilled_tokens"])}
        result["trials"][str(n)] = trial
        print(f"{n:3d} runs | " + " | ".join(
            f"{e}: JCT mean {s['jct_mean_s']:.2f}s p90 {s['jct_p90_s']:.2f}s, re-prefilled {s['reprefilled_tokens']}, "
            f"pin hits {s['pin_hits']}, errors {s['errors']}" for e, s in ((e, trial[e]["summary"]) for e in ENGINES))
            + f" | plain/aware: JCT x{trial['ratio']['jct_mean']:.2f} p90 x{trial['ratio']['jct_p90']:.2f} "
              f"re-prefill x{trial['ratio']['reprefilled']:.2f}", flush=True)
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
