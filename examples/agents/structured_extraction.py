"""A structured extraction chain: ``ChatPromptTemplate | ChatPersonaJudge.with_structured_output(Contact)``.

The answer is decoded under a grammar built from the pydantic schema, so every result is a valid ``Contact``
(types, required fields, the enum) even from a 135M model; what goes *into* the fields is the model's
reading of the text. ``include_raw=True`` also returns the AIMessage and any parsing error, and streaming
yields ever more complete ``Contact`` objects.

Run it (uses the embedded SmolLM2-135M-Instruct; no network):

    .venv/bin/python examples/agents/structured_extraction.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the most tokens per extraction (default 64).
"""

from __future__ import annotations

import os
from typing import Literal

from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field

from langchain_persona_judge import ChatPersonaJudge

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "64"))

TEXTS = [
    "Hi, I'm Maria Lopez from Madrid. Call me on 555-0134 about the invoice.",
    "Please ask Tom Becker (Berlin office) to send the report; his number is 555-0199.",
]


class Contact(BaseModel):
    """A person mentioned in a message."""

    name: str = Field(description="The person's full name")
    city: str = Field(description="The city they are in")
    phone: str = Field(description="Their phone number")
    topic: Literal["invoice", "report", "other"] = Field(description="What the message is about")


def main() -> None:
    llm = ChatPersonaJudge(
        # Preferences shape the wording of free-text fields; here: keep them short and exact.
        preferences=["Be precise and literal.", "Be brief."],
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Extract the contact from the message."), ("human", "{text}")]
    )
    chain = prompt | llm.with_structured_output(Contact)

    for text in TEXTS:
        contact = chain.invoke({"text": text})
        print(f"text: {text}")
        print(f"contact: {contact!r}\n", flush=True)

    print("stream:")
    for partial in chain.stream({"text": TEXTS[0]}):
        print(f"  {partial!r}", flush=True)

    raw = (prompt | llm.with_structured_output(Contact, include_raw=True)).invoke({"text": TEXTS[1]})
    print(f"\ninclude_raw: parsed={raw['parsed']!r} parsing_error={raw['parsing_error']!r}")
    print(f"raw text: {raw['raw'].content}")


if __name__ == "__main__":
    main()
