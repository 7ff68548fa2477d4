"""``persona-judge``'s entry point: dispatch to a subcommand, or ask; turn errors the user can fix into one line.

The first argument may name a subcommand (see ``SUBCOMMANDS``); anything else is a question (``ask``). A question
that happens to equal a subcommand name can still be asked after ``--`` (``persona-judge -- personas``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from . import ask
from .ask import UsageError
from .parser import EXIT_INTERRUPTED, EXIT_USAGE, PROG


def _personas(argv: list[str]) -> int:
    from .personas import run

    return run(argv)


def _learn(argv: list[str]) -> int:
    from .learn import run

    return run(argv)


def _serve(argv: list[str]) -> int:
    from .serve import run

    return run(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"personas": _personas, "learn": _learn, "serve": _serve}


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    from pydantic import ValidationError

    from ..errors import PersonaJudgeError

    if isinstance(exc, (UsageError, PersonaJudgeError)):
        return str(exc)
    if isinstance(exc, ValidationError):  # a value our own checks missed, refused by ChatPersonaJudge
        first = exc.errors()[0]
        return f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``persona-judge``; returns the exit code (``argv`` defaults to ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    stdout, stderr = sys.stdout, sys.stderr
    try:
        if args and args[0] in SUBCOMMANDS:
            return SUBCOMMANDS[args[0]](args[1:])
        return ask.run(args, sys.stdin, stdout, stderr)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("\nInterrupted.", file=stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); point stdout at devnull so the interpreter's final flush
        # does not raise again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        print(f"{PROG}: error: {' '.join(message.split())}", file=stderr, flush=True)  # always one line
        return EXIT_USAGE


__all__ = ["SUBCOMMANDS", "main"]
