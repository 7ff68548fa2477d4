"""Stream a Persona-judge answer to the terminal token by token, then print the decoding stats.

Streamed chunks add up (``chunk + chunk``) to one message; the last chunk carries ``usage_metadata``
(token counts) and ``response_metadata["persona_judge"]`` (iterations, drafts proposed and accepted,
forward passes), so the sum has them too.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/stream_terminal.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the answer length (default 64).
"""

from __future__ import annotations

import os
import time

from langchain_core.messages import AIMessageChunk

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "64"))


def main() -> None:
    llm = ChatPersonaJudge(
        preferences=["Be concise and to the point.", "Use a vivid everyday analogy."],
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    question = "How does a refrigerator keep food cold?"
    print(f"Q: {question}\nA: ", end="", flush=True)

    start = time.perf_counter()
    message: AIMessageChunk | None = None
    for chunk in llm.stream(question):
        print(chunk.content, end="", flush=True)
        message = chunk if message is None else message + chunk
    seconds = time.perf_counter() - start
    print("\n")

    assert message is not None
    stats = message.response_metadata["persona_judge"]
    usage = message.usage_metadata or {}
    print("stats:")
    print(f"  finish reason:     {message.response_metadata['finish_reason']}")
    print(f"  tokens:            {usage.get('output_tokens')} new, {usage.get('input_tokens')} prompt")
    print(f"  acceptance rate:   {stats['acceptance_rate']:.0%} ({stats['accepted']}/{stats['drafted']} drafts)")
    print(f"  iterations:        {stats['iterations']} (lookahead {stats['lookahead']})")
    print(f"  forward passes:    {stats['forward_calls']}")
    print(f"  time:              {seconds:.1f} s")


if __name__ == "__main__":
    main()
