"""Every example in ``examples/`` runs on the embedded model, exits 0 and prints what its docstring promises.

The examples read their answer length from PERSONA_JUDGE_EXAMPLE_MAX_TOKENS; the tests shrink it so the
five scripts finish in about a minute and a half on two shared CPU cores.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MAX_TOKENS = os.environ.get("PERSONA_JUDGE_TEST_MAX_TOKENS", "8")
NOT_HERE = {"demo.py"}  # `make demo`'s script: test_demo_runs below

# For each example: the labels it prints, and how many non-empty answers it prints.
EXPECTED: dict[str, tuple[list[str], int]] = {
    "lcel_chain.py": (["invoke:", "stream:"], 2),
    "stream_terminal.py": (["stats:", "acceptance rate:", "forward passes:", "finish reason:"], 1),
    "async_stream.py": (["astream:", "ainvoke x2 (asyncio.gather):", "acceptance rate"], 3),
    "batch.py": (["bind(preferences=...) + batch:", "configurable_fields + batch with per-input config:"], 4),
    "learn_preferences.py": (["learn_profile (4 choices), strongest poles:", "learn_from_texts (2 texts), strongest poles:",
                              "profile_from_description: weights all zero = True", "profile.rank (best first):",
                              "profile added: {'personas': [{'name':"], 1),
}


def _answers(name: str, out: str) -> list[str]:
    """The answers an example printed: the line after a label, or after ``A: ``."""
    if name == "lcel_chain.py":
        return re.findall(r"^(?:invoke|stream):\n(.*)$", out, flags=re.M)
    if name == "async_stream.py":
        return re.findall(r"^astream:\n(.*)$", out, flags=re.M) + re.findall(r"^A: (.*)$", out, flags=re.M)
    return re.findall(r"^A: (.*)$", out, flags=re.M)


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - NOT_HERE
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_has_a_docstring_that_says_how_to_run_it(name: str) -> None:
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text("utf-8")))
    assert doc and f"examples/{name}" in doc and "PERSONA_JUDGE_EXAMPLE_MAX_TOKENS" in doc


@functools.lru_cache(maxsize=None)
def _run(name: str) -> subprocess.CompletedProcess[str]:
    """The example's run (once per session, whichever test reads it first)."""
    env = {**os.environ, "PERSONA_JUDGE_EXAMPLE_MAX_TOKENS": MAX_TOKENS}
    # One torch thread per script unless told otherwise: on a few shared cores extra threads mostly wait
    # for each other, and the run time becomes erratic.
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    done = _run(name)
    assert done.returncode == 0, done.stderr[-3000:]
    labels, count = EXPECTED[name]
    for label in labels:
        assert label in done.stdout, f"{label!r} missing from:\n{done.stdout}"
    answers = _answers(name, done.stdout)
    assert len(answers) == count and all(a.strip() for a in answers), done.stdout


def test_learned_reward_ranks_the_answer_the_user_would_pick_first() -> None:
    """The user of examples/learn_preferences.py always chose the short, plain answer: the learned reward puts
    the plain answer to a new question above the technical one, by a margin."""
    done = _run("learn_preferences.py")
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = done.stdout.split("profile.rank (best first):\n", 1)[1].splitlines()[:2]
    (first, best), (second, worst) = (line.split(maxsplit=1) for line in ranked)
    assert best.startswith("Leaves lose their green") and worst.startswith("Chlorophyll degradation"), ranked
    assert float(first) > float(second) + 1.0, ranked


def test_demo_runs() -> None:
    """`make demo`'s script: two preference pairs, each with its preferences, a non-empty answer and its stats."""
    env = {**os.environ, "PERSONA_JUDGE_DEMO_MAX_TOKENS": "12"}
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sections = re.split(r"^=== Answer .* ===$", done.stdout, flags=re.M)[1:]
    assert len(sections) == 2, done.stdout
    for section in sections:
        assert section.count("  preference: ") == 2, section
        stats = re.search(r"^\[(\d+) tokens in [\d.]+ s, [\d.]+ tok/s; acceptance (\d+)%", section, flags=re.M)
        assert stats and 0 < int(stats[1]) <= 12 and 0 <= int(stats[2]) <= 100, section
        answer = section.split("\n\n", 1)[1].split("\n\n[", 1)[0]
        assert answer.strip(), section


def _repeated_ngram_share(tokens: list[int], n: int = 4) -> float:
    """The share of the answer's n-grams that already occurred earlier in it (0: no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return sum(1 for i, g in enumerate(grams) if g in grams[:i]) / max(len(grams), 1)


@pytest.mark.parametrize("backend", ["auto", "transformers"])
def test_the_demo_answers_do_not_loop(backend: str) -> None:
    """The demo's full-length answers, with its repetition penalty, against the same calls without it, on the
    backend the demo picks (llama.cpp where installed) and on transformers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", EXAMPLES / "demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    shares, greedy, unpenalised = [], [], []

    def share(llm, **kwargs) -> float:
        trace = llm.invoke(demo.QUESTION, **kwargs).response_metadata["trace"]
        return _repeated_ngram_share([entry["token_id"] for entry in trace])

    for preferences in demo.PAIRS.values():
        llm = demo.make_llm(preferences, 96).model_copy(update={"backend": backend})
        shares.append(share(llm))
        if backend == "transformers":
            greedy.append(share(llm, temperature=0))
            unpenalised.append(share(llm, temperature=0, repetition_penalty=1.0))
    assert max(shares) < 0.05, shares
    if backend == "transformers":
        # The control (so the test can fail): greedy decoding without the penalty loops (31% of the first
        # answer's 4-grams repeat), and the demo's penalty takes the same greedy calls below 5%. A sampled answer
        # without the penalty repeats more or less by the luck of the draw (0-22% here), so the control is greedy.
        # On llama.cpp the unpenalised answers depend on the build's kernels (2-14% repeats across two builds
        # here), so there the check is the penalised answers' alone.
        assert max(unpenalised) > 0.1, f"without the penalty the greedy answer repeats itself: {unpenalised}"
        assert max(greedy) < 0.05, greedy
