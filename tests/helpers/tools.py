"""Three tools of different shapes and the prompts that ask for them, for the forced-tool-call tests.

``tests/integration_tests/test_tools.py`` decodes one prompt per tool shape on the embedded model;
``tests/unit_tests/test_tools.py`` decodes every prompt on a tiny random model (with ``tool_choice="any"`` the grammar,
not the model, makes a call valid), so the sweep over many prompts costs seconds instead of minutes.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field


@tool
def calculator(a: float, op: Literal["+", "-", "*", "/"], b: float) -> float:
    """Compute `a op b` for +, -, * and /."""
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get today's weather in a city."""
    return f"Sunny in {city}."


class ConvertInput(BaseModel):
    value: float = Field(description="The amount to convert")
    from_unit: Literal["km", "mile", "kg", "pound"]
    to_unit: Literal["km", "mile", "kg", "pound"]


@tool(args_schema=ConvertInput)
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert an amount between units."""
    return f"{value} {from_unit} in {to_unit}"


TOOLS = {t.name: t for t in (calculator, get_weather, convert_units)}
"""The tools by name: floats and an enum; a string and an enum with a default; an args_schema model."""

PROMPTS = [
    "What is 12 times 7?",
    "Add 3.5 and 4.25.",
    "Divide 100 by 8.",
    "What is 365 minus 42?",
    "What's the weather in Paris?",
    "Is it cold in Oslo today? Answer in fahrenheit.",
    "Weather for Tokyo, please.",
    "How many miles is 42 km?",
    "Convert 10 pounds to kg.",
    "What is 2 to the power of 10?",
    "I need the forecast for Cairo.",
    "How much is 7 plus 8 plus 9?",
    "Convert 5 miles into kilometres.",
    "Tell me a joke.",
    "Hello!",
]
"""Questions for each tool, and two that no tool fits (a forced call must still be a valid one)."""


def check_forced_call(message: AIMessage) -> str:
    """Assert that ``message`` is exactly one valid call of one of :data:`TOOLS` and nothing else; its tool's name."""
    assert message.invalid_tool_calls == [], message.invalid_tool_calls
    assert len(message.tool_calls) == 1 and message.content == "", message
    call = message.tool_calls[0]
    assert call["name"] in TOOLS and call["id"].startswith("call_"), call
    TOOLS[call["name"]].args_schema.model_validate(call["args"])  # type: ignore[union-attr]
    return call["name"]
