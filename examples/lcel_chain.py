"""ChatPersonaJudge inside an LCEL chain: ``ChatPromptTemplate | ChatPersonaJudge | StrOutputParser``.

The chain is an ordinary LangChain runnable: ``invoke`` returns the whole answer as a string and
``stream`` yields it piece by piece. The preferences live on the model, so every question sent
through the chain is answered for the same two personas.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/lcel_chain.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the answer length (default 48).
"""

from __future__ import annotations

import os

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "48"))


def main() -> None:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You answer questions about {topic}."),
            ("human", "{question}"),
        ]
    )
    llm = ChatPersonaJudge(
        preferences=["Explain it so that a ten-year-old understands.", "Be playful and funny."],
        temperature=0,  # greedy: the same answer every run
        max_tokens=MAX_TOKENS,
    )
    chain = prompt | llm | StrOutputParser()

    print("invoke:")
    answer = chain.invoke({"topic": "nature", "question": "Why is the sky blue?"})
    print(answer, flush=True)

    print("\nstream:")
    for piece in chain.stream({"topic": "the weather", "question": "Why does it rain?"}):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
