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


# -- the guidance rule (fixed before the fresh-prompt run) ----------------------------------------------------


def _report(rates: dict[str, dict[str, float]], fails: dict[str, int], ppl: dict[str, float]) -> dict:
    """A quality report with one setting (two preferences), 80 answers per condition, planted figures."""
    records = [{"setting": "s", "condition": c, "prompt_id": f"q{i // 2}", "guards": ["echo"] if i < n else []}
               for c, n in fails.items() for i in range(80)]
    return {"records": records, "results": {"settings": {"s": {
        "dimensions": {dim: {"comparisons": {f"{c} vs direct": {"win_rate": r[dim]} for c, r in rates.items()}}
                       for dim in ("simple", "friendly")},
        "fluency": {c: {"ratio_vs_direct": v} for c, v in ppl.items()}}}}}


def test_guidance_rule_takes_the_smallest_gamma_that_passes_every_part():
    from benchmarks import guidance_rule

    good = {"simple": 0.61, "friendly": 0.7}
    report = _report(
        {"persona_judge_g1.25": {"simple": 0.60, "friendly": 0.9},   # 60% does not exceed 60%
         "persona_judge_g1.5": good, "persona_judge_g2": good},
        {"direct": 4, "persona_judge_g1.25": 0, "persona_judge_g1.5": 7, "persona_judge_g2": 0},  # 7 <= 1.5*4+1
        {"persona_judge_g1.25": 1.1, "persona_judge_g1.5": 1.5, "persona_judge_g2": 1.2})
    out = guidance_rule.recommend(report)
    assert [out["checks"][g]["passes"] for g in ("1.25", "1.5", "2")] == [False, True, True]
    assert out["recommended"] == 1.5
    assert not out["checks"]["1.25"]["settings"]["s"]["wins_pass"]
    assert out["checks"]["1.5"]["settings"]["s"]["guard_failures"] == 7


def test_guidance_rule_fails_on_guards_or_perplexity_and_can_recommend_nothing():
    from benchmarks import guidance_rule

    good = {"simple": 0.8, "friendly": 0.8}
    report = _report({"persona_judge_g1.25": good, "persona_judge_g1.5": good, "persona_judge_g2": good},
                     {"direct": 4, "persona_judge_g1.25": 8, "persona_judge_g1.5": 0, "persona_judge_g2": 0},
                     {"persona_judge_g1.25": 1.0, "persona_judge_g1.5": 1.51})  # γ=2: no perplexity at all
    out = guidance_rule.recommend(report)
    assert not out["checks"]["1.25"]["settings"]["s"]["guards_pass"]  # 8 > 1.5 * 4 + 1
    assert not out["checks"]["1.5"]["settings"]["s"]["perplexity_pass"]
    assert not out["checks"]["2"]["passes"] and out["recommended"] is None
