"""benchmarks/llamacpp_builds.py: the installed build's read rates in a process of its own, and a build that
cannot run recorded with its exit status rather than stopping the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import llamacpp_builds
from tests.conftest import llama_cpp_or_skip


def test_builds_are_compared_and_a_broken_one_is_recorded(tmp_path: Path) -> None:
    llama_cpp_or_skip()
    broken = tmp_path / "broken"
    (broken / "llama_cpp").mkdir(parents=True)
    (broken / "llama_cpp" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    out = tmp_path / "builds.json"
    llamacpp_builds.main(["--build", f"broken={broken}", "--flags", "broken=-DNOTHING=ON", "--repeats", "1",
                          "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    installed, bad = report["builds"]["installed"], report["builds"]["broken"]
    assert "benchmarks.llamacpp_builds" in report["provenance"]["command"]
    # Reading with every position's logits costs more than without (the output layer): both rates are real.
    assert 0 < installed["tokens_per_second_with_logits"] < installed["tokens_per_second_without_logits"]
    assert installed["runs"][0]["library"].endswith("llama_cpp/__init__.py")
    assert bad["runs"] == [{"error": "exit status -4", "stderr_tail": ""}] and bad["cmake_args"] == "-DNOTHING=ON"
    assert "tokens_per_second_with_logits" not in bad and "vs_installed" not in bad


def test_a_build_directory_without_llama_cpp_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        llamacpp_builds.main(["--build", f"empty={tmp_path}", "--out", str(tmp_path / "x.json")])
