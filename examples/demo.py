"""The main job on the embedded model: one question, answered for two contrasting sets of preferences.

Run it with `make demo` (which sets everything up first) or `.venv/bin/python examples/demo.py`.
Each answer is decoded with Persona-judge: the two preferences of a pair take turns drafting and judging
tokens, so the answer follows both without any training or reward model.
"""

from __future__ import annotations

import os
import sys
import time

from langchain_persona_judge import ChatPersonaJudge

QUESTION = "Why do leaves change colour in autumn?"
PAIRS = {
    "for a child, with humour": [
        "Explain it so that a ten-year-old understands, with simple words.",
        "Be playful and funny, like a friendly storyteller.",
    ],
    "for an expert, concisely": [
        "Answer like a botanist writing for other scientists, with precise terms.",
        "Be concise and to the point, without being verbose.",
    ],
}


REPETITION_PENALTY = 1.2
"""A 135M model loops without one ("The leaves changing because of the tree changing because of the leaves...");
applied to every persona alike, it keeps each token exactly Persona-judge's (see ChatPersonaJudge)."""


def make_llm(preferences: list[str], max_tokens: int) -> ChatPersonaJudge:
    """The demo's chat model: its sampling defaults (greedy makes a 135M model repeat itself), seeded, with a
    repetition penalty."""
    return ChatPersonaJudge(
        preferences=preferences, seed=0, max_tokens=max_tokens, repetition_penalty=REPETITION_PENALTY
    )


def main() -> None:
    max_tokens = int(os.environ.get("PERSONA_JUDGE_DEMO_MAX_TOKENS", "96"))
    print(f"Question: {QUESTION}\n", flush=True)
    for title, preferences in PAIRS.items():
        llm = make_llm(preferences, max_tokens)
        print(f"=== Answer {title} ===")
        for preference in preferences:
            print(f"  preference: {preference}")
        print(flush=True)
        start = time.perf_counter()
        last = None
        for chunk in llm.stream(QUESTION):
            sys.stdout.write(chunk.content)
            sys.stdout.flush()
            last = chunk
        elapsed = time.perf_counter() - start
        stats = last.response_metadata["persona_judge"] if last is not None else {}
        tokens = stats.get("emitted", 0)
        print(
            f"\n\n[{tokens} tokens in {elapsed:.1f} s, {tokens / max(elapsed, 1e-9):.1f} tok/s; "
            f"acceptance {stats.get('acceptance_rate', 0):.0%}, "
            f"{stats.get('tokens_per_iteration', 0):.2f} tokens per draft/judge iteration; "
            f"{last.response_metadata.get('backend', '?') if last is not None else '?'} backend, "
            f"{stats.get('schedule', '?')} schedule]\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
