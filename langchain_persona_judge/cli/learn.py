"""``persona-judge learn``: learn your preferences from a few choices, and save them as a profile.

    persona-judge learn                           # 10 questions, saved to persona-profile.yaml
    persona-judge learn --questions 5 --out me.yaml --describe "I'm a nurse, keep it short"
    persona-judge "How do I sleep better?" --profile me.yaml

Each round shows two answers to an everyday question, decoded under contrasting personas and chosen to teach the
most (PReF's rule); type 1, 2 or = (no preference), q to finish early. The profile is saved after every pick
(atomically: a temporary file renamed over ``--out``), so Ctrl-C keeps every choice already recorded; ``--out`` is
checked to be writable before the model loads. At the end the profile is drawn as a bar chart, one bar per
dimension.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_QUESTIONS = 1000
MAX_ANSWER_TOKENS = 4096
SEED_LIMIT = 2**32
"""Seeds are taken in [0, 2**32): the answers' seeds count up from it, and torch takes at most 64 bits."""
DEFAULT_OUT = "persona-profile.yaml"
CHOICES = {"1": "1", "2": "2", "=": "="}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-judge learn",
        description="Learn your preferences from a few choices between two answers; save them as a profile.",
        epilog="examples:\n  persona-judge learn --questions 10 --out me.yaml\n"
        "  persona-judge learn --resume me.yaml --questions 5\n"
        '  persona-judge "How do I sleep better?" --profile me.yaml',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--questions", type=int, default=10, help="how many choices to make (default 10)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FILE", help=f"where to save (default {DEFAULT_OUT})")
    parser.add_argument("--resume", metavar="FILE", help="start from a saved profile (same model and basis)")
    parser.add_argument("--describe", metavar="TEXT", help='a stated preference kept in the profile ("keep it short")')
    parser.add_argument("--prompts", metavar="FILE", help="questions to ask about, one a line (default: built-in)")
    parser.add_argument("--basis", nargs="+", metavar="NAME", help="registry personas to learn weights for "
                        "(default: the built-in basis of 20)")
    parser.add_argument("--registry", metavar="FILE", help="a YAML persona registry merged over the built-ins")
    parser.add_argument("--length", action="store_true",
                        help="also learn whether you prefer shorter or longer answers (the basis's length feature)")
    parser.add_argument("--strategy", choices=("active", "random"), default="active",
                        help="how questions are chosen (default active: the most informative pair)")
    parser.add_argument("--max-tokens", type=int, default=96, help="length of each answer (default 96)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the answers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the answers and of random questions")
    parser.add_argument("-m", "--model", metavar="PATH_OR_ID", help="model (default: the embedded SmolLM2)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", help="weights dtype, e.g. float32")
    parser.add_argument("--backend", choices=("auto", "transformers", "llamacpp"), default="auto",
                        help="what runs the model (default auto: llama.cpp for a GGUF model on a CPU when installed)")
    return parser


# -- drawing --------------------------------------------------------------------------------------------------


