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


def test_a_registry_cannot_smuggle_jinja2_into_the_prompt(tmp_path):
    # The persona's text renders to `{{ 'x' * 10**9 }}`; LangChain renders the prompt with an unbounded jinja2
    # sandbox, so the text must reach it as literal text, not as an expression.
    path = tmp_path / "team.yaml"
    path.write_text(
        "personas:\n  - name: smuggler\n"
        "    description: \"{{ '{{' }} 'x' * 10**9 {{ '}}' }} "
        "{% raw %}{% for i in range(9) %}{% endraw %} for {{ who }}\"\n"
        "    variables: {who: kids}\n"
    )
    prompt = persona_chat_prompt("smuggler", registry=path, system="Be brief.")
    assert prompt.input_variables == ["input"] and prompt.partial_variables == {"who": "kids"}
    system = prompt.invoke({"input": "Q"}).to_messages()[0].content
    assert system == "Be brief.\n{{ 'x' * 10**9 }} {% for i in range(9) %} for kids"
    assert "for adults" in prompt.invoke({"input": "Q", "who": "adults"}).to_messages()[0].content
