"""The rule that picks the recommended guidance strength γ, fixed before the fresh-prompt run (benchmarks/README.md).

    .venv/bin/python -m benchmarks.guidance_rule benchmarks/results/quality_fresh.json
    .venv/bin/python -m benchmarks.guidance_rule benchmarks/results/quality_rules.json \
        --corrected persona_judge_g1.25 --out benchmarks/results/quality_rules_g1.25_corrected.json

A γ passes when, in every setting of the run: (a) guided Persona-judge's win rate against the direct prompt
(guards on, draws as half) exceeds 60% on each preference of the setting; (b) its answers failing a guard number
at most 1.5 × the direct prompt's + 1; (c) its plain-model perplexity is at most 1.5× the direct prompt's. The
recommendation is the smallest γ that passes (None if none does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CANDIDATES = (1.25, 1.5, 2.0)
WIN_RATE = 0.60
GUARD_FACTOR, GUARD_SLACK = 1.5, 1
PERPLEXITY_RATIO = 1.5


def condition(gamma: float) -> str:
    return "persona_judge" if gamma == 1 else f"persona_judge_g{gamma:g}"


def guard_failures(records: list[dict[str, Any]], setting: str, name: str,
                   prompts: set[str] | None = None) -> tuple[int, int]:
    """(answers failing a guard, answers) of condition ``name`` in ``setting`` (on ``prompts`` only, if given)."""
    rows = [r for r in records if r.get("setting") == setting and r["condition"] == name
            and (prompts is None or r.get("prompt_id") in prompts)]
    return sum(bool(r.get("guards")) for r in rows), len(rows)


def check(report: dict[str, Any], gamma: float) -> dict[str, Any]:
    """Every part of the rule for one γ, per setting, and whether it passes."""
    name = condition(gamma)
    settings = report["results"]["settings"]
    out: dict[str, Any] = {"condition": name, "settings": {}}
    for setting, res in settings.items():
        wins = {dim: d["comparisons"].get(f"{name} vs direct", {}).get("win_rate")
                for dim, d in res["dimensions"].items()}
        fails, answers = guard_failures(report["records"], setting, name)
        mine = {r.get("prompt_id") for r in report["records"] if r.get("setting") == setting and r["condition"] == name}
        direct_fails, direct_answers = guard_failures(report["records"], setting, "direct", mine)
        ratio = res["fluency"].get(name, {}).get("ratio_vs_direct")
        entry = {
            "win_rates": wins, "wins_pass": all(w is not None and w > WIN_RATE for w in wins.values()),
            "guard_failures": fails, "answers": answers, "direct_guard_failures": direct_fails,
            "direct_answers": direct_answers,
            "guards_pass": answers > 0 and fails <= GUARD_FACTOR * direct_fails + GUARD_SLACK,
            "perplexity_ratio": ratio, "perplexity_pass": ratio is not None and ratio <= PERPLEXITY_RATIO,
        }
        entry["passes"] = entry["wins_pass"] and entry["guards_pass"] and entry["perplexity_pass"]
        out["settings"][setting] = entry
    out["passes"] = bool(out["settings"]) and all(e["passes"] for e in out["settings"].values())
    return out


def recommend(report: dict[str, Any], candidates: tuple[float, ...] = CANDIDATES) -> dict[str, Any]:
    """The rule over every candidate γ, and the smallest that passes (None if none does)."""
    checks = {f"{g:g}": check(report, g) for g in sorted(candidates)}
    passing = [g for g in sorted(candidates) if checks[f"{g:g}"]["passes"]]
    return {"rule": {"win_rate_above": WIN_RATE, "guards_at_most": f"{GUARD_FACTOR} x direct + {GUARD_SLACK}",
                     "perplexity_ratio_at_most": PERPLEXITY_RATIO},
            "checks": checks, "recommended": passing[0] if passing else None}


def corrected_win_rates(report: dict[str, Any], name: str, family: int = 4, n_boot: int = 2000,
                        alpha: float = 0.05) -> dict[str, Any]:
    """``name`` against the direct prompt on every (setting, preference) pair of a quality results file, with
    Bonferroni-corrected bootstrap CIs: each at level ``1 − alpha / family`` (the run's four comparisons: two
    settings × two preferences), resampling prompts and seeds as the benchmark does."""
    from benchmarks.metrics import DIMENSIONS, outcome_matrix, win_rate
    from benchmarks.quality import SETTINGS, _by_condition, _scored

    level = 1 - alpha / family
    out: dict[str, Any] = {"condition": name, "level": round(level, 6), "family": family, "pairs": {}}
    for setting in report["config"]["settings"]:
        groups = _by_condition(report["records"], setting)
        if name not in groups or "direct" not in groups:
            continue
        shared = sorted(set(groups[name]) & set(groups["direct"]))
        for dim_name in SETTINGS[setting]:
            mats = [outcome_matrix(_scored(groups[name][p], dim_name), _scored(groups["direct"][p], dim_name),
                                   DIMENSIONS[dim_name]) for p in shared]
            rate = win_rate(mats, n_boot=n_boot, level=level)
            out["pairs"][f"{setting}/{dim_name}"] = {
                "win_rate": round(rate.win_rate, 4), "ci": [round(rate.ci_low, 4), round(rate.ci_high, 4)],
                "prompts": len(shared), "ci_above_half": rate.ci_low > 0.5}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="a benchmarks.quality results file")
    parser.add_argument("--corrected", metavar="CONDITION", default=None,
                        help="instead: CONDITION vs the direct prompt with Bonferroni-corrected CIs (family of 4)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (with provenance)")
    args = parser.parse_args(argv)
    report = json.loads(args.results.read_text(encoding="utf-8"))
    out = corrected_win_rates(report, args.corrected) if args.corrected else recommend(report)
    out = {"source": str(args.results), **out}
    print(json.dumps(out, indent=1))
    if args.out:
        from benchmarks.common import write_results

        write_results(args.out, out, module="benchmarks.guidance_rule", argv=argv,
                      backend=report["config"].get("backend", "transformers"))
    return out


if __name__ == "__main__":
    main()
