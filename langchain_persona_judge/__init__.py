"""Persona-judge: personalise a local LLM's answers at decoding time, as a LangChain chat model.

The decoding engine (``langchain_persona_judge.engine``) and the loader import no LangChain; the chat model
is imported lazily so that ``import langchain_persona_judge.engine`` stays torch + transformers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .engine import DecodingOptions, DecodingStats, Generation, TraceEntry, generate, stream
from .loading import ModelLoadError, load_model

if TYPE_CHECKING:
    from .chat_models import ChatPersonaJudge, PersonaJudgeLLM

__all__ = [
    "ChatPersonaJudge",
    "DecodingOptions",
    "DecodingStats",
    "Generation",
    "ModelLoadError",
    "PersonaJudgeLLM",
    "TraceEntry",
    "generate",
    "load_model",
    "stream",
]


def __getattr__(name: str) -> Any:
    if name in ("ChatPersonaJudge", "PersonaJudgeLLM"):
        from . import chat_models

        return getattr(chat_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
