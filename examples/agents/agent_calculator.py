"""A tool-calling agent loop on the embedded model: the model calls a calculator, reads the result, answers.

The loop is the usual one (invoke the model with the tools bound; run every tool call; send the results back
as ToolMessages; stop when the model answers in text). SmolLM2-135M-Instruct was not trained to call tools, so
the first step forces a call (``tool_choice="any"``): the grammar then makes the call parse and its
arguments follow the calculator's schema. Later steps use ``tool_choice="auto"``, after a short nudge to
answer (a 135M model otherwise imitates the tool-result markup). The wording of the answer is the small
model's own and may garble the number; the printed tool result is exact. Set PERSONA_JUDGE_MODEL to a larger
instruct model for better answers.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/agents/agent_calculator.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the length of the final answer (default 48).
"""

from __future__ import annotations

import os
from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "48"))
CALL_TOKENS = 64  # room for a whole tool call, whatever the answer length


@tool
def calculator(a: float, op: Literal["+", "-", "*", "/"], b: float) -> float:
    """Compute `a op b` exactly, for +, -, * and /."""
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]


def run_agent(llm: ChatPersonaJudge, question: str, max_steps: int = 3) -> str:
    messages: list[BaseMessage] = [
        SystemMessage("Use the calculator for arithmetic, then answer with the result."),
        HumanMessage(question),
    ]
    for step in range(max_steps):
        choice = "any" if step == 0 else "auto"
        reply = llm.bind_tools([calculator], tool_choice=choice).invoke(
            messages, max_tokens=CALL_TOKENS if choice == "any" else MAX_TOKENS
        )
        messages.append(reply)
        if not reply.tool_calls:
            return reply.text.strip()
        for call in reply.tool_calls:
            print(f"tool call: {call['name']}({call['args']})  [id {call['id']}]")
            result = calculator.invoke(call)  # a ToolMessage with the call's id
            print(f"tool result: {result.content}")
            messages.append(result)
        messages.append(HumanMessage("Now answer my question in one sentence, with the calculator's result."))
    # Out of steps: answer from what the tools said, without tools.
    return llm.invoke(messages, max_tokens=MAX_TOKENS).text.strip()


def main() -> None:
    llm = ChatPersonaJudge(
        preferences=["Answer in one short, clear sentence.", "Be friendly."],
        temperature=0,  # greedy: the same run every time
        max_tokens=MAX_TOKENS,
    )
    for question in ["What is 12 times 7?", "What is 365 minus 42?"]:
        print(f"Q: {question}")
        print(f"A: {run_agent(llm, question)}\n", flush=True)


if __name__ == "__main__":
    main()
