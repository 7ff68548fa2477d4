"""Personas as plain LangChain prompts, for users who want ordinary prompting with the same registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from .personas import Persona, PersonaRegistry, load_registry
from .personas import render_preferences


def persona_chat_prompt(
    persona: str | Persona,
    *,
    registry: PersonaRegistry | str | Path | None = None,
    input_variable: str = "input",
    system: str = "",
    **variables: Any,
) -> ChatPromptTemplate:
    """A ``ChatPromptTemplate`` (jinja2 format) whose system turn carries the persona's preference.

    The persona's own template variables stay input variables of the prompt, with the persona's defaults
    (and ``variables``) pre-filled as partials; the user's message is ``{{ <input_variable> }}``.

    >>> prompt = persona_chat_prompt("expert")
    >>> prompt.invoke({"input": "What is DNA?", "field": "biology"}).to_messages()[0].content
    'You are a helpful AI assistant.\\nGenerate a response that only a PhD Student in biology could understand.'
    """
    base = load_registry(registry)
    if isinstance(persona, Persona):
        base = PersonaRegistry([*base, persona])
        name = persona.name
    else:
        name = persona
    # Render with sentinels for the persona's variables, so they survive as jinja2 input variables.
    chain_variables = base.variables_used(name)
    sentinels = {key: f"@@{key}@@" for key in chain_variables}
    text = base.render(name, **sentinels)
    system_text = render_preferences("system", [text], system, base.system_template(name))
    for key in chain_variables:
        system_text = system_text.replace(f"@@{key}@@", "{{ " + key + " }}")
    defaults = {**base.defaults(name), **variables}
    prompt = ChatPromptTemplate.from_messages(
        [("system", system_text), ("human", "{{ " + input_variable + " }}")], template_format="jinja2"
    )
    partials = {k: str(v) for k, v in defaults.items() if k in chain_variables}
    return prompt.partial(**partials) if partials else prompt
