"""``persona-judge QUESTION``: ask a local model a question and stream a personalised answer to the terminal.

    persona-judge "Why is the sky blue?" -p "Explain it to a ten-year-old." -p "Be playful."

The command line is parsed (:mod:`.parser`) and checked before anything heavy is imported or loaded, so bad
arguments fail in a moment with one line on stderr (exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ..defaults import guidance_for
from ..option_specs import BY_NAME, options_for
from .parser import EXIT_OK, build_parser, flag

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from ..chat_models import ChatPersonaJudge

MAX_STDIN_CHARS = 1_000_000
"""The most characters read from stdin (a question, not a file)."""

# The three answers of --compare, in the order they are printed (keys double as --json field names).
COMPARE_HEADINGS: dict[str, str] = {
    "plain": "Plain answer (no preferences)",
    "direct": "Direct prompt (all preferences in one system prompt)",
    "persona_judge": "Persona-judge ({personas} personas, lookahead {lookahead})",
}
RULE_HEADING = "The rule asked for: {combine}, γ={guidance:g}, weights {weights}"
"""The fourth answer of --compare, with --combine product or --guidance (its --json field: ``rule``)."""


_RULE_OPTIONS = ("combine", "weights", "guidance", "negative_preference", "profile_decoding")
"""The options of the rule asked for, left at their defaults by the --compare baselines."""


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2, no traceback."""


# -- argument checks -------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> None:
    """Refuse bad values before any model is loaded; each message names the option and the rule."""
    for spec in options_for("cli"):  # each option alone, as declared (argparse has checked the types)
        value = getattr(args, spec.name)
        if not spec.is_valid(value):
            raise UsageError(f"{flag(spec)} must be {spec.what()} (got {_shown(value)})")
    if any(not p.strip() for p in args.preferences):
        raise UsageError("a --preference is empty; give each -p some text")
    if args.compare and len(args.preferences) < 2:
        raise UsageError(f"--compare needs at least two --preference values (got {len(args.preferences)})")
    if args.weights is not None and args.combine != "product":
        raise UsageError("--weight applies to --combine product (Persona-judge rotates its roles evenly)")
    if args.profile is not None:
        if args.weights is not None:
            raise UsageError("--profile sets the personas' weights; drop --weight")
        from ..profiles import PreferenceProfile

        args.profile = PreferenceProfile.load(args.profile)  # a missing or corrupted file fails before the model
    if args.model and _looks_like_path(args.model) and not os.path.exists(os.path.expanduser(args.model)):
        raise UsageError(f"--model path {args.model} does not exist; check the path")
    _check_preferences(args)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


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

    options = {spec.name: getattr(args, spec.name) for spec in options_for("cli")}
    options["composition"] = composition or args.composition
    if not rule:  # the paper's rule (the defaults), with no weights, guidance or profile
        options.update({name: BY_NAME[name].default for name in _RULE_OPTIONS})
    return ChatPersonaJudge(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        preferences=preferences,
        registry=args.registry,
        profile=args.profile if rule else None,
        return_trace=False,  # the CLI never shows the per-token trace; skip building it
        **options,
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
    # The rule asked for, too.
    if args.combine != "judge" or args.guidance not in (None, 1.0) or args.profile is not None:
        llms["rule"] = _make_llm(args, prefs, args.composition)
    _load(llms["plain"], args.quiet)  # all of them share one copy of the weights
    messages = _messages(question, args.system)
    results: dict[str, Any] = {"question": question, "preferences": prefs}
    for key, llm in llms.items():
        heading = (RULE_HEADING if key == "rule" else COMPARE_HEADINGS[key]).format(
            personas=len(prefs), lookahead=args.lookahead, combine=args.combine,
            guidance=args.guidance if args.guidance is not None else guidance_for(args.profile is not None,
                                                                                   args.profile_decoding),
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


def run(argv: list[str], stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """``persona-judge QUESTION [options]``; returns the exit code (usage errors exit through argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
        question = _read_question(args.question, stdin)
    except UsageError as exc:
        parser.error(str(exc))
    answer = _run_compare if args.compare else _run_single
    return answer(args, question, stdout, stderr)


__all__ = ["COMPARE_HEADINGS", "MAX_STDIN_CHARS", "Answer", "UsageError", "build_parser", "format_stats", "run"]
