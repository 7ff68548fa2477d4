"""An agent whose final answer goes through the styled-output tool (PersonaJudgeTool).

The agent has two tools: ``get_weather`` (canned reports) and ``styled_writer``, which is
``ChatPersonaJudge.as_styled_tool(...)``: Persona-judge rewriting a text in given personas. The agent looks the
weather up, drafts an answer and hands the draft to ``styled_writer``, whose output is the final answer. Both
calls are forced by name (``tool_choice="get_weather"``, then ``"styled_writer"``): SmolLM2-135M-Instruct does
not choose tools by itself, and the grammar makes each call valid. The styled tool is an ordinary LangChain
tool, so any other agent (LangGraph's ToolNode, a bigger model's agent...) can call it too; async as well.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/agents/agent_styled_answer.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the length of the styled answer (default 48).
"""

from __future__ import annotations

import asyncio
import os

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "48"))
CALL_TOKENS = 80  # room for a tool call whose argument is a whole draft answer

REPORTS = {"paris": "Paris: light rain, 14 °C, wind 20 km/h.", "london": "London: sunny, 18 °C, no wind."}


@tool
def get_weather(city: str) -> str:
    """Get today's weather in a city."""
    return REPORTS.get(city.strip().lower(), f"{city}: no report today.")


def main() -> None:
    writer = ChatPersonaJudge(temperature=0, max_tokens=MAX_TOKENS)
    styled_writer = writer.as_styled_tool(["humor", "concise"])  # a PersonaJudgeTool named "styled_writer"
    agent = ChatPersonaJudge(temperature=0, max_tokens=CALL_TOKENS)
    tools = {t.name: t for t in (get_weather, styled_writer)}

    question = "What's the weather in Paris today?"
    messages: list[BaseMessage] = [
        SystemMessage("Look the weather up with get_weather, then send your answer to styled_writer."),
        HumanMessage(question),
    ]
    print(f"Q: {question}")
    answer = ""
    for name in ("get_weather", "styled_writer"):
        reply = agent.bind_tools(list(tools.values()), tool_choice=name).invoke(messages)
        messages.append(reply)
        for call in reply.tool_calls:
            result = tools[call["name"]].invoke(call)  # a ToolMessage
            print(f"{call['name']}: {call['args']} -> {result.content}", flush=True)
            messages.append(result)
            answer = str(result.content)
    print(f"A: {answer}\n")

    # The tool on its own, asynchronously; this one lets its caller pick registry personas per call.
    choosy = writer.as_styled_tool(["humor"], choose_personas=True)
    rewritten = asyncio.run(choosy.ainvoke({"text": REPORTS["london"], "preferences": ["elementary"]}))
    print(f"ainvoke (elementary): {rewritten}")


if __name__ == "__main__":
    main()
