"""``pitstop agent run SPEC TASK``: runs an agent described in a YAML or TOML file (``pitstop.agents.spec``) on one
task and prints its trace (LLM turns and tool calls, start and duration), the answer, the outcome, the program and
the engine's program counters; ``--trace FILE`` writes the Chrome / Perfetto trace, ``--json`` prints one JSON
object instead of the text.

Exit status: 0 on an answer, 1 when the run ended on an error or a limit (max turns, replans), 2 on a bad spec.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from typing import Any

from pitstop.agents.agent import AgentResult
from pitstop.agents.build import build_agent
from pitstop.agents.chat_model import ChatModel
from pitstop.agents.planner_agent import PlannerRun
from pitstop.agents.spec import AgentSpec, load_spec
from pitstop.agents.trace import Span
from pitstop.cli.log import show_engine_log

COUNTERS = ("turns", "pins", "pin_hits", "pin_expiries", "pin_releases", "reused_tokens", "reprefilled_tokens",
            "tool_reports")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``agent`` with its ``run`` sub-subcommand."""
    p = sub.add_parser("agent", help="run an agent described in a YAML or TOML file")
    actions = p.add_subparsers(dest="agent_command", required=True)
    r = actions.add_parser("run", help="run the agent of SPEC on TASK")
    r.add_argument("spec", help="the agent's spec (.yaml, .yml or .toml)")
    r.add_argument("task", help="the task (the user's message)")
    r.add_argument("--trace", default=None, metavar="FILE", help="write the run's Chrome / Perfetto trace (JSON)")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    r.add_argument("--program-id", default=None, help="the engine program's id (default: a fresh one)")
    return p


@dataclass
class Finished:
    """One run: its result, and whether its program was gone from the engine afterwards (None: the engine does
    not track programs)."""

    result: AgentResult | PlannerRun
    program_ended: bool | None


def run(args: argparse.Namespace) -> int:
    """Loads the spec, runs the agent, prints the report; the exit status.

    Raises:
        ValueError, FileNotFoundError: a bad or missing spec (the console script prints one line, exit 2).
    """
    spec = load_spec(args.spec)
    if not args.json:
        show_engine_log()
    done = asyncio.run(run_spec(spec, args.task, args.program_id))
    if args.trace:
        done.result.trace.write(args.trace, name=spec.name)
    report = build_report(spec, args.task, done, args.trace)
    print(json.dumps(report, default=str) if args.json else format_report(done, report))
    return 0 if report["outcome"] == "answer" else 1


async def run_spec(spec: AgentSpec, task: str, program_id: str | None = None,
                   model: ChatModel | None = None) -> Finished:
    """Builds the agent of ``spec`` (on ``model`` when given), runs it on ``task`` and checks its program ended.

    Raises:
        the errors of ``build_agent`` (a bad tool, an unreachable MCP server, a model that does not load).
    """
    async with build_agent(spec, model) as agent:
        result = await agent.run(task, program_id=program_id)
        return Finished(result, await _program_ended(agent.model, result.program_id))


async def _program_ended(model: ChatModel, program_id: str) -> bool | None:
    probe = getattr(model, "program_stats", None)
    if probe is None or not await model.links_programs():
        return None
    try:
        return await probe(program_id) is None
    except Exception:  # noqa: BLE001 - an unreachable engine: unknown, not a failed run
        return None


def outcome(result: AgentResult | PlannerRun) -> str:
    """``answer``, ``max_turns``, ``replan_limit`` or ``error``."""
    if isinstance(result, AgentResult):
        return result.outcome
    return "error" if result.result is None else result.result.outcome


def build_report(spec: AgentSpec, task: str, done: Finished, trace_file: str | None) -> dict[str, Any]:
    """The run as one JSON-able object (times in seconds since the run's start)."""
    r = done.result
    return {"agent": spec.name, "loop": spec.loop, "task": task, "outcome": outcome(r), "answer": r.answer,
            "error": r.error, "program_id": r.program_id, "program_ended": done.program_ended,
            "program_stats": r.program_stats, "total_s": r.total_s,
            "turns": [_span(s) for s in r.trace.spans if s.kind == "llm"],
            "tool_runs": [_tool_run(s) for s in r.trace.spans if s.kind == "tool"],
            "trace_file": trace_file}


def _span(s: Span) -> dict[str, Any]:
    return {"name": s.name, "start_s": s.start_s, "duration_s": s.duration_s, **s.args}


def _tool_run(s: Span) -> dict[str, Any]:
    return {"name": s.name, "start_s": s.start_s, "duration_s": s.duration_s,
            "arguments": s.args.get("arguments"), "error": s.error}


def format_report(done: Finished, report: dict[str, Any]) -> str:
    """The text report: the trace, the answer, the outcome, the program and its counters."""
    lines = [done.result.trace.format() or "(no LLM turn ran)", ""]
    lines.append(f"answer: {report['answer'] if report['answer'] is not None else '(none)'}")
    lines.append(f"outcome: {report['outcome']}" + (f" ({report['error']})" if report["error"] else ""))
    ended = {True: ", ended", False: ", still live", None: ""}[report["program_ended"]]
    lines.append(f"program: {report['program_id']}{ended}")
    stats = report["program_stats"]
    if stats:
        lines.append("counters: " + " ".join(f"{k}={stats[k]}" for k in COUNTERS if k in stats))
        durations = [f"{d['tool_name']} {d['duration_s']:.3f}s" for d in stats.get("tool_durations") or []]
        if durations:
            lines.append("reported tool durations: " + ", ".join(durations))
    if report["trace_file"]:
        lines.append(f"trace: {report['trace_file']} (open in https://ui.perfetto.dev)")
    return "\n".join(lines)
