"""Preferences → persona texts: YAML registries, sandboxed Jinja templates, composition into personas.

Layer L1: imports only :mod:`langchain_persona_judge.errors` from the package; no torch, no LangChain.

================  ==========================================================================================
``persona``       :class:`Persona`: one preference, its template checked and rendered in the sandbox
``parsing``       YAML registry text or files → personas, within the registry's limits, with precise errors
``validation``    the ``extends`` chains: walked nearest first, checked for cycles, length, missing parents
``registry``      :class:`PersonaRegistry`: personas merged from registries, looked up and rendered by name
``cache``         :func:`load_registry`: the built-ins with a user registry over them, cached by path
``composition``   a preference spec → its text; N preferences → persona prompts (split, pair, all)
``templates``     the preference template, and a persona's copy of a conversation with its preferences
``sandbox``       the one hardened Jinja sandbox both render in (bounded source, work, memory and output)
``guards``        the sandbox's render-time budget: checked operators, filters, loops, output and methods
================  ==========================================================================================

Registries and templates are untrusted input (registries are shared): a registry's fields and a ``str``
template are always inline text, never file paths; every failure is a PersonaError or PromptTemplateError.

A new persona source (a database, a profile learned from a user) produces :class:`Persona` objects or a
:class:`PersonaRegistry` and lives beside ``parsing``.
"""

from __future__ import annotations

from ..errors import PersonaError, PromptTemplateError, UnknownPersonaError
from .composition import STRATEGIES, PersonaPrompt, PreferenceSpec, ResolvedPreference, Strategy, compose, resolve_preference
from .cache import load_registry
from .parsing import parse_registry_text
from .persona import NAME_PATTERN, Persona, VariableValue
from .registry import PersonaRegistry
from .templates import (
    TEMPLATE_FILES,
    Layout,
    Message,
    PreferenceTemplate,
    persona_messages,
    reference_messages,
    render_preferences,
)

__all__ = [
    "NAME_PATTERN",
    "STRATEGIES",
    "TEMPLATE_FILES",
    "Layout",
    "Message",
    "Persona",
    "PersonaError",
    "PersonaPrompt",
    "PersonaRegistry",
    "PreferenceSpec",
    "PreferenceTemplate",
    "PromptTemplateError",
    "ResolvedPreference",
    "Strategy",
    "UnknownPersonaError",
    "VariableValue",
    "compose",
    "load_registry",
    "parse_registry_text",
    "persona_messages",
    "reference_messages",
    "render_preferences",
    "resolve_preference",
]
