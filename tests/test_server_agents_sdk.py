"""An OpenAI Agents SDK agent (``openai-agents``) runs against ``pitstop serve`` on the real default model:
an ``OpenAIChatCompletionsModel`` pointed at the test server, tracing disabled, one Python function tool,
``tool_choice="required"`` on the first turn (the SDK resets it after the first tool use, its default
``reset_tool_choice=True``), through to the final answer. The call is guaranteed by constrained decoding, so
the test skips when the engine does not constrain yet (capability probe ``constrained`` in server_helpers)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from server_helpers import API_KEY, MODEL, constrained, need_constraints  # noqa: F401  (capability probe)
from server_helpers import kv_balanced_after, server  # noqa: F401  (shared fixtures)

agents = pytest.importorskip("agents")
pytestmark = pytest.mark.timeout(300)


def test_agent_calls_the_tool_then_answers(server, constrained):
    need_constraints(constrained)
    from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool,
                        set_tracing_disabled)
    set_tracing_disabled(True)
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        seen.append(city)
        return f"It is 18 degrees and sunny in {city}."

    async def run():
        aclient = openai.AsyncOpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)
        try:
            agent = Agent(name="weather", instructions="Answer with the help of the tools.", tools=[get_weather],
                          model=OpenAIChatCompletionsModel(model=MODEL, openai_client=aclient),
                          model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=48))
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        finally:
            await aclient.close()

    result = asyncio.run(run())
    assert len(seen) >= 1 and all(isinstance(c, str) for c in seen)  # the tool ran with parsed arguments
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"], kinds
    assert kinds[-1] == "MessageOutputItem", kinds
    assert isinstance(result.final_output, str) and result.final_output.strip()