def side_by_side(left: str, right: str, width: int, titles: tuple[str, str] = ("[1]", "[2]")) -> str:
    """Two texts in two columns of a ``width``-character screen."""
    column = max(20, (width - 3) // 2)
    wrap = lambda text: textwrap.wrap(" ".join(text.split()), column) or [""]  # noqa: E731
    lines = [f"{titles[0]:<{column}} │ {titles[1]}", f"{'─' * column}─┼─{'─' * column}"]
    for a, b in itertools.zip_longest(wrap(left), wrap(right), fillvalue=""):
        lines.append(f"{a:<{column}} │ {b}")
    return "\n".join(lines)


def profile_chart(profile: Any, width: int = 80) -> str:
    """One bar per dimension: to the left for its first pole, to the right for its second (``█`` blocks)."""
    entries = profile.dimensions()
    if not entries:
        return "(no weights)"
    strongest = max(abs(e["score"]) for e in entries) or 1.0
    label = max(len(e["dimension"]) for e in entries)
    pole = max(len(p or "") for e in entries for p in e["poles"])
    half = max(4, (width - label - 2 * pole - 16) // 2)
    lines = []
    for entry in entries:
        first, second = entry["poles"]
        cells = round(abs(entry["score"]) / strongest * half) if math.isfinite(entry["score"]) else 0
        left = ("█" * cells).rjust(half) if entry["score"] > 0 else " " * half
        right = ("█" * cells).ljust(half) if entry["score"] < 0 else " " * half
        lines.append(f"{entry['dimension']:<{label}}  {first:>{pole}} {left}│{right} {second or '':<{pole}}"
                     f" {entry['score']:+.2f}")
    return "\n".join(lines)


def strongest(profile: Any, k: int = 3) -> str:
    top = [f"{profile.pole_of(n, w)} ({w:+.2f} on {n})" for n, w in profile.top(k)]
    return ", ".join(top) or "nothing yet"


# -- the loop ----------------------------------------------------------------------------------------------------


def _ask(stdin: IO[str], stdout: IO[str]) -> str | None:
    """The user's pick: "1", "2" or "=", or None to finish (q or end of input)."""
    while True:
        stdout.write("Which answer do you prefer? [1/2/= no preference, q to finish]: ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return None
        answer = line.strip().lower()
        if answer in ("q", "quit", "exit"):
            return None
        if answer in CHOICES:
            return CHOICES[answer]
        stdout.write("Please type 1, 2 or = (or q to finish).\n")


def interact(learner: Any, questions: int, stdin: IO[str], stdout: IO[str], width: int | None = None,
             on_pick: Callable[[Any], Any] | None = None) -> Any:
    """Ask up to ``questions`` questions, record each pick (then ``on_pick(profile)``: the CLI saves it), and
    draw the profile; returns it."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    answered = 0
    for number in range(1, questions + 1):
        stdout.write(f"\nWriting two answers for question {number} of {questions}...\n")
        stdout.flush()
        question = learner.next_question()
        prompt = question.prompt if isinstance(question.prompt, str) else question.prompt[-1]["content"]
        stdout.write(f"\nQuestion {number} of {questions}: {prompt}\n\n")
        stdout.write(side_by_side(*question.answers, width) + "\n\n")
        choice = _ask(stdin, stdout)
        if choice is None:
            break
        profile = learner.record(question, choice)
        answered += 1
        if on_pick is not None:
            on_pick(profile)
        stdout.write(f"[{answered}/{questions}] recorded{' and saved' if on_pick else ''}. Strongest so far: "
                     f"{strongest(profile)}\n")
    profile = learner.profile
    stdout.write(f"\nYour profile after {answered} choice(s) (a bar to the left leans to the left pole):\n\n")
    stdout.write(profile_chart(profile, width) + "\n")
    stdout.flush()
    return profile


def _prompts(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise SystemExit(f"persona-judge learn: error: cannot read --prompts {path} ({exc.strerror or exc})")
    if not lines:
        raise SystemExit(f"persona-judge learn: error: --prompts {path} holds no questions")
    return lines


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given, in one line, or None."""
    if not 1 <= args.questions <= MAX_QUESTIONS:
        return f"--questions {args.questions}: give 1 to {MAX_QUESTIONS}"
    if not 1 <= args.max_tokens <= MAX_ANSWER_TOKENS:
        return f"--max-tokens {args.max_tokens}: give 1 to {MAX_ANSWER_TOKENS}"
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        return f"--temperature {args.temperature}: give a finite number >= 0"
    if not 0 <= args.seed < SEED_LIMIT:
        return f"--seed {args.seed}: give a whole number from 0 to {SEED_LIMIT - 1}"
    return None


def _unwritable(out: str) -> str | None:
    """Why the profile could not be saved at ``out`` (checked by creating a file beside it), or None."""
    path = Path(out).expanduser()
    if path.is_dir():
        return f"--out {out} is a folder; give a file name (e.g. {Path(out) / DEFAULT_OUT})"
    folder = path.parent
    if not folder.is_dir():
        return f"--out {out}: the folder {folder} does not exist"
    if path.exists() and not os.access(path, os.W_OK):
        return f"--out {out}: the file is not writable"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        return f"--out {out}: cannot write in {folder} ({exc.strerror or exc})"
    return None


def _usage_error(message: str) -> int:
    print(f"persona-judge learn: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(argv: Sequence[str], stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """The ``learn`` subcommand; returns the exit code."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    args = _parser().parse_args(list(argv))
    problem = _bad_arguments(args) or _unwritable(args.out)
    if problem:
        return _usage_error(problem)
    prompts = _prompts(args.prompts)
    from ..errors import PersonaJudgeError
    from ..profiles import PreferenceLearner, PreferenceProfile, resolve_model

    try:
        prior = PreferenceProfile.load(args.resume) if args.resume else None
        basis = args.basis or (list(prior.weights) if prior is not None else None)
        stdout.write("Loading the model...\n")
        stdout.flush()
        learner = PreferenceLearner(
            resolve_model(args.model, device=args.device, dtype=args.dtype, backend=args.backend), basis=basis,
            features=["length"] if args.length and prior is None else (), registry=args.registry,
            prompts=prompts, strategy=args.strategy, prior=prior, description=args.describe, seed=args.seed,
            max_tokens=args.max_tokens, temperature=args.temperature,
        )
    except PersonaJudgeError as exc:
        return _usage_error(" ".join(str(exc).split()))
    saved = {"picks": 0}  # how many picks the file at --out holds

    def save(profile: Any) -> None:
        profile.save(args.out)
        saved["picks"] += 1

    try:
        profile = interact(learner, args.questions, stdin, stdout, on_pick=save)
    except KeyboardInterrupt:
        picks = saved["picks"]
        kept = f"your {picks} choice(s) are saved in {args.out}" if picks else "no choice was made, nothing saved"
        stdout.write(f"\nInterrupted: {kept}.\n")
        stdout.flush()
        return EXIT_INTERRUPTED
    except PersonaJudgeError as exc:  # a pick that cannot be recorded: what was saved stays saved
        picks = saved["picks"]
        kept = f" (your {picks} choice(s) so far are saved in {args.out})" if picks else ""
        print(f"persona-judge learn: error: {' '.join(str(exc).split())}{kept}", file=sys.stderr)
        return EXIT_ERROR
    if learner.answered == 0 and prior is None and not args.describe:
        stdout.write("\nNo choices were made; nothing saved.\n")
        return EXIT_OK
    path = profile.save(args.out)
    stdout.write(f"\nSaved to {path}. Use it: persona-judge \"your question\" --profile {path}\n")
    return EXIT_OK


__all__ = ["interact", "profile_chart", "run", "side_by_side"]
