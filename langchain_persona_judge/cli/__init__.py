"""The ``persona-judge`` command (layer L4): ask a question, or run a subcommand.

``ask``       the default command: a question → a streamed, personalised answer (``--compare``, ``--json``)
``personas``  list the persona registry, or render one persona
"""

from __future__ import annotations

from .ask import (
    COMPARE_HEADINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    SUBCOMMANDS,
    Answer,
    UsageError,
    build_parser,
    format_stats,
    main,
)

__all__ = [
    "COMPARE_HEADINGS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "SUBCOMMANDS",
    "Answer",
    "UsageError",
    "build_parser",
    "format_stats",
    "main",
]
