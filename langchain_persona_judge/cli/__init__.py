"""The ``persona-judge`` command (layer L4): ask a question, or run a subcommand.

``ask``       the default command: a question → a streamed, personalised answer (``--compare``, ``--json``)
``personas``  list the persona registry, or render one persona
``learn``     learn a preference profile from your choices

``main`` dispatches (:mod:`.main`); ``parser`` builds the ask command's flags, the decoding ones from
:data:`langchain_persona_judge.option_specs.OPTIONS`; each command is one module.
"""

from __future__ import annotations

from .ask import COMPARE_HEADINGS, Answer, UsageError, format_stats
from .main import SUBCOMMANDS, main
from .parser import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, build_parser

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
