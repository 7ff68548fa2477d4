"""Preference adherence: decoding rules against the direct prompt and no preference, per preference dimension.

    .venv/bin/python -m benchmarks.quality             # the subset `make bench` runs (a 6-minute budget)
    .venv/bin/python -m benchmarks.quality --full      # all 100 prompts, every setting (no time limit)
    .venv/bin/python -m benchmarks.quality --quick     # a smoke test
    .venv/bin/python -m benchmarks.quality --rescore benchmarks/results/quality.json   # recompute from saved texts
    .venv/bin/python -m benchmarks.quality ... --resume results.json --out results.json  # decode only what is missing
    .venv/bin/python -m benchmarks.quality --prompts 60 --gammas 2 --sweep-gammas 1.5 3 --sweep-prompts 30 \
        --paper-settings --max-minutes 50 --out benchmarks/results/quality_rules.json   # the rules run (README)

Run it from the repository root, as a module. How long each takes: benchmarks/README.md.

Prompts, dimensions, metrics, margins, guards and statistics: ../shared/bench/README.md (read at run time from
the project's shared/ folder beside the repository; --shared or $PERSONA_JUDGE_SHARED point elsewhere).
The preference texts are the Personalized Soups wordings in ../shared/reference/preferences.json.

A *setting* is a set of preferences given at once (e.g. simple + friendly). For each prompt and seed:

none              no preference (the base system prompt "You are a helpful AI assistant." and the question)
direct            every preference of the setting in that one system prompt (the usual way to personalise)
persona_judge     one persona per preference (system layout), Persona-judge decoding, λ = 4
product           the same personas, the weighted product Σ w_i log p_i (uniform weights; combine="product")
persona_judge_gγ  Persona-judge over guided personas: log p0 + γ (log p_i − log p0) against the reference
product_gγ        log p0 + γ Σ w_i (log p_i − log p0)
direct_gγ         the direct prompt itself guided against the reference (classifier-free guidance on the plain
                  prompt, the simplest competitor)
paper             the paper's setting: each preference as an earlier user turn (layout "user_turn"),
                  temperature 0.9, top-k 20, top-p 0.9, λ = 4

The reference prompt p0 is the conversation with no preference, as the chat model builds it
(``persona_messages(conversation, [])``: the chat template's own default system prompt). γ values: --gammas
(every prompt) and --sweep-gammas (the first --sweep-prompts prompts only).

Every condition but paper samples with temperature 0.7, top-p 0.95 (the chat model's defaults) from the same
engine seed per prompt and seed; every condition is decoded by the package's engine (one persona = plain
decoding with a KV cache), to EOS or --max-new-tokens. Within a setting, each preference's dimension is scored
on every response; A beats B on a prompt when its metric is better by more than the dimension's margin (every
seed of A against every seed of B), and a response that fails a guard (empty/under 5 words, echoes the
question, repeats itself) loses; the same win rates are also reported without the guards. "Both" is the share
of (prompt, seed pair) comparisons that A wins on every preference of the setting at once. Fluency: each
answer's per-token perplexity under the plain model (the reference prompt, then the answer's tokens; one
forward per answer), so that strength bought with gibberish shows up.
Win rate = (wins + ties/2) / comparisons, 95% bootstrap CI resampling prompts and seeds within a prompt.
A/A control: seed 0 against seed 1 of the same condition; its CI must contain 50%.
Raw texts and token ids are saved with the results, so every figure can be recomputed (--rescore).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import LOOKAHEAD, RESULTS, SAMPLING, machine_info, shared_dir, write_results
from benchmarks.metrics import DIMENSIONS, aa_matrix, answer_nll, compare, guard_failures, outcome_matrix, win_rate

SETTINGS: dict[str, list[str]] = {
    "simple+friendly": ["simple", "friendly"],
    "concise+friendly": ["concise", "friendly"],
    "expert+informative": ["expert", "informative"],
    "concise+unfriendly": ["concise", "unfriendly"],
    "simple+concise+friendly": ["simple", "concise", "friendly"],
}
DEFAULT_SETTINGS = ["simple+friendly", "concise+friendly"]
MAIN_SAMPLING = SAMPLING
PAPER_SAMPLING = {"temperature": 0.9, "top_k": 20, "top_p": 0.9}
RULES = ("persona_judge", "product", "direct")
"""The rules a γ applies to: Persona-judge over guided personas, the guided product, the guided direct prompt."""
DEFAULT_GAMMAS = [2.0]
CRITERIA = {"win_rate": 0.60, "guard_ratio": 1.5, "perplexity_ratio": 1.5}
"""The issue's bar against the direct prompt: win rate >= 60% with the CI's lower bound above 50% on every
measurable dimension, guard failures <= 1.5x the direct prompt's, perplexity within 1.5x of the direct prompt's."""
DETECTABLE_AT_FULL = 0.10  # shared/bench/README.md: ~10 points with 100 prompts x 2 seeds
DEFAULT_PROMPTS = 20  # at most; on 2 CPU cores the default time budget stops earlier
DEFAULT_MAX_MINUTES = 6.0  # `make bench` passes what its time budget leaves (see the Makefile)


# -- generation (in worker processes) --------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(model: str | None, threads: int, device: str = "cpu", backend: str = "transformers") -> None:
    import torch

    torch.set_num_threads(threads)
    from langchain_persona_judge import load_model

    # transformers: every record before the fresh-prompt run was decoded on it. The perplexity always reads a
    # transformers forward (the same weights de-quantised to fp32 when llama.cpp decodes the GGUF).
    extra = {"n_threads": threads} if backend == "llamacpp" else {}
    handle = load_model(model, device=device, backend=backend, **extra)
    _STATE["model"], _STATE["tokenizer"] = handle, handle.tokenizer
    _STATE["scorer"] = (handle if backend == "transformers" else
                        load_model(model, device=device, backend="transformers"))


_CONDITION = re.compile(r"^(persona_judge|product|direct)_g(-?[\d.]+)$")


def condition_name(rule: str, gamma: float) -> str:
    """persona_judge, product, direct (γ = 1) or persona_judge_g2, product_g1.5, direct_g3 ..."""
    return rule if gamma == 1 else f"{rule}_g{gamma:g}"


def condition_spec(condition: str) -> dict[str, Any]:
    """What a condition decodes: its prompts (none, direct, personas, paper), combine rule and guidance γ."""
    match = _CONDITION.match(condition)
    rule, gamma = (match[1], float(match[2])) if match else (condition, 1.0)
    if rule in ("none", "direct", "paper"):
        return {"prompts": rule, "combine": "judge", "guidance": gamma, "rule": rule}
    if rule not in ("persona_judge", "product"):
        raise ValueError(f"unknown condition {condition!r}")
    return {"prompts": "personas", "combine": "judge" if rule == "persona_judge" else "product",
            "guidance": gamma, "rule": rule}


def setting_conditions(setting: str, paper_settings: list[str], gammas: list[float]) -> list[str]:
    """The conditions decoded for ``setting`` (none is shared by every setting and is not listed)."""
    out = ["direct", "persona_judge", "product"]
    out += [condition_name(rule, g) for g in gammas if g != 1 for rule in RULES]
    return out + (["paper"] if setting in paper_settings else [])


def build_prompts(tokenizer: Any, question: str, condition: str, preferences: list[str]) -> list[Any]:
    """The token prompts of one condition (one tensor per persona)."""
    from langchain_persona_judge.personas import persona_messages, render_preferences
    from langchain_persona_judge.runtime import encode_chat

    conversation = [{"role": "user", "content": question}]
    kind = condition_spec(condition)["prompts"]
    if kind == "none":
        base = render_preferences("system", [])
        return [encode_chat(tokenizer, [{"role": "system", "content": base}, *conversation])]
    if kind == "direct":
        return [encode_chat(tokenizer, persona_messages(conversation, preferences))]
    layout = "user_turn" if kind == "paper" else "system"
    return [encode_chat(tokenizer, persona_messages(conversation, [p], layout=layout)) for p in preferences]


def reference_prompt(tokenizer: Any, question: str) -> Any:
    """The conversation with no preference, as the chat model builds guidance's reference (and the plain model's
    prompt for the perplexity of an answer)."""
    from langchain_persona_judge.personas import persona_messages
    from langchain_persona_judge.runtime import encode_chat

    return encode_chat(tokenizer, persona_messages([{"role": "user", "content": question}], []))


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from langchain_persona_judge import generate

    model, tokenizer = _STATE["model"], _STATE["tokenizer"]
    prompts = build_prompts(tokenizer, job["question"], job["condition"], job["preferences"])
    spec = condition_spec(job["condition"])
    reference = reference_prompt(tokenizer, job["question"])
    sampling = PAPER_SAMPLING if job["condition"] == "paper" else MAIN_SAMPLING
    rule: dict[str, Any] = {"combine": spec["combine"], "guidance": spec["guidance"]}
    if job.get("repetition_penalty"):
        rule["repetition_penalty"] = job["repetition_penalty"]
    start = time.perf_counter()
    gen = generate(model, prompts, max_new_tokens=job["max_new_tokens"], lookahead=LOOKAHEAD, do_sample=True,
                   seed=job["engine_seed"], reference=reference if spec["guidance"] != 1 else None, **rule,
                   **sampling)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=True).strip()
    nll = answer_nll(_STATE["scorer"].model, reference.tolist(), gen.token_ids)  # a transformers model's forward
    out = {k: v for k, v in job.items() if k not in ("preferences", "max_new_tokens")}
    out.update(text=text, tokens=len(gen.token_ids), finish_reason=gen.finish_reason, seconds=round(seconds, 3),
               combine=spec["combine"], guidance=spec["guidance"], token_ids=list(gen.token_ids),
               plain_nll=round(nll, 5) if nll == nll else None,
               plain_perplexity=round(math.exp(nll), 4) if nll == nll else None)
    if len(prompts) > 1 and spec["combine"] == "judge":
        out.update(acceptance_rate=round(gen.stats.acceptance_rate, 4),
                   tokens_per_iteration=round(gen.stats.tokens_per_iteration, 3))
    return out


def plan_jobs(prompts: list[dict[str, str]], settings: list[str], paper_settings: list[str], seeds: int,
              max_new_tokens: int, texts: dict[str, str], gammas: list[float] | None = None,
              sweep_gammas: list[float] | None = None, sweep_prompts: int = 0) -> list[dict[str, Any]]:
    """Every response to decode, in groups run whole (``group``): each prompt's --gammas conditions, and the
    --sweep-gammas conditions of the first ``sweep_prompts`` prompts (all when 0) as groups of their own,
    spread evenly among the others, so that a time budget that stops early leaves both complete prefixes
    (about ``sweep_prompts / len(prompts)`` of the prompts for the sweep)."""
    gammas = DEFAULT_GAMMAS if gammas is None else gammas
    sweep = sorted(set(sweep_gammas or []) - set(gammas) - {1.0})
    n_sweep = min(sweep_prompts or len(prompts), len(prompts)) if sweep else 0

    def group(p_index: int, gs: list[float], main: bool) -> list[dict[str, Any]]:
        row, jobs = prompts[p_index], []
        for seed in range(seeds):
            base = {"prompt_id": row["id"], "question": row["prompt"], "seed": seed,
                    "engine_seed": 7919 * seed + p_index, "max_new_tokens": max_new_tokens,
                    "group": row["id"] if main else f"{row['id']}/sweep"}
            if main:
                jobs.append({**base, "setting": None, "condition": "none", "preferences": []})
            for setting in settings:
                prefs = [texts[d] for d in SETTINGS[setting]]
                conditions = (setting_conditions(setting, paper_settings, gs) if main else
                              [condition_name(rule, g) for g in gs for rule in RULES])
                for condition in conditions:
                    jobs.append({**base, "setting": setting, "condition": condition, "preferences": prefs})
        return jobs

    jobs: list[dict[str, Any]] = []
    placed = 0
    for p_index in range(len(prompts)):
        jobs += group(p_index, gammas, True)
        # sweep group j goes after main group ceil((j + 1) * n / n_sweep) - 1
        while placed < n_sweep and -(-(placed + 1) * len(prompts) // n_sweep) - 1 <= p_index:
            jobs += group(placed, sweep, False)
            placed += 1
    return jobs


def generate_all(jobs: list[dict[str, Any]], model: str | None, workers: int, threads: int,
                 device: str = "cpu", max_seconds: float | None = None, min_prompts: int = 2,
                 backend: str = "transformers") -> tuple[list[dict[str, Any]], bool]:
    """Decode every job; returns (records, whether the time budget stopped it before the last prompts).

    Jobs are started a prompt at a time, in order. With ``max_seconds``, a new prompt is started only while the
    time it is expected to take (from the wall time per response so far) still fits; a started prompt is
    always finished, so the prompts run are always a prefix of the list and complete.
    """
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(job.get("group", job["prompt_id"]), []).append(job)
    pending = deque(groups.values())
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="quality", unit="response", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    started = 0
    stopped = False
    pool = worker_pool(model, workers, threads, device, backend)
    inflight: set[Any] = set()

    def fits(extra_jobs: int) -> bool:
        if max_seconds is None or started < min_prompts or not records:
            return True
        elapsed = time.perf_counter() - start
        per_job = elapsed / len(records)
        return elapsed + (len(inflight) + extra_jobs) * per_job <= max_seconds

    with pool:
        while pending or inflight:
            while pending and not stopped and len(inflight) < 2 * max(workers, 1):
                if not fits(len(pending[0])):
                    stopped = True
                    break
                group = pending.popleft()
                inflight |= {pool.submit(run_job, job) for job in group}
                started += 1
            if stopped:
                pending.clear()
            if not inflight:
                break
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                records.append(future.result())
                bar.update()
    if stopped:
        bar.total = len(records)
        bar.refresh()
    bar.close()
    order = {(j["prompt_id"], j["seed"], j["setting"], j["condition"]): i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r["prompt_id"], r["seed"], r["setting"], r["condition"])])
    return records, stopped


def worker_pool(model: str | None, workers: int, threads: int, device: str = "cpu",
                backend: str = "transformers") -> Executor:
    """``workers`` spawned processes with the model loaded, or (``workers <= 1``) one thread of this process."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1:
        return ThreadPoolExecutor(1, initializer=_init_worker, initargs=(model, threads, device, backend))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(model, threads, device, backend))


