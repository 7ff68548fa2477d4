"""`persona-judge learn` keeps what it said it kept: a save after every pick, --out checked first, one-line errors.

The learner is a stand-in (no model): it proposes fixed answers and counts the picks in a real PreferenceProfile,
so the file on disk can be read back with PreferenceProfile.load.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import langchain_persona_judge.profiles as profiles_package
from langchain_persona_judge.cli import learn
from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile, resolve_basis


class FakeLearner:
    """Proposes two fixed answers; each pick adds 1 to the weight of the first basis persona (1) or the second (2)."""

    instances: list[FakeLearner] = []

    def __init__(self, handle: Any, **kwargs: Any) -> None:
        self.basis = resolve_basis(None)
        self.weights = [0.0] * len(self.basis)
        self.answered = 0
        FakeLearner.instances.append(self)

    def next_question(self) -> Any:
        return SimpleNamespace(prompt="Why is the sky blue?", answers=("Rayleigh.", "Because of the air."))

    def record(self, question: Any, choice: str) -> PreferenceProfile:
        self.answered += 1
        if choice in ("1", "2"):
            self.weights[int(choice) - 1] += 1.0
        return self.profile

    @property
    def profile(self) -> PreferenceProfile:
        return PreferenceProfile(self.basis, self.weights, ModelIdentity(None, "fake", "f" * 16),
                                 evidence={"comparisons": self.answered})


@pytest.fixture
def fake_learner(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeLearner.instances.clear()
    monkeypatch.setattr(profiles_package, "PreferenceLearner", FakeLearner)
    monkeypatch.setattr(profiles_package, "resolve_model", lambda *a, **k: object())


class InterruptAfter:
    """stdin that answers the given picks, then raises KeyboardInterrupt (Ctrl-C at the next prompt)."""

    def __init__(self, picks: list[str]) -> None:
        self.picks = list(picks)

    def readline(self) -> str:
        if not self.picks:
            raise KeyboardInterrupt
        return self.picks.pop(0) + "\n"


def test_ctrl_c_after_three_picks_leaves_a_profile_holding_them(fake_learner: None, tmp_path: Path) -> None:
    out = tmp_path / "me.yaml"
    stdout = io.StringIO()
    code = learn.run(["--questions", "10", "--out", str(out)], stdin=InterruptAfter(["1", "1", "2"]), stdout=stdout)
    assert code == learn.EXIT_INTERRUPTED
    assert "your 3 choice(s) are saved" in stdout.getvalue()
    profile = PreferenceProfile.load(out)
    assert profile.evidence["comparisons"] == 3
    names = list(profile.weights)
    assert profile.weights[names[0]] == 2.0 and profile.weights[names[1]] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["me.yaml"]  # no temporary file left behind


def test_ctrl_c_before_any_pick_saves_nothing(fake_learner: None, tmp_path: Path) -> None:
    out = tmp_path / "me.yaml"
    stdout = io.StringIO()
    assert learn.run(["--out", str(out)], stdin=InterruptAfter([]), stdout=stdout) == learn.EXIT_INTERRUPTED
    assert not out.exists() and "nothing saved" in stdout.getvalue()


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda tmp: tmp / "missing" / "me.yaml", "does not exist"),
        (lambda tmp: tmp, "is a folder"),
    ],
)
def test_a_bad_out_is_refused_before_the_first_question(fake_learner: None, tmp_path: Path, make_out: Any,
                                                        message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = learn.run(["--out", str(make_out(tmp_path))], stdin=InterruptAfter(["1"]), stdout=io.StringIO())
    assert code == learn.EXIT_USAGE and FakeLearner.instances == []  # nothing loaded, nothing asked
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_the_first_question(fake_learner: None, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = learn.run(["--out", str(folder / "me.yaml")], stdin=InterruptAfter(["1"]), stdout=io.StringIO())
    finally:
        folder.chmod(0o700)
    assert code == learn.EXIT_USAGE and FakeLearner.instances == []
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--seed", str(2**64)], ["--seed", "-1"], ["--questions", "0"], ["--max-tokens", "100000"],
     ["--temperature", "nan"]],
)
def test_bad_numbers_are_one_line_errors_before_anything_runs(fake_learner: None, tmp_path: Path, argv: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = learn.run([*argv, "--out", str(tmp_path / "me.yaml")], stdin=InterruptAfter([]), stdout=io.StringIO())
    assert code == learn.EXIT_USAGE and FakeLearner.instances == []
    err = capsys.readouterr().err
    assert err.startswith("persona-judge learn: error: " + argv[0]) and err.count("\n") == 1


def test_a_bad_resume_file_is_a_one_line_error(fake_learner: None, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("[" * 50)
    code = learn.run(["--resume", str(broken), "--out", str(tmp_path / "me.yaml")], stdin=InterruptAfter([]),
                     stdout=io.StringIO())
    assert code == learn.EXIT_USAGE
    err = capsys.readouterr().err
    assert "broken.yaml" in err and err.count("\n") == 1


def test_a_finished_run_saves_every_pick(fake_learner: None, tmp_path: Path) -> None:
    out = tmp_path / "me.json"
    stdin = io.StringIO("1\n=\n2\n")
    assert learn.run(["--questions", "3", "--out", str(out)], stdin=stdin, stdout=io.StringIO()) == learn.EXIT_OK
    assert PreferenceProfile.load(out).evidence["comparisons"] == 3
