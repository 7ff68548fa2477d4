"""Tool calling, structured output and the styled-output tool on the real embedded SmolLM2-135M-Instruct.

The claims: with ``tool_choice="any"`` every call the model writes parses and validates against its tool's
schema, on a prompt per tool shape (every prompt of the sweep runs on a random model in the unit tests);
``with_structured_output(Model)`` always gives a valid ``Model``, in invoke and in stream; the agent examples
run. Greedy decoding throughout, so a stream equals its invoke.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge.styled_tool import PersonaJudgeTool
from tests.helpers.tools import PROMPTS, TOOLS, check_forced_call, get_weather

pytestmark = pytest.mark.embedded
pytest.importorskip("xgrammar", reason="needs the grammar extra: pip install 'langchain-persona-judge[grammar]'")

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"


# One prompt per tool shape, and one no tool fits: each is a full decode of a ~450-token prompt (the tools'
# descriptions) on the embedded model, about 7 s on a quiet core. Every prompt of PROMPTS, each invoked and
# streamed, runs on a tiny random model in tests/unit_tests/test_tools.py (the grammar, not the model, makes a
# forced call valid).
EMBEDDED_PROMPTS = [
    "What is 12 times 7?",
    "Is it cold in Oslo today? Answer in fahrenheit.",
    "Convert 10 pounds to kg.",
    "Hello!",
]
assert set(EMBEDDED_PROMPTS) <= set(PROMPTS)


class Person(BaseModel):
    """A person mentioned in a text."""

    name: str = Field(description="The person's full name")
    age: int = Field(description="Their age in years")
    city: str = Field(description="Where they live")
    role: Literal["engineer", "teacher", "doctor", "other"] = Field(description="Their job")


TEXTS = [
    "Maria Lopez, 34, is an engineer in Madrid.",
    "My neighbour Tom is a retired teacher of 71 who lives in Leeds.",
    "Dr. Aiko Tanaka (45) works at a hospital in Osaka.",
    "The weather is nice today.",  # no person at all: still a valid Person
]


@pytest.fixture(scope="module")
def llm() -> ChatPersonaJudge:
    return ChatPersonaJudge(preferences=PREFERENCES, temperature=0, max_tokens=64)


def test_every_forced_tool_call_parses_and_validates(llm: ChatPersonaJudge) -> None:
    bound = llm.bind_tools(list(TOOLS.values()), tool_choice="any")
    names = []
    for i, prompt in enumerate(EMBEDDED_PROMPTS):
        message = bound.invoke(prompt)
        names.append(check_forced_call(message))
        if i == 0:  # streamed: one tool_call_chunk with the same call (greedy: same tokens)
            chunks = list(bound.stream(prompt))
            assert sum(len(c.tool_call_chunks) for c in chunks) == 1
            full = chunks[0]
            for chunk in chunks[1:]:
                full += chunk
            assert [(c["name"], c["args"]) for c in full.tool_calls] == [
                (c["name"], c["args"]) for c in message.tool_calls
            ]
    assert len(set(names)) >= 2, names  # the model does pick among the tools


def test_structured_output_is_always_a_valid_model(llm: ChatPersonaJudge) -> None:
    structured = llm.with_structured_output(Person)
    people = []
    for i, text in enumerate(TEXTS):
        person = structured.invoke(f"Who is this about? {text}")
        assert isinstance(person, Person)
        people.append(person)
        if i % 2 == 0:  # streamed: only valid Persons, the last one the invoke's (greedy: same tokens)
            streamed = list(structured.stream(f"Who is this about? {text}"))
            assert streamed and all(isinstance(p, Person) for p in streamed)
            assert streamed[-1] == person
    assert people[0] == Person(name="Maria Lopez", age=34, city="Madrid", role="engineer")


def test_agent_loop_with_forced_first_call(llm: ChatPersonaJudge) -> None:
    """The standard test_agent_loop, with tool_choice='any' for the first turn (see its xfail)."""
    question = HumanMessage("What is the weather in San Francisco, CA?")
    call_message = llm.bind_tools([get_weather], tool_choice="any").invoke([question])
    assert any(block["type"] == "tool_call" for block in call_message.content_blocks)
    (call,) = call_message.tool_calls
    assert call["name"] == "get_weather" and "San Francisco" in call["args"]["city"]
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    answer = llm.bind_tools([get_weather]).invoke([question, call_message, result], max_tokens=24)
    assert isinstance(answer, AIMessage)
    assert "<tool_call>" not in answer.text  # any call would be parsed out of the text


async def test_styled_tool_on_the_embedded_model() -> None:
    writer = ChatPersonaJudge(temperature=0, max_tokens=32)
    styled = writer.as_styled_tool(["concise", "humor"])
    assert isinstance(styled, PersonaJudgeTool)
    text = "The quarterly meeting has been moved from Tuesday to Thursday at 3 pm."
    answer = styled.invoke({"text": text})
    assert isinstance(answer, str) and answer.strip()
    assert await styled.ainvoke({"text": text}) == answer  # greedy: async gives the same rewrite


@pytest.mark.parametrize(
    "name, max_tokens, labels",
    [
        ("agent_calculator.py", 16, ["Q: What is 12 times 7?", "tool call: calculator(", "tool result: 84.0", "A: "]),
        # An extraction needs room for the whole Contact (its shortest JSON is 24 tokens).
        ("structured_extraction.py", 48, ["contact: Contact(name='Maria Lopez'", "stream:", "parsing_error=None"]),
        ("agent_styled_answer.py", 16, ["get_weather: {'city': 'Paris'}", "styled_writer: {'text':", "A: ", "ainvoke"]),
    ],
)
def test_agent_examples_run(name: str, max_tokens: int, labels: list[str]) -> None:
    doc = (EXAMPLES / name).read_text("utf-8")
    assert f"examples/agents/{name}" in doc and "PERSONA_JUDGE_EXAMPLE_MAX_TOKENS" in doc
    env = {**os.environ, "PERSONA_JUDGE_EXAMPLE_MAX_TOKENS": str(max_tokens), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for label in labels:
        assert label in done.stdout, f"{label!r} missing from:\n{done.stdout}"
