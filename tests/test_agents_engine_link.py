"""The agent runtime against the real engine, with the default model: over HTTP against ``pitstop serve``
(the official ``openai`` client) and in process (``pitstop.LLM``). The runtime supplies every program hint; after
the run the engine's counters show the turns, the pin and the tool durations it reported, and the program is gone.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from pitstop.agents.agent import Agent
from pitstop.agents.openai_model import OpenAIChatModel
from pitstop.agents.planner_agent import PlannerAgent
from pitstop.agents.tools import ToolRegistry, tool
from server_helpers import API_KEY, kv_balanced_after, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)
TOOL_S = 0.2


def weather_tools() -> ToolRegistry:
    @tool
    async def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
            city: the city's name.
        """
        await asyncio.sleep(TOOL_S)
        return f"Sunny and 21 C in {city}."

    return ToolRegistry([get_weather])


def _agent(model) -> Agent:
    return Agent(model, weather_tools(), max_turns=2, forced_tool_turns=1)


def _check_linked_run(res) -> None:
    assert res.error is None, res.error
    assert len(res.turns) == 2 and res.turns[0].tool_calls and res.turns[0].tool_calls[0] == "get_weather"
    ran = [r for r in res.tool_runs if not r.refused]
    assert ran and all(r.error is None for r in ran)
    st = res.program_stats
    assert st is not None, "the engine's counters were not read before the program ended"
    assert st["turns"] == 2
    assert st["pins"] >= 1  # turn 1 was non-final: its KV was pinned across the tool call
    # turn 2 found turn 1's whole context (prompt and generated call, rendered back as generated) in the pinned
    # KV: all but the last, partial block (16 tokens)
    assert st["pin_hits"] >= 1
    t1, t2 = res.turns
    assert t2.cached_tokens >= t1.prompt_tokens + t1.completion_tokens - 16
    assert st["reused_tokens"] == sum(t.cached_tokens for t in res.turns)
    assert st["tool_reports"] == len(ran)
    assert [d["tool_name"] for d in st["tool_durations"]] == [r.name for r in ran]
    for d, r in zip(st["tool_durations"], ran):
        assert d["duration_s"] == pytest.approx(r.duration_s) and d["duration_s"] >= TOOL_S


def test_react_run_against_pitstop_serve_reports_and_ends_its_program(server):
    model = OpenAIChatModel(server.v1, api_key=API_KEY, max_tokens=48)
    res = asyncio.run(_agent(model).run("What is the weather in Paris?"))
    _check_linked_run(res)
    assert server.get(f"/v1/programs/{res.program_id}").status_code == 404  # ended with the run


def test_planner_run_against_pitstop_serve_decodes_a_plan_and_ends_its_program(server):
    model = OpenAIChatModel(server.v1, api_key=API_KEY, max_tokens=64)
    run = asyncio.run(PlannerAgent(model, weather_tools(), max_replans=0).run("Weather in Paris and in Rome?"))
    assert run.error is None, run.error
    plan = run.result.rounds[0]
    # the plan grammar holds the model to the plan format (free text would not start like this); the small model
    # may still loop inside one call's arguments until max_tokens, so the plan may be cut (a plan_error then)
    assert re.match(r"(Thought: [^\n]*\n)*1\. (get_weather|join)\(", plan.plan_text), plan.plan_text
    st = run.program_stats
    assert st is not None and st["turns"] == 2  # one plan, one join
    assert st["tool_reports"] == len(run.tool_runs)
    assert server.get(f"/v1/programs/{run.program_id}").status_code == 404


def test_a_streamed_tool_turn_comes_back_as_generated(server):
    """``--tool-history generated`` (the default) over a stream: the next request's prompt extends the streamed
    turn's tokens (its cached tokens cover the turn's prompt and output but the last partial block)."""
    import openai
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY)
    tools = weather_tools().openai_specs()
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, tools=tools,
                                            tool_choice="required", max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                c["name"] += tc.function.name or "" if tc.function else ""
                c["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert calls and usage is not None
    msgs += [{"role": "assistant", "content": "", "tool_calls": [
                 {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in calls.values()]},
             *({"role": "tool", "tool_call_id": c["id"], "content": "Rain."} for c in calls.values())]
    again = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, tools=tools,
                                           max_tokens=4, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= usage.prompt_tokens + usage.completion_tokens - 16, (cached, usage)


@pytest.fixture(scope="module")
def local_llm(smollm2_dir):
    from pitstop.entrypoints.llm import LLM
    return LLM(str(smollm2_dir), dtype="auto", kv_cache_memory="128MiB", max_model_len=2048, num_threads=2,
               ttl_policy="fixed", ttl_seconds=60.0, scheduling_policy="program-fcfs")


def test_react_run_in_process_links_the_engine(local_llm):
    from pitstop.agents.local_model import LocalChatModel
    from pitstop.sampling_params import SamplingParams
    model = LocalChatModel(local_llm, SamplingParams(temperature=0.0, max_tokens=48))
    res = asyncio.run(_agent(model).run("What is the weather in Paris?"))
    _check_linked_run(res)
    engine = local_llm.llm_engine
    assert engine.program_stats(res.program_id) is None
    assert engine.kv_manager.num_pinned_blocks == 0
