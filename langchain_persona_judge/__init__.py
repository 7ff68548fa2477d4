"""Persona-judge: personalise a local LLM's answers at decoding time, as a LangChain chat model.

Every public name is imported lazily: ``import langchain_persona_judge`` costs nothing until a name is used
(so ``persona-judge --help`` does not import torch), and the decoding layer never imports LangChain.

The layers, each importing only the ones below it (checked by ``lint-imports`` in ``make test``):

* L4 ``cli`` — the ``persona-judge`` command;
* L3 ``chat_models`` and its LangChain companions (``tools``, ``output_spec``, ``tool_rendering``, ``tool_calls``,
  ``structured``, ``styled_tool``, ``prompt_templates``);
* ``profiles`` — a user's preferences learned from choices or writing (between L3 and the runtime);
* L2 ``runtime`` — one request end to end: models, admission, chat template, request, run loop;
* L1 ``decoding`` (the rules), ``personas`` (preferences → texts), ``grammar`` (constrained decoding);
* L0 ``errors``, ``defaults``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chat_models import ChatPersonaJudge, PersonaJudgeLLM
    from .decoding import (
        DecodingOptions,
        DecodingStats,
        Generation,
        TokenConstraint,
        TraceEntry,
        generate,
        prepack_linear_weights,
        stream,
        unpack_linear_weights,
    )
    from .errors import (
        ContextLengthError,
        DecodingError,
        GrammarError,
        GrammarNotInstalledError,
        InvalidArgumentError,
        InvalidInputError,
        InvalidOptionError,
        ModelLoadError,
        OutOfMemoryError,
        PersonaError,
        PersonaJudgeError,
        ProfileError,
        PromptTemplateError,
        QueueFullError,
        RequestTimeoutError,
        RequestTooLargeError,
        UnknownPersonaError,
    )
    from .personas import Persona, PersonaRegistry, load_registry
    from .profiles import (
        PreferenceLearner,
        PreferenceProfile,
        learn_from_texts,
        learn_profile,
        profile_from_description,
    )
    from .prompt_templates import persona_chat_prompt
    from .runtime import display_name, load_model, release_model, shared_model
    from .styled_tool import PersonaJudgeTool

__version__ = "0.1.0"

_EXPORTS = {
    # L3: the LangChain surface
    "ChatPersonaJudge": "chat_models",
    "PersonaJudgeLLM": "chat_models",
    "PersonaJudgeTool": "styled_tool",
    "persona_chat_prompt": "prompt_templates",
    # learned preference profiles
    "PreferenceLearner": "profiles",
    "PreferenceProfile": "profiles",
    "learn_from_texts": "profiles",
    "learn_profile": "profiles",
    "profile_from_description": "profiles",
    # L2: models
    "display_name": "runtime",
    "load_model": "runtime",
    "release_model": "runtime",
    "shared_model": "runtime",
    # L1: decoding and personas
    "DecodingOptions": "decoding",
    "DecodingStats": "decoding",
    "Generation": "decoding",
    "TokenConstraint": "decoding",
    "TraceEntry": "decoding",
    "generate": "decoding",
    "stream": "decoding",
    "prepack_linear_weights": "decoding",
    "unpack_linear_weights": "decoding",
    "Persona": "personas",
    "PersonaRegistry": "personas",
    "load_registry": "personas",
    # L0: every error a caller may catch
    "ContextLengthError": "errors",
    "DecodingError": "errors",
    "GrammarError": "errors",
    "GrammarNotInstalledError": "errors",
    "InvalidArgumentError": "errors",
    "InvalidInputError": "errors",
    "InvalidOptionError": "errors",
    "ModelLoadError": "errors",
    "OutOfMemoryError": "errors",
    "PersonaError": "errors",
    "PersonaJudgeError": "errors",
    "ProfileError": "errors",
    "PromptTemplateError": "errors",
    "QueueFullError": "errors",
    "RequestTimeoutError": "errors",
    "RequestTooLargeError": "errors",
    "UnknownPersonaError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
