"""The benchmarks' one results writer, and every figure the docs quote against the results file it comes from."""

from __future__ import annotations

import json
import shlex

from benchmarks import common


def test_write_results_records_how_the_file_was_made(tmp_path):
    path = common.write_results(tmp_path / "sub" / "r.json", {"figure": 1.5, "provenance": "stale"},
                                module="benchmarks.speed", argv=["--threads", "1", "--out", "a b.json"],
                                backend="llamacpp", threads=1)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["figure"] == 1.5 and list(saved)[0] == "provenance"
    made = saved["provenance"]
    assert shlex.split(made["command"]) == ["python", "-m", "benchmarks.speed", "--threads", "1", "--out", "a b.json"]
    assert made["backend"] == "llamacpp"
    assert made["machine"]["cpu"] and made["machine"]["cpu_cores"] >= 1 and made["machine"]["torch_threads"] == 1
    assert {"torch", "transformers", "llama_cpp", "numpy", "langchain_persona_judge"} <= set(made["libraries"])
    assert made["libraries"]["torch"] and set(made["git"]) == {"commit", "dirty"}
    assert made["written_at"].endswith("+00:00")
    assert not list(tmp_path.glob("sub/*.tmp"))  # written atomically, nothing left behind


def test_the_benchmarks_share_their_constants():
    from benchmarks import backends, learning, quality, speed

    assert speed.QUESTIONS is common.QUESTIONS and backends.QUESTIONS is common.QUESTIONS
    assert speed.PREFERENCES is common.PREFERENCES and backends.PREFERENCES is common.PREFERENCES
    assert speed.SAMPLING is common.SAMPLING and quality.MAIN_SAMPLING is common.SAMPLING
    assert learning.SAMPLING == {**common.SAMPLING, "repetition_penalty": 1.2}
    assert quality.LOOKAHEAD == common.LOOKAHEAD == 4
