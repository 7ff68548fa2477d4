"""Where the decoding engine lived before the package had layers; it is :mod:`langchain_persona_judge.decoding`.

Kept so that ``from langchain_persona_judge.engine import generate, stream`` (and the other names it exported)
keeps working. New code imports from :mod:`langchain_persona_judge.decoding` or the package root.
"""

from __future__ import annotations

from .decoding import (
    SCHEDULES,
    DecodingError,
    DecodingOptions,
    DecodingStats,
    Generation,
    PersonaJudgeDecoder,
    Schedule,
    TokenConstraint,
    TokenKind,
    TokenStream,
    TraceEntry,
    context_limit,
    generate,
    make_decoder,
    stream,
)

__all__ = [
    "SCHEDULES",
    "DecodingError",
    "DecodingOptions",
    "DecodingStats",
    "Generation",
    "PersonaJudgeDecoder",
    "Schedule",
    "TokenConstraint",
    "TokenKind",
    "TokenStream",
    "TraceEntry",
    "context_limit",
    "generate",
    "make_decoder",
    "stream",
]
