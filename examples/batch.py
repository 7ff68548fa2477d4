"""Batch several questions, each answered for its own preferences.

Two ways to give a call its own preferences:

* ``.bind(preferences=[...])`` fixes them on a copy of the runnable (good for one audience);
* ``configurable_fields`` makes ``preferences`` a per-call setting, so one ``batch`` call can send a
  different list with each input through its config.

All calls share one copy of the weights.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/batch.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the answer length (default 40).
"""

from __future__ import annotations

import os

from langchain_core.runnables import ConfigurableField

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "40"))

JOBS = [
    ("What is gravity?", ["Explain it to a five-year-old.", "Be playful."]),
    ("What is gravity?", ["Answer like a physicist.", "Be concise."]),
]


def main() -> None:
    llm = ChatPersonaJudge(temperature=0, max_tokens=MAX_TOKENS)

    # 1. bind: one fixed audience for the whole batch.
    poet = llm.bind(preferences=["Answer like a poet.", "Keep it short."])
    questions = ["What is the moon?", "What is the sea?"]
    print("bind(preferences=...) + batch:")
    for question, answer in zip(questions, poet.batch(questions)):
        print(f"Q: {question}\nA: {answer.content}\n")

    # 2. config: each input of the batch gets its own preferences.
    configurable = llm.configurable_fields(
        preferences=ConfigurableField(id="preferences", name="Preferences", description="Persona preferences")
    )
    inputs = [question for question, _ in JOBS]
    # Two parallel decodes are plenty for a 135M model on a CPU; more would only contend for the cores.
    configs = [{"configurable": {"preferences": preferences}, "max_concurrency": 2} for _, preferences in JOBS]
    answers = configurable.batch(inputs, config=configs)
    print("configurable_fields + batch with per-input config:")
    for (question, preferences), answer in zip(JOBS, answers):
        print(f"Q: {question}  [preferences: {' / '.join(preferences)}]\nA: {answer.content}\n")


if __name__ == "__main__":
    main()
