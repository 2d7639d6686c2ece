"""The ReAct Agent and the PlannerAgent over a scripted OpenAI-compatible endpoint (an httpx mock transport behind
the official ``openai`` client): the runtime's control flow and what it tells the engine. The real server path is
in ``test_agents_engine_link.py``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from pitstop.agents.agent import Agent
from pitstop.agents.openai_model import OpenAIChatModel
from pitstop.agents.permissions import Permissions
from pitstop.agents.planner_agent import PlannerAgent
from pitstop.agents.tools import ToolRegistry, tool


class ScriptedEndpoint:
    """An OpenAI-compatible endpoint replying from a script (a list of assistant turns), recording each request.
    ``owned_by`` decides whether the client takes it for pitstop."""

    def __init__(self, script: list[dict], owned_by: str = "pitstop") -> None:
        self.script, self.owned_by = list(script), owned_by
        self.requests: list[dict] = []
        self.program_calls: list[tuple[str, str, dict | None]] = []
        self.programs: dict[str, dict] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        if path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": self.owned_by}]})
        if "/programs/" in path:
            self.program_calls.append((request.method, path, body))
            pid = path.split("/programs/")[1].split("/")[0]
            if request.method == "GET":
                return httpx.Response(200, json={"id": pid, **self.programs.get(pid, {})}) \
                    if pid in self.programs else httpx.Response(404, json={"error": {"message": "no"}})
            if request.method == "DELETE":
                return httpx.Response(200 if self.programs.pop(pid, None) is not None else 404, json={})
            self.programs.setdefault(pid, {}).setdefault("tool_durations", []).append(body)
            return httpx.Response(200, json=body)
        self.requests.append(body)
        if body.get("program_id"):
            self.programs.setdefault(body["program_id"], {"turns": 0})
            self.programs[body["program_id"]]["turns"] = self.programs[body["program_id"]].get("turns", 0) + 1
        turn = self.script.pop(0)
        if body.get("stream"):
            chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                       "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                      for piece in turn["content"].splitlines(keepends=True)]
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                 for i, (n, a) in enumerate(turn.get("calls", []))]
        msg = {"role": "assistant", "content": turn.get("content", "")}
        if calls:
            msg["tool_calls"] = calls
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
            "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    def model(self, **kw) -> OpenAIChatModel:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return OpenAIChatModel("http://scripted.test/v1", http_client=client, **kw)


def sleepy_tools(delay: float = 0.3) -> ToolRegistry:
    @tool
    async def lookup(city: str) -> str:
        """Population of a city."""
        await asyncio.sleep(delay)
        return {"paris": "2.1M", "rome": "2.8M"}.get(city.lower(), "unknown")

    @tool
    def secret(path: str) -> str:
        """Reads a secret."""
        return "s3cret"

    return ToolRegistry([lookup, secret])


def _overlapped(runs) -> bool:
    """Each run started before every other one ended (their intervals share a moment: they ran at once)."""
    return max(r.start for r in runs) < min(r.end for r in runs)


def test_parallel_calls_run_together_and_results_come_back_untrusted():
    ep = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"}), ("lookup", {"city": "Rome"})]},
                           {"content": "Rome is bigger."}])
    agent = Agent(ep.model(), sleepy_tools())
    res = asyncio.run(agent.run("Which is bigger?"))
    assert res.outcome == "answer" and res.answer == "Rome is bigger."
    assert len(res.tool_runs) == 2 and _overlapped(res.tool_runs)  # at once, not one after the other
    tool_msgs = [m for m in res.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["call_0", "call_1"]
    assert 'trust="untrusted">2.1M</tool_output>' in tool_msgs[0]["content"]
    # the second turn's request carries the first turn's calls and their results
    second = ep.requests[1]["messages"]
    assert second[2]["tool_calls"][0]["function"]["name"] == "lookup" and second[3]["role"] == "tool"


def test_every_call_carries_the_program_and_the_run_reports_and_ends_it():
    ep = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"})]}, {"content": "2.1M"}])
    res = asyncio.run(Agent(ep.model(), sleepy_tools(0.05)).run("Population of Paris?"))
    pid = res.program_id
    assert all(r["program_id"] == pid and r["is_last_turn"] is False for r in ep.requests)
    assert all("tool_name" not in r for r in ep.requests)  # unknown before the call: the engine parses it
    reports = [(m, b) for m, p, b in ep.program_calls if p.endswith("/tool_result")]
    assert len(reports) == 1 and reports[0][1]["tool_name"] == "lookup"
    assert 0.04 < reports[0][1]["duration_s"] < 1.0
    methods = [m for m, p, _ in ep.program_calls if p.endswith(pid)]
    assert methods == ["GET", "DELETE"]  # counters read, then the program ended
    assert res.program_stats["turns"] == 2 and pid not in ep.programs


def test_other_endpoints_get_no_extras_and_no_program_calls():
    ep = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"})]}, {"content": "done"}], owned_by="openai")
    res = asyncio.run(Agent(ep.model(), sleepy_tools(0.0)).run("x"))
    assert res.outcome == "answer" and res.program_stats is None
    assert not any(k in r for r in ep.requests for k in ("program_id", "is_last_turn", "tool_name"))
    assert ep.program_calls == []


def test_refused_and_failing_calls_are_tool_errors_and_the_run_goes_on():
    ep = ScriptedEndpoint([{"calls": [("secret", {"path": "/etc/shadow"}), ("lookup", {"town": "x"}),
                                      ("nope", {})]},
                           {"content": "I could not."}])
    perms = Permissions(agent="a", tools={"lookup"})
    res = asyncio.run(Agent(ep.model(), sleepy_tools(0.0), permissions=perms).run("x"))
    assert res.outcome == "answer"
    contents = [m["content"] for m in res.messages if m["role"] == "tool"]
    assert contents[0].startswith("error: permission denied") and "secret" in contents[0]
    assert contents[1].startswith("error: invalid arguments for tool 'lookup'")
    assert contents[2].startswith("error: unknown tool 'nope'")
    assert [t["function"]["name"] for t in ep.requests[0]["tools"]] == ["lookup"]  # refused tools not offered
    refused = [r for r in res.tool_runs if r.refused]
    assert len(refused) == 1
    # a refused call ran nothing and is not reported to the engine
    assert [b["tool_name"] for _, p, b in ep.program_calls if p.endswith("/tool_result")] == ["lookup"]


def test_max_turns_stops_the_loop_and_a_failed_model_call_still_ends_the_program():
    ep = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"})]}] * 3)
    res = asyncio.run(Agent(ep.model(), sleepy_tools(0.0), max_turns=2).run("x"))
    assert res.outcome == "max_turns" and len(res.turns) == 2 and len(res.tool_runs) == 1
    ep2 = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"})]}])  # the second turn has no script: 500
    res2 = asyncio.run(Agent(ep2.model(), sleepy_tools(0.0)).run("x"))
    assert res2.outcome == "error" and res2.error
    assert [m for m, p, _ in ep2.program_calls if p.endswith(res2.program_id)][-1] == "DELETE"


def test_trace_has_llm_and_parallel_tool_tracks(tmp_path):
    ep = ScriptedEndpoint([{"calls": [("lookup", {"city": "Paris"}), ("lookup", {"city": "Rome"})]},
                           {"content": "ok"}])
    res = asyncio.run(Agent(ep.model(), sleepy_tools(0.1)).run("x"))
    path = tmp_path / "trace.json"
    res.trace.write(path)
    events = json.loads(path.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"LLM", "tools 1", "tools 2"}
    spans = [e for e in events if e["ph"] == "X"]
    assert [e["cat"] for e in sorted(spans, key=lambda e: e["ts"])][0] == "llm"
    assert sum(e["cat"] == "tool" for e in spans) == 2 and all(e["dur"] > 0.09e6 for e in spans if e["cat"] == "tool")
    assert "turn 1" in res.trace.format() and "lookup" in res.trace.format()


def test_planner_agent_runs_the_dag_and_links_the_program():
    plan = '1. lookup("Paris")\n2. lookup("Rome")\n3. join()\n'
    ep = ScriptedEndpoint([{"content": plan}, {"content": "Thought: done\nFinal Answer: Rome"}])
    run = asyncio.run(PlannerAgent(ep.model(), sleepy_tools(0.3)).run("Which is bigger?"))
    assert run.error is None and run.answer == "Rome"
    assert _overlapped(run.tool_runs)  # the two lookups ran at once
    assert ep.requests[0]["stream"] is True and "structured_outputs" in ep.requests[0]  # the plan grammar
    assert "structured_outputs" not in ep.requests[1]  # the joiner is free text
    assert all(r["program_id"] == run.program_id for r in ep.requests)
    assert len([1 for _, p, _ in ep.program_calls if p.endswith("/tool_result")]) == 2
    assert {s.name for s in run.trace.spans if s.kind == "llm"} == {"plan 1", "join 1"}
