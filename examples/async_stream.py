"""Async use: ``astream`` one answer, then ``ainvoke`` two questions concurrently with ``asyncio.gather``.

Decoding runs in a worker thread, so the event loop stays free while tokens are produced (here it
prints them as they come). Both concurrent calls share one copy of the weights.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/async_stream.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the answer length (default 48).
"""

from __future__ import annotations

import asyncio
import os

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "48"))


async def main() -> None:
    llm = ChatPersonaJudge(
        preferences=["Answer like a patient teacher.", "Be brief."],
        temperature=0,
        max_tokens=MAX_TOKENS,
    )

    print("astream:")
    async for chunk in llm.astream("What is a volcano?"):
        print(chunk.content, end="", flush=True)
    print("\n")

    questions = ["What is a rainbow?", "Why do cats purr?"]
    answers = await asyncio.gather(*(llm.ainvoke(q) for q in questions))
    print("ainvoke x2 (asyncio.gather):")
    for question, answer in zip(questions, answers):
        rate = answer.response_metadata["persona_judge"]["acceptance_rate"]
        print(f"Q: {question}\nA: {answer.content}\n   (acceptance rate {rate:.0%})")


if __name__ == "__main__":
    asyncio.run(main())