# -- scoring and statistics --------------------------------------------------------------------------------


def score_records(records: list[dict[str, Any]]) -> None:
    """Add every dimension's metric and the guard failures to each record, in place."""
    for r in records:
        r["metrics"] = {name: round(dim.score(r["text"]), 5) for name, dim in DIMENSIONS.items()}
        r["guards"] = guard_failures(r["text"], r["question"])


def _by_condition(records: list[dict[str, Any]], setting: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """condition -> prompt_id -> records sorted by seed (none is shared by every setting)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        if r["condition"] == "none" or r["setting"] == setting:
            out.setdefault(r["condition"], {}).setdefault(r["prompt_id"], []).append(r)
    for per_prompt in out.values():
        for rs in per_prompt.values():
            rs.sort(key=lambda r: r["seed"])
    return out


def condition_order(condition: str) -> tuple[int, float, str]:
    """none, direct, persona_judge, product, paper, then the guided rules by rule and γ."""
    fixed = ["none", "direct", "persona_judge", "product", "paper"]
    if condition in fixed:
        return (fixed.index(condition), 0.0, condition)
    spec = condition_spec(condition)
    return (len(fixed) + RULES.index(spec["rule"]), spec["guidance"], condition)


def comparisons_for(conditions: list[str]) -> list[tuple[str, str]]:
    """direct vs none, then every other condition against the direct prompt and against none (and
    Persona-judge against the paper's layout, when both ran)."""
    present = sorted(set(conditions), key=condition_order)
    out = [("direct", "none")] if {"direct", "none"} <= set(present) else []
    for c in present:
        if c not in ("none", "direct"):
            out += [(c, b) for b in ("direct", "none") if b in present]
    if {"persona_judge", "paper"} <= set(present):
        out.append(("persona_judge", "paper"))
    return out


def analyse(records: list[dict[str, Any]], settings: list[str], n_boot: int = 2000) -> dict[str, Any]:
    results: dict[str, Any] = {}
    aa_all: list[bool] = []
    half_widths: list[float] = []
    for setting in settings:
        groups = _by_condition(records, setting)
        comparisons = comparisons_for(list(groups))
        dims_out: dict[str, Any] = {}
        for dim_name in SETTINGS[setting]:
            dims_out[dim_name], widths = analyse_dimension(groups, dim_name, n_boot, comparisons)
            half_widths += widths
            if "pooled" in dims_out[dim_name]["aa_control"]:
                aa_all.append(dims_out[dim_name]["aa_control"]["pooled"]["contains_50"])
        joint = {f"{a} vs {b}": joint_wins(groups, SETTINGS[setting], a, b, n_boot)
                 for a, b in comparisons if b == "direct"}
        results[setting] = {"preferences": SETTINGS[setting], "dimensions": dims_out, "both": joint,
                            "guards_and_lengths": guards_and_lengths(groups), "fluency": fluency(groups, n_boot)}
        results[setting]["criteria"] = setting_criteria(groups, results[setting])
    return {"settings": results, "aa_control_ok": all(aa_all) if aa_all else None,
            "median_ci_half_width": round(float(np.median(half_widths)), 4) if half_widths else None,
            "criteria": overall_criteria(results)}


def _scored(rs: list[dict[str, Any]], dim_name: str, guards: bool = True) -> list[tuple[float, bool]]:
    """(metric, fails a guard) per response; ``guards=False`` treats every response as passing."""
    return [(r["metrics"][dim_name], guards and bool(r["guards"])) for r in rs]


def _verdict(low: float, high: float) -> str:
    return "better" if low > 0.5 else "worse" if high < 0.5 else "no detectable difference"


def analyse_dimension(groups: dict[str, dict[str, list[dict[str, Any]]]], dim_name: str, n_boot: int,
                      comparisons: list[tuple[str, str]] | None = None) -> tuple[dict[str, Any], list[float]]:
    """One dimension of a setting: every comparison's win rate (with guards, and without), the A/A controls,
    the metric's means; and the comparisons' CI half-widths."""
    dim = DIMENSIONS[dim_name]
    comparisons = comparisons_for(list(groups)) if comparisons is None else comparisons
    comps: dict[str, Any] = {}
    half_widths: list[float] = []
    for a, b in comparisons:
        if a not in groups or b not in groups:
            continue
        shared = sorted(set(groups[a]) & set(groups[b]))
        wr = win_rate([outcome_matrix(_scored(groups[a][p], dim_name), _scored(groups[b][p], dim_name), dim)
                       for p in shared], n_boot=n_boot)
        entry = wr.to_dict()
        entry["prompts"] = len(shared)
        entry["verdict"] = _verdict(wr.ci_low, wr.ci_high)
        raw = win_rate([outcome_matrix(_scored(groups[a][p], dim_name, False), _scored(groups[b][p], dim_name, False),
                                       dim) for p in shared], n_boot=n_boot)
        entry["no_guards"] = {"win_rate": round(raw.win_rate, 4), "ci95": [round(raw.ci_low, 4), round(raw.ci_high, 4)],
                              "tie": round(raw.ties, 4), "verdict": _verdict(raw.ci_low, raw.ci_high)}
        comps[f"{a} vs {b}"] = entry
        half_widths.append(wr.half_width)
    # A/A: seed 0 against seed 1 of the same condition. The primary control pools every condition of the
    # setting (one check per setting and dimension, so chance failures do not multiply); the per-condition
    # figures are for reading.
    aa: dict[str, Any] = {}
    pooled: list[Any] = []
    for cond, per_prompt in groups.items():
        mats = [aa_matrix(_scored(rs, dim_name), dim) for rs in per_prompt.values() if len(rs) >= 2]
        if mats:
            wr = win_rate(mats, n_boot=n_boot)
            aa[cond] = {**wr.to_dict(), "contains_50": wr.contains_half}
            pooled.extend(mats)
    if pooled:
        wr = win_rate(pooled, n_boot=n_boot)
        aa["pooled"] = {**wr.to_dict(), "contains_50": wr.contains_half}
    direct_none = comps.get("direct vs none")
    means = {cond: round(_mean([r["metrics"][dim_name] for rs in pp.values() for r in rs]), 4)
             for cond, pp in groups.items()}
    return {
        "metric": dim.metric, "better": "higher" if dim.higher_is_better else "lower", "margin": dim.margin,
        # None when the run has no "none" condition to tell (a run restricted with --only)
        "measurable_on_this_model": None if direct_none is None else bool(direct_none["ci95"][0] > 0.5),
        "comparisons": comps, "aa_control": aa, "metric_mean": means,
    }, half_widths


def joint_wins(groups: dict[str, dict[str, list[dict[str, Any]]]], dims: list[str], a: str, b: str, n_boot: int
               ) -> dict[str, Any]:
    """The share of (prompt, seed of A, seed of B) comparisons that A wins on every one of ``dims`` at once
    (and that B wins on every one), with the guards and without, with 95% bootstrap CIs over prompts."""
    shared = sorted(set(groups[a]) & set(groups[b]))
    out: dict[str, Any] = {"prompts": len(shared)}
    for guards in (True, False):
        wins, losses = [], []
        for p in shared:
            mats = [outcome_matrix(_scored(groups[a][p], d, guards), _scored(groups[b][p], d, guards), DIMENSIONS[d])
                    for d in dims]
            wins.append(np.prod([m == 1.0 for m in mats], axis=0).astype(float))
            losses.append(np.prod([m == 0.0 for m in mats], axis=0).astype(float))
        key = "" if guards else "no_guards_"
        for name, mats in (("wins_all", wins), ("loses_all", losses)):
            wr = win_rate(mats, n_boot=n_boot)
            out[key + name] = {"share": round(wr.win_rate, 4), "ci95": [round(wr.ci_low, 4), round(wr.ci_high, 4)]}
    return out


def fluency(groups: dict[str, dict[str, list[dict[str, Any]]]], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Per condition: the answers' per-token perplexity under the plain model (geometric mean, median, share over
    2x the direct prompt's median), and its ratio to the direct prompt's on the same prompts with a 95% CI
    (paired bootstrap over prompts of the per-prompt mean log-perplexity difference)."""
    def nll_by_prompt(cond: str) -> dict[str, float]:
        out = {}
        for p, rs in groups[cond].items():
            vals = [r["plain_nll"] for r in rs if r.get("plain_nll") is not None]
            if vals:
                out[p] = float(np.mean(vals))
        return out

    out: dict[str, Any] = {}
    direct = nll_by_prompt("direct") if "direct" in groups else {}
    direct_vals = [r["plain_nll"] for rs in groups.get("direct", {}).values() for r in rs
                   if r.get("plain_nll") is not None]
    direct_median = float(np.median(direct_vals)) if direct_vals else None
    rng = np.random.default_rng(seed)
    for cond in sorted(groups, key=condition_order):
        vals = [r["plain_nll"] for rs in groups[cond].values() for r in rs if r.get("plain_nll") is not None]
        if not vals:
            continue
        entry: dict[str, Any] = {"answers": len(vals), "ppl_geomean": round(math.exp(float(np.mean(vals))), 3),
                                 "ppl_median": round(math.exp(float(np.median(vals))), 3)}
        if direct_median is not None:
            entry["share_over_2x_direct_median"] = round(float(np.mean(
                [v > direct_median + math.log(2) for v in vals])), 4)
        mine = nll_by_prompt(cond)
        shared = sorted(set(mine) & set(direct))
        if direct and cond != "direct" and shared:
            diffs = np.array([mine[p] - direct[p] for p in shared])
            boots = diffs[rng.integers(0, len(diffs), (n_boot, len(diffs)))].mean(axis=1)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            entry["ratio_vs_direct"] = round(math.exp(float(diffs.mean())), 3)
            entry["ratio_vs_direct_ci95"] = [round(math.exp(float(lo)), 3), round(math.exp(float(hi)), 3)]
            entry["prompts"] = len(shared)
        out[cond] = entry
    return out


def setting_criteria(groups: dict[str, dict[str, list[dict[str, Any]]]], res: dict[str, Any]) -> dict[str, Any]:
    """Each condition against the issue's bar (CRITERIA), on this setting: win rate vs direct >= 60% with the
    CI's lower bound above 50% on every measurable dimension (and, separately, on every dimension), guard
    failures <= 1.5x the direct prompt's on the same prompts, plain-model perplexity <= 1.5x the direct prompt's."""
    out: dict[str, Any] = {}
    if "direct" not in groups:
        return out
    for cond in sorted(groups, key=condition_order):
        if cond in ("none", "direct"):
            continue
        dims: dict[str, Any] = {}
        for dim_name, d in res["dimensions"].items():
            c = d["comparisons"].get(f"{cond} vs direct")
            if c:
                dims[dim_name] = {"win_rate": c["win_rate"], "ci_low": c["ci95"][0],
                                  "measurable": d["measurable_on_this_model"],
                                  "met": c["win_rate"] >= CRITERIA["win_rate"] and c["ci95"][0] > 0.5}
        prompts = set(groups[cond])
        fails = _guard_rate(groups[cond], prompts)
        direct_fails = _guard_rate(groups["direct"], prompts)
        ppl = res["fluency"].get(cond, {}).get("ratio_vs_direct")
        guard_ok = fails <= CRITERIA["guard_ratio"] * direct_fails + 1e-12
        ppl_ok = ppl is not None and ppl <= CRITERIA["perplexity_ratio"]
        measurable = [v["met"] for v in dims.values() if v["measurable"] is not False]
        out[cond] = {
            "dimensions": dims, "guard_failure_rate": round(fails, 4),
            "direct_guard_failure_rate": round(direct_fails, 4), "guards_met": guard_ok,
            "perplexity_ratio_vs_direct": ppl, "perplexity_met": ppl_ok,
            "wins_measurable_met": bool(measurable) and all(measurable),
            "wins_all_dimensions_met": bool(dims) and all(v["met"] for v in dims.values()),
        }
        out[cond]["met"] = out[cond]["wins_measurable_met"] and guard_ok and ppl_ok
    return out


def _guard_rate(per_prompt: dict[str, list[dict[str, Any]]], prompts: set[str]) -> float:
    rs = [r for p, rr in per_prompt.items() if p in prompts for r in rr]
    return sum(bool(r["guards"]) for r in rs) / len(rs) if rs else float("nan")


def overall_criteria(results: dict[str, Any]) -> dict[str, Any]:
    """The conditions that meet the bar in every setting (and per setting)."""
    per_setting = {s: [c for c, v in res["criteria"].items() if v["met"]] for s, res in results.items()}
    conds = set.intersection(*(set(res["criteria"]) for res in results.values())) if results else set()
    every = sorted((c for c in conds if all(results[s]["criteria"][c]["met"] for s in results)), key=condition_order)
    return {"bar": CRITERIA, "met_in_every_setting": every, "met_per_setting": per_setting}


def guards_and_lengths(groups: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per condition: the share of responses failing each guard (and any), mean tokens, mean acceptance."""
    guards: dict[str, Any] = {}
    for cond in sorted(groups, key=condition_order):
        rs = [r for rr in groups[cond].values() for r in rr]
        guards[cond] = {g: round(sum(g in r["guards"] for r in rs) / len(rs), 4) for g in ("empty", "echo", "repetitive")}
        guards[cond]["any"] = round(sum(bool(r["guards"]) for r in rs) / len(rs), 4)
        guards[cond]["responses"] = len(rs)
        guards[cond]["mean_tokens"] = round(_mean([r["tokens"] for r in rs]), 1)
        accept = [r["acceptance_rate"] for r in rs if "acceptance_rate" in r]
        if accept:
            guards[cond]["mean_acceptance_rate"] = round(_mean(accept), 4)
    return guards


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return sum(xs) / len(xs) if xs else float("nan")


# -- the run -------------------------------------------------------------------------------------------------


def load_prompts(shared: Path) -> list[dict[str, str]]:
    with open(shared / "bench" / "prompts.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_texts(shared: Path) -> dict[str, str]:
    path = shared / "reference" / "preferences.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the preference texts (Personalized Soups wordings) live there.")
    psoups = json.loads(path.read_text(encoding="utf-8"))["psoups"]
    return {name: psoups[dim.psoups] for name, dim in DIMENSIONS.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="all prompts, every setting, the paper's setting in each")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 prompts, 32 new tokens, one setting")
    parser.add_argument("--prompts", type=int, default=None,
                        help="use (at most) the first N prompts (default 20; --full: all 100)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new prompt once the run would exceed this many minutes (default 6; "
                             "--full and --quick: no limit; 0: no limit)")
    parser.add_argument("--skip-prompts", type=int, default=0, metavar="N",
                        help="leave out the first N prompts (e.g. 60: the ones earlier runs decoded) and take "
                             "--prompts from the rest (default 0)")
    parser.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers",
                        help="what decodes (default transformers; llamacpp: the GGUF as it is, with --threads "
                             "llama.cpp threads); the perplexity is always read by a transformers forward")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt and condition (default 2)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None,
                        help=f"default: {' '.join(DEFAULT_SETTINGS)}")
    parser.add_argument("--paper-settings", nargs="*", choices=sorted(SETTINGS), default=None,
                        help="settings that also run the paper's condition (default: the first setting; --full: all)")
    parser.add_argument("--gammas", type=float, nargs="*", default=None, metavar="γ",
                        help="guidance strengths run on every prompt, each for Persona-judge, the product and the "
                             "direct prompt (default 2; none with the flag alone)")
    parser.add_argument("--sweep-gammas", type=float, nargs="*", default=[], metavar="γ",
                        help="more guidance strengths, run on the first --sweep-prompts prompts only "
                             "(the dose-response)")
    parser.add_argument("--sweep-prompts", type=int, default=0,
                        help="how many prompts the --sweep-gammas run on (default 0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (shared/bench/README.md: >= 128)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--repetition-penalty", type=float, default=None, metavar="P",
                        help="transformers' repetition penalty on every condition (default none; the chat model's "
                             "demo and app use 1.2)")
    parser.add_argument("--only", nargs="+", default=None, metavar="CONDITION",
                        help="decode only these planned conditions (e.g. to extend the ones that matter to more "
                             "prompts with --resume); each comparison is scored on the prompts both sides have")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the decoding processes (default cpu; 'cuda' runs every worker on the GPU)")
    parser.add_argument("--model", default=None, help="model id/path/.gguf (default: the embedded SmolLM2)")
    parser.add_argument("--shared", default=None, help="the project's shared/ folder (default ../shared)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--rescore", type=Path, default=None, help="recompute everything from a saved results JSON")
    parser.add_argument("--resume", type=Path, default=None,
                        help="keep the responses of a saved results JSON of the same plan and decode only the "
                             "missing ones (e.g. more --prompts after a run the time budget stopped)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/quality.json")
    args = parser.parse_args(argv)
    if args.max_minutes is None and not (args.full or args.quick):
        args.max_minutes = DEFAULT_MAX_MINUTES
    args.max_minutes = args.max_minutes or None  # 0: no limit
    if args.quick:
        args.prompts = args.prompts or 2
        args.max_new_tokens = args.max_new_tokens or 32
        args.settings = args.settings or ["simple+friendly"]
    elif not args.full:
        args.prompts = args.prompts or DEFAULT_PROMPTS
    if args.full:
        args.settings = args.settings or sorted(SETTINGS, key=list(SETTINGS).index)
        if args.paper_settings is None:
            args.paper_settings = list(args.settings)
    args.settings = args.settings or list(DEFAULT_SETTINGS)
    if args.paper_settings is None:
        args.paper_settings = args.settings[:1]
    args.max_new_tokens = args.max_new_tokens or 128
    if args.gammas is None:
        args.gammas = list(DEFAULT_GAMMAS)
    if args.out is None:
        args.out = RESULTS / ("quality_quick.json" if args.quick else "quality.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.rescore:
        saved = json.loads(args.rescore.read_text(encoding="utf-8"))
        records, config = saved["records"], saved["config"]
        out = args.out if "--out" in (argv if argv is not None else sys.argv) else args.rescore
    else:
        records, config = generate_records(args, started)
        out = args.out
        # The raw records first, so that a failure in the scoring loses no decoding (--rescore recovers them).
        write_results(out, {"benchmark": "quality", "config": config, "records": records}, module="benchmarks.quality",
                      argv=argv, backend=config.get("backend", "transformers"), device=args.device,
                      threads=args.threads, indent=None)
    score_records(records)
    analysis = analyse(records, config["settings"], n_boot=args.bootstrap)
    report = {"benchmark": "quality", "config": config, "notes": report_notes(config, analysis), "results": analysis,
              "records": records}
    write_results(out, report, module="benchmarks.quality", argv=argv, backend=config.get("backend", "transformers"),
                  device=args.device, threads=args.threads)
    print_report(report)
    print(f"\nwritten to {out} ({time.perf_counter() - started:.0f} s)")
    return report


def generate_records(args: argparse.Namespace, started: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode every planned response (within the time budget): (records, the run's config)."""
    shared = shared_dir(args.shared)
    all_prompts = load_prompts(shared)
    remaining = all_prompts[args.skip_prompts:]
    prompts = remaining[: args.prompts] if args.prompts else remaining
    texts = load_texts(shared)
    settings = args.settings
    jobs = plan_jobs(prompts, settings, args.paper_settings, args.seeds, args.max_new_tokens, texts, args.gammas,
                     args.sweep_gammas, args.sweep_prompts)
    if args.only:
        unknown = sorted(set(args.only) - {j["condition"] for j in jobs})
        if unknown:
            raise SystemExit(f"--only {' '.join(unknown)}: not a planned condition; planned: "
                             f"{', '.join(dict.fromkeys(j['condition'] for j in jobs))}")
        jobs = [j for j in jobs if j["condition"] in args.only]
    if args.repetition_penalty:
        jobs = [{**j, "repetition_penalty": args.repetition_penalty} for j in jobs]
    budget = f", starting no new prompt after ~{args.max_minutes:g} min" if args.max_minutes else ""
    print(f"quality: up to {len(prompts)} of {len(all_prompts)} prompts{budget}; {args.seeds} seeds, settings {settings} "
          f"(paper's condition in {args.paper_settings}), {args.max_new_tokens} new tokens: {len(jobs)} responses "
          f"on {args.workers} process(es)", file=sys.stderr, flush=True)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    key = lambda r: (r["prompt_id"], r["seed"], r["setting"], r["condition"])  # noqa: E731
    kept: list[dict[str, Any]] = []
    previous_s = 0.0
    previous_machines: list[dict[str, Any]] = []
    if args.resume:
        saved = json.loads(args.resume.read_text(encoding="utf-8"))
        if saved["config"].get("repetition_penalty") != args.repetition_penalty:
            raise SystemExit(f"--resume {args.resume}: decoded with repetition_penalty="
                             f"{saved['config'].get('repetition_penalty')}, not {args.repetition_penalty}")
        kept = [{k: v for k, v in r.items() if k not in ("metrics", "guards")} for r in saved["records"]]
        previous_s = saved["config"].get("generation_s_total", saved["config"].get("generation_s", 0.0))
        previous_machines = saved["config"].get("machines") or [saved["config"]["machine"]]
        done = {key(r) for r in kept}
        print(f"quality: resuming {args.resume}: {len(done)} responses kept", file=sys.stderr, flush=True)
        jobs_left = [j for j in jobs if key(j) not in done]
    else:
        jobs_left = jobs
    new, stopped = generate_all(jobs_left, args.model, args.workers, args.threads, args.device, max_seconds,
                                backend=args.backend) if jobs_left \
        else ([], False)
    order = {key(j): i for i, j in enumerate(jobs)}
    records = sorted(kept + new, key=lambda r: order.get(key(r), len(order)))
    run_ids = list(dict.fromkeys(r["prompt_id"] for r in records if not r.get("group", "").endswith("/sweep")))
    config = {
        "prompts": len(run_ids), "prompts_available": len(all_prompts), "prompts_planned": len(prompts),
        "stopped_by_time_budget": stopped, "max_minutes": args.max_minutes,
        "subset": len(run_ids) < len(all_prompts), "prompt_ids": run_ids,
        "seeds": args.seeds, "settings": settings, "paper_settings": args.paper_settings,
        "max_new_tokens": args.max_new_tokens, "lookahead": LOOKAHEAD,
        "backend": args.backend, "skip_prompts": args.skip_prompts,
        "gammas": args.gammas, "sweep_gammas": args.sweep_gammas,
        "sweep_prompts": len({r["prompt_id"] for r in records if r.get("group", "").endswith("/sweep")}),
        "sweep_prompts_planned": min(args.sweep_prompts or len(prompts), len(prompts)) if args.sweep_gammas else 0,
        "conditions": sorted({r["condition"] for r in records}, key=condition_order),
        "reference_prompt": ("guidance's reference and the perplexity's plain model read the conversation with no "
                             "preference as the chat model builds it: persona_messages(conversation, []), i.e. "
                             "the chat template's default system prompt"),
        "repetition_penalty": args.repetition_penalty,
        "sampling": {"main": MAIN_SAMPLING, "paper": PAPER_SAMPLING},
        "preference_texts": {d: texts[d] for s in settings for d in SETTINGS[s]},
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "machine": machine_info(args.device, args.threads), "workers": args.workers,
        # Every machine that decoded some of these records (a resumed run may add a CPU run to a GPU one).
        "machines": [*previous_machines, machine_info(args.device, args.threads)] if jobs_left else previous_machines,
        "generation_s": round(time.perf_counter() - started, 1),
        "generation_s_total": round(previous_s + time.perf_counter() - started, 1),
        "resumed_from": str(args.resume) if args.resume else None,
        "paper_layout_note": ("the paper's code chat-templates the preference as its own user turn ahead of the "
                              "question's; here the package's user_turn layout (a user turn before the question)"),
    }
    return records, config


def report_notes(config: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """What a reader must know to read the figures: a subset, the CIs' width, few prompts, a failed A/A."""
    notes = []
    if config.get("subset"):
        why = (f"the first prompts that fit in the {config['max_minutes']:g}-minute budget"
               if config.get("stopped_by_time_budget") else "the first prompts")
        notes.append(f"Subset: {config['prompts']} of {config['prompts_available']} prompts x {config['seeds']} seeds "
                     f"({why}, to keep make bench bounded); run with --full for all prompts.")
    half = analysis["median_ci_half_width"]
    if half is not None:
        notes.append(f"The 95% CIs here are about ±{half * 100:.0f} points (median half-width): a win rate closer to "
                     f"50% than that is not a detectable difference (about ±{DETECTABLE_AT_FULL * 100:.0f} points with "
                     "100 prompts x 2 seeds).")
    if config.get("prompts", 100) < 10:
        notes.append("Under 10 prompts the bootstrap CIs are rough (percentile intervals on few clusters) and can "
                     "be degenerate (e.g. [100%, 100%]).")
    if config.get("sweep_gammas") and config.get("sweep_prompts", 0) < config.get("prompts", 0):
        sweep = ", ".join(f"{g:g}" for g in config["sweep_gammas"])
        notes.append(f"γ ∈ {{{sweep}}} ran on the first {config['sweep_prompts']} prompts only: their "
                     "win rates compare with the direct prompt on those prompts, and their CIs are wider.")
    if analysis["aa_control_ok"] is False:
        notes.append("A pooled A/A control's CI does not contain 50%: the setup is suspect, or chance (about 1 in 20 "
                     "checks fails by chance; see aa_control).")
    return notes


def print_report(report: dict[str, Any]) -> None:
    config, analysis = report["config"], report["results"]
    print(f"\nmodel: {config['model']}; {config['prompts']} prompts x {config['seeds']} seeds, "
          f"{config['max_new_tokens']} new tokens, λ={config['lookahead']}")
    for note in report["notes"]:
        print(f"NOTE: {note}")
    for setting, res in analysis["settings"].items():
        print(f"\n[{setting}]")
        print(f"  {'dimension':12} {'comparison':32} {'win rate':>9} {'95% CI':>15} {'tie':>6}  {'no guards':>9}  "
              "verdict")
        for dim_name, d in res["dimensions"].items():
            tag = "  (not measurable on this model: direct does not beat none)" if d["measurable_on_this_model"] is False else ""
            print(f"  {dim_name:12} ({d['metric']}, {d['better']} is better, margin {d['margin']}){tag}")
            for name, c in d["comparisons"].items():
                lo, hi = c["ci95"]
                raw = c.get("no_guards", {}).get("win_rate", float("nan"))
                print(f"  {'':12} {name:32} {c['win_rate']:9.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} {c['tie']:6.1%}  "
                      f"{raw:9.1%}  {c['verdict']}")
            for cond, c in d["aa_control"].items():
                if cond != "pooled":
                    continue
                lo, hi = c["ci95"]
                print(f"  {'':12} {'A/A ' + cond:32} {c['win_rate']:9.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} "
                      f"{c['tie']:6.1%}  {'':9}  {'ok' if c['contains_50'] else 'CI excludes 50%!'}")
        if res.get("both"):
            print("  wins on every preference at once (with guards / without):")
            for name, j in res["both"].items():
                w, raw = j["wins_all"], j["no_guards_wins_all"]
                print(f"    {name:32} {w['share']:6.1%} [{w['ci95'][0]:.0%}, {w['ci95'][1]:.0%}]  /  "
                      f"{raw['share']:6.1%}   (direct wins both: {j['loses_all']['share']:.1%})")
        print("  guards failed / mean tokens / acceptance / plain-model perplexity (geomean, ratio to direct):")
        for cond, g in res["guards_and_lengths"].items():
            acc = f", acceptance {g['mean_acceptance_rate']:.0%}" if "mean_acceptance_rate" in g else ""
            f = res.get("fluency", {}).get(cond)
            ppl = ""
            if f:
                ppl = f", ppl {f['ppl_geomean']:.2f}"
                if "ratio_vs_direct" in f:
                    lo, hi = f["ratio_vs_direct_ci95"]
                    ppl += f" ({f['ratio_vs_direct']:.2f}x [{lo:.2f}, {hi:.2f}])"
            print(f"    {cond:20} {g['any']:5.0%} (empty {g['empty']:.0%}, echo {g['echo']:.0%}, repetitive "
                  f"{g['repetitive']:.0%}), {g['mean_tokens']:.0f} tokens{acc}{ppl}")
    crit = analysis.get("criteria")
    if crit:
        print(f"\nthe bar (win rate >= {crit['bar']['win_rate']:.0%} with CI low > 50% vs direct on every measurable "
              f"dimension, guard failures <= {crit['bar']['guard_ratio']}x direct's, perplexity <= "
              f"{crit['bar']['perplexity_ratio']}x direct's): met in every setting by "
              f"{crit['met_in_every_setting'] or 'none'}")
    print(f"\nA/A controls (pooled per setting and dimension) all contain 50%: {analysis['aa_control_ok']}")


if __name__ == "__main__":
    main()
