"""Personas as plain LangChain prompts, for users who want ordinary prompting with the same registry."""

from __future__ import annotations

import re
import secrets
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
    # Render with sentinels for the persona's variables, so they survive as jinja2 input variables. The
    # sentinels are unguessable: the rendered text comes from a registry, which is untrusted.
    token = secrets.token_hex(8)
    chain_variables = base.variables_used(name)
    sentinels = {key: f"@@{token}:{key}@@" for key in chain_variables}
    text = base.render(name, **sentinels)
    system_sentinel = f"@@{token}@@" if system else ""
    system_text = render_preferences("system", [text], system_sentinel, base.system_template(name))
    # Everything but the sentinels is literal text: escaped, so that a registry cannot smuggle jinja2 syntax into
    # the prompt (LangChain renders it, unbounded). The caller's own ``system`` goes in as it was given.
    pieces = re.split(f"@@{token}(?::([A-Za-z_][A-Za-z0-9_]*))?@@", system_text)
    source = [
        _jinja_literal(piece) if index % 2 == 0 else system if piece is None else "{{ " + piece + " }}"
        for index, piece in enumerate(pieces)
    ]
    defaults = {**base.defaults(name), **variables}
    prompt = ChatPromptTemplate.from_messages(
        [("system", "".join(source)), ("human", "{{ " + input_variable + " }}")], template_format="jinja2"
    )
    partials = {k: str(v) for k, v in defaults.items() if k in chain_variables}
    return prompt.partial(**partials) if partials else prompt


def _jinja_literal(text: str) -> str:
    """jinja2 source that renders to exactly ``text`` (every ``{`` written as an expression)."""
    return text.replace("{", "{{ '{' }}")
