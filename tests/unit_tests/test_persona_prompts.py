"""Personas as plain LangChain prompts (jinja2 ChatPromptTemplate)."""

from __future__ import annotations

import pytest

from langchain_persona_judge import Persona, PersonaError
from langchain_persona_judge.prompt_templates import persona_chat_prompt


def test_persona_variables_become_prompt_variables_with_defaults():
    prompt = persona_chat_prompt("expert")
    assert prompt.input_variables == ["input"] and prompt.partial_variables == {"field": "that specific field"}
    messages = prompt.invoke({"input": "What is DNA?", "field": "biology"}).to_messages()
    assert messages[0].type == "system" and messages[0].content.endswith("PhD Student in biology could understand.")
    assert messages[1].type == "human" and messages[1].content == "What is DNA?"
    assert "that specific field" in prompt.invoke({"input": "Q"}).to_messages()[0].content


def test_registry_inheritance_objects_and_user_system():
    prompt = persona_chat_prompt("biologist", registry="examples/personas.yaml", level="first-year", system="Be kind.")
    system = prompt.invoke({"input": "Q"}).to_messages()[0].content
    assert system.startswith("Be kind.") and "biology" in system and "first-year" in system
    custom = persona_chat_prompt(Persona(name="shout", description="WRITE IN CAPITALS."), input_variable="question")
    assert custom.input_variables == ["question"]
    assert "WRITE IN CAPITALS." in custom.invoke({"question": "hi"}).to_messages()[0].content


def test_unknown_persona():
    with pytest.raises(PersonaError, match="Did you mean 'elementary'"):
        persona_chat_prompt("elementry")
