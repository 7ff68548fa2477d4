"""Persona-judge: personalise a local LLM's answers at decoding time, as a LangChain chat model.

Every public name is imported lazily: ``import langchain_persona_judge`` costs nothing until a name is used
(so ``persona-judge --help`` does not import torch), and ``langchain_persona_judge.engine`` never imports
LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chat_models import ChatPersonaJudge, PersonaJudgeLLM
    from .cpu_kernels import prepack_linear_weights, unpack_linear_weights
    from .engine import DecodingOptions, DecodingStats, Generation, TokenConstraint, TraceEntry, generate, stream
    from .loading import ModelLoadError, load_model
    from .personas import Persona, PersonaError, PersonaRegistry
    from .styled_tool import PersonaJudgeTool

__version__ = "0.1.0"

_EXPORTS = {
    "ChatPersonaJudge": "chat_models",
    "PersonaJudgeLLM": "chat_models",
    "prepack_linear_weights": "cpu_kernels",
    "unpack_linear_weights": "cpu_kernels",
    "DecodingOptions": "engine",
    "DecodingStats": "engine",
    "Generation": "engine",
    "TokenConstraint": "engine",
    "TraceEntry": "engine",
    "generate": "engine",
    "stream": "engine",
    "ModelLoadError": "loading",
    "load_model": "loading",
    "Persona": "personas",
    "PersonaError": "personas",
    "PersonaRegistry": "personas",
    "PersonaJudgeTool": "styled_tool",
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
