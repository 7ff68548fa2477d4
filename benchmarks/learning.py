"""Learning a user's preferences from a few choices: simulated users, PReF's active questions against random ones,
and every way of decoding with the learned profile against the plain answer and against the direct prompt.

    nice -n 10 .venv/bin/python -m benchmarks.learning              # the default run (hours on 2 cores)
    .venv/bin/python -m benchmarks.learning --quick                 # a smoke test (2 prompts per split)
    .venv/bin/python -m benchmarks.learning --reanalyse             # the figures again from the cached texts
    .venv/bin/python -m benchmarks.learning --guidance 1.5 --out benchmarks/results/learning_guidance.json

Run it from the repository root, as a module. Results: benchmarks/results/learning.json; the candidate answers,
their features and the decoded answers are cached in benchmarks/results/learning_candidates.json (a rerun with the
same settings reuses them; --fresh starts over).

0. **Repetitions**: each of --repetitions draws its own disjoint learning, held-out and evaluation prompts from
   ../shared/bench/prompts.jsonl (seeded; ≥ 30 held-out and 30 evaluation prompts by default), so no figure rests
   on one small prompt sample; CIs resample the prompts of every repetition (clustered by prompt).
1. **Candidates** (generated once per prompt, cached by prompt id): one plain answer and answers decoded under
   basis poles (a contrasting pair of one dimension, cycling through the dimensions, and one more pole), sampled
   (temperature 0.7, top-p 0.95, repetition penalty 1.2) up to --max-tokens (200: nearly all end by themselves,
   so length differs between them as it does in real answers).
2. **Features**: φ of every candidate over the built-in basis (20 personas) and the length feature (``--no-length``
   leaves it out), one batched pass per answer (``PersonaScorer``); the time and token positions it took give the
   scoring cost.
3. **Simulated users**: a hidden preference on one or two of the shared benchmark's measurable dimensions
   (simple = Flesch reading ease, concise = word count, friendly = informality rate; metrics, margins and guards
   from benchmarks/metrics.py). A user compares two answers on each of their dimensions (``metrics.compare``: a
   margin, guards) and prefers the one that wins on average ("no preference" on a draw), then flips a strict
   choice with probability --noise (10%). Each user answers --questions questions asked by a
   ``PreferenceLearner`` over the learning prompts' candidates, once with PReF's rule (active) and once with
   random questions, from the same seed.
4. **Figures** after 5, 10 and 20 choices: how often the strongest weight leans to the user's pole (top-1; for
   two-dimension users also both of the two strongest dimensions); held-out pairwise accuracy and ROC AUC (the
   held-out prompts' candidate pairs on which the noise-free user has a strict preference, scored by
   ``w · (φ(a) − φ(b))``). 95% bootstrap CIs: every user is scored on the same held-out prompts, so the
   held-out figures resample users and prompts (two-way; ``benchmarks/learning_stats.py``); the top-pole shares
   resample users (they are conditional on the learning prompts).
   And PReF's own use of the reward, best-of-N: of each held-out prompt's candidates (the plain answer and three
   persona-decoded ones) the one ``w · φ`` ranks first, against the plain answer on the user's dimensions.
5. **Decoding with the profile**: for each repetition and user type, the first user's 10-choice active profile,
   refitted with the L2 strength chosen by leave-one-out on that user's own ten choices (never on the benchmark's
   prompts), decodes each evaluation prompt of its repetition with every ``profile_decoding`` rule (``product``:
   the weighted product; ``best_of_n``: PReF's best-of-N ranked by the profile's reward), the same sampling. Each
   is compared on the user's own dimensions (win = the mean per-dimension outcome) against the plain answer and
   against the direct prompt (the user's preference written into the prompt, ``composition="all"``), and the
   direct prompt against the plain answer: win rates with draws as half, the strict win, draw and loss shares, and
   a 95% bootstrap CI over the evaluation prompts of every repetition (every user type's outcome on a drawn prompt
   counts). ``--guidance γ`` decodes with guidance on top of the profile (cached apart; use ``--out`` for its
   figures).
6. **Cost per choice**: scoring two ~100-token answers to a new question over the 20-persona basis, timed on
   this CPU with one torch thread and with every core: on a fresh scorer (cold: it also reads each persona's
   system turn) and on one that has scored a question before (warm: every later question of a learning
   session). ``--cost-only`` measures just this and updates it in the results file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import LEARNING_SAMPLING, RESULTS, machine_info, shared_dir, write_results
from benchmarks.learning_stats import (UserScores, clustered_win_rate, matrix_mean, mean_over_users,
                                       paired_difference, roc_auc)
from benchmarks.metrics import DIMENSIONS, compare, guard_failures
from langchain_persona_judge.profiles import ModelIdentity

USER_TYPES: list[tuple[str, ...]] = [
    ("simple",), ("concise",), ("friendly",), ("simple", "concise"), ("simple", "friendly"), ("concise", "friendly"),
]
POLES: dict[str, set[str]] = {"simple": {"elementary"}, "concise": {"concise"}, "friendly": {"friendly"}}
"""The basis pole each metric dimension stands for (strict)."""
LENIENT_POLES: dict[str, set[str]] = {
    "simple": {"elementary"}, "concise": {"concise"}, "friendly": {"friendly", "casual", "humor", "enthusiastic"},
}
"""Poles whose texts also ask for what the metric counts (informality: casual, humorous, enthusiastic)."""
CHECKPOINTS = (5, 10, 20)
DECODING_RULES = ("product", "best_of_n")
"""The ``profile_decoding`` rules decoded side by side."""
BASELINES = ("plain", "direct")
"""What each rule is compared with: the plain answer, and the preference written into the prompt."""
DECODE_AFTER = 10
"""The profile that decodes is the one after this many choices (or after every choice of a shorter run)."""
SAMPLING = LEARNING_SAMPLING
CACHE = RESULTS / "learning_candidates.json"
L2_SWEEP = (0.03, 0.1, 0.3, 1.0)
"""Other L2 strengths the simulation is rerun with (the figures after 10 choices): how much the default matters."""
L2_NOTE = ("The fit's L2 strength is the package default (langchain_persona_judge.profiles.L2 = 0.1), which was "
           "chosen while looking at this benchmark's own prompt pool (its learning and held-out prompts), not by "
           "cross-validation on a user's own choices: the held-out figures at that value are optimistic. "
           "l2_sensitivity_after_10 gives them at the other values of L2_SWEEP, and "
           "learning.l2_by_cross_validation with each user's L2 chosen from L2_SWEEP by leave-one-out on that "
           "user's own choices (the questions asked stay those of the default L2). The profiles that decode (stage 5) "
           "use that cross-validated L2: no figure of decoding depends on an L2 tuned on the benchmark's prompts.")
STATISTICS_NOTE = ("CIs are 95% percentile bootstraps. held_out_accuracy, held_out_auc, best_of_n_vs_plain and "
                   "auc_active_minus_random resample users and the held-out prompts of every repetition (two-way: "
                   "every user of a repetition is scored on that repetition's held-out prompts); top-pole shares "
                   "resample users only (they depend on the learning prompts, conditioned on); decoding win rates "
                   "resample the evaluation prompts of every repetition (every user type decodes them). win/tie/loss are strict shares (outcome 1, 0.5, 0); partial: a "
                   "two-dimension user's split outcome (0.75 or 0.25); win_rate counts a draw as half.")


# -- inputs -----------------------------------------------------------------------------------------------


def load_prompts(shared: Path) -> list[dict[str, str]]:
    with open(shared / "bench" / "prompts.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_prompts(prompts: list[dict[str, str]], learn: int, held_out: int, evaluate: int,
                  seed: int) -> dict[str, list[dict[str, str]]]:
    """Disjoint prompt sets, drawn at random with ``seed``: learning pool, held-out pairs, decoding evaluation."""
    if learn + held_out + evaluate > len(prompts):
        raise SystemExit(f"{learn} + {held_out} + {evaluate} prompts asked for, but the pool has {len(prompts)}.")
    order = np.random.default_rng(seed).permutation(len(prompts))
    picked = [prompts[i] for i in order[: learn + held_out + evaluate]]
    return {"learn": picked[:learn], "held_out": picked[learn:learn + held_out],
            "evaluate": picked[learn + held_out:learn + held_out + evaluate]}


def repetition_splits(prompts: list[dict[str, str]], learn: int, held_out: int, evaluate: int, seed: int,
                      repetitions: int) -> list[dict[str, list[dict[str, str]]]]:
    """One :func:`split_prompts` per repetition, each drawn afresh (seed ``seed * 1000 + r``)."""
    return [split_prompts(prompts, learn, held_out, evaluate, seed * 1000 + r) for r in range(repetitions)]


def candidate_personas(index: int, pairs: list[tuple[str, str, str]], rng: np.random.Generator) -> list[str | None]:
    """Plain, then the two poles of dimension ``index`` (cycling), then one pole of another dimension."""
    _, first, second = pairs[index % len(pairs)]
    _, a, b = pairs[(index + len(pairs) // 2) % len(pairs)]
    return [None, first, second, a if rng.random() < 0.5 else b]


# -- stage 1 and 2: candidates and their features (cached) ----------------------------------------------------


def load_cache(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        cache = json.loads(path.read_text(encoding="utf-8"))
        if cache.get("config") == config:
            return cache
        print(f"[cache] {path} was made with other settings; starting over", flush=True)
    return {"config": config, "candidates": {}, "features": {}, "plain_eval": {}, "decoded": {}}


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def make_candidates(learner: Any, prompts: list[dict[str, str]], cache: dict[str, Any], path: Path,
                    seed: int, numbers: dict[str, int] | None = None) -> None:
    """Candidates of each prompt (``numbers``: each prompt's place in the whole pool, which picks its poles and
    seeds it, so a prompt has the same candidates whichever split it lands in; default: its place in
    ``prompts``)."""
    pairs = learner.basis.pairs()
    for position, prompt in enumerate(prompts):
        if prompt["id"] in cache["candidates"]:
            continue
        index = position if numbers is None else numbers[prompt["id"]]
        rng = np.random.default_rng([seed, index])
        personas = candidate_personas(index, pairs, rng)
        started = time.perf_counter()
        answers = learner.generate(prompt["prompt"], personas)
        seconds = time.perf_counter() - started
        cache["candidates"][prompt["id"]] = [{"persona": p, "text": t, "complete": c}
                                             for p, (t, c) in zip(personas, answers)]
        print(f"[candidates] {prompt['id']} {len(answers)} answers in {seconds:.1f} s", flush=True)
        save_cache(path, cache)


def score_candidates(scorer: Any, prompts: list[dict[str, str]], cache: dict[str, Any], path: Path,
                     max_tokens: int) -> None:
    key = scorer.basis.identity
    table = cache["features"].setdefault(key, {})
    for prompt in prompts:
        if "complete" in table.get(prompt["id"], {}):
            continue
        texts, complete = usable(cache["candidates"][prompt["id"]], scorer, max_tokens)
        forwards, positions = scorer.forwards, scorer.positions
        started = time.perf_counter()
        features = scorer.features(prompt["prompt"], texts, complete)
        seconds = time.perf_counter() - started
        tokens = [len(scorer.response_ids(t, c)) for t, c in zip(texts, complete)]
        table[prompt["id"]] = {"texts": texts, "complete": complete, "features": features.tolist(),
                               "seconds": seconds, "positions": scorer.positions - positions,
                               "forwards": scorer.forwards - forwards, "response_tokens": tokens}
        print(f"[features] {prompt['id']} {len(texts)} answers ({sum(tokens)} tokens) in {seconds:.1f} s", flush=True)
        save_cache(path, cache)


def usable(candidates: list[dict[str, Any]], scorer: Any, max_tokens: int) -> tuple[list[str], list[bool]]:
    """Distinct, non-empty texts (in order), and whether each ended by itself. Candidates cached before the
    finish reason was recorded: complete when they are shorter than the token limit."""
    seen: dict[str, bool] = {}
    for c in candidates:
        if c["text"].strip() and c["text"] not in seen:
            done = c.get("complete")
            seen[c["text"]] = done if done is not None else len(scorer.response_ids(c["text"], False)) < max_tokens - 1
    return list(seen), list(seen.values())


# -- stage 3: simulated users ----------------------------------------------------------------------------------


def metric_table(texts: list[str], question: str) -> dict[str, list[tuple[float, bool]]]:
    fails = [bool(guard_failures(t, question)) for t in texts]
    return {dim: [(DIMENSIONS[dim].score(t), f) for t, f in zip(texts, fails)] for dim in POLES}


def outcome(scores: dict[str, list[tuple[float, bool]]], dims: tuple[str, ...], i: int, j: int) -> float:
    """The noise-free user's outcome of answer i against answer j: the mean of the per-dimension outcomes
    (1 win, 0.5 draw, 0 loss) rounded to a strict choice unless exactly a draw."""
    mean = float(np.mean([outcome_on(scores[d][i], scores[d][j], d) for d in dims]))
    return 1.0 if mean > 0.5 else 0.0 if mean < 0.5 else 0.5


def outcome_on(a: tuple[float, bool], b: tuple[float, bool], dim: str) -> float:
    """A's outcome against B on one dimension: 1, 0.5 or 0 (the margin; a guard failure loses)."""
    return compare(a[0], b[0], a[1], b[1], DIMENSIONS[dim])


class SimulatedUser:
    def __init__(self, dims: tuple[str, ...], seed: int, noise: float,
                 metrics: dict[str, dict[str, dict[str, list[tuple[float, bool]]]]]) -> None:
        self.dims = dims
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.metrics = metrics  # prompt -> text -> ... (see choose)

    def choose(self, prompt: str, first: str, second: str) -> str:
        table = self.metrics[prompt]
        texts = table["texts"]
        value = outcome(table["scores"], self.dims, texts.index(first), texts.index(second))
        if value != 0.5 and self.rng.random() < self.noise:
            value = 1.0 - value
        return {1.0: "1", 0.0: "2", 0.5: "="}[value]


def held_out_pairs(features: dict[str, Any], metrics: dict[str, Any], prompts: list[dict[str, str]],
                   dims: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Feature differences and noise-free outcomes of every held-out pair with a strict preference."""
    rows, labels, _ = held_out_pairs_by_prompt(features, metrics, prompts, dims)
    return rows, labels


def held_out_pairs_by_prompt(features: dict[str, Any], metrics: dict[str, Any], prompts: list[dict[str, str]],
                             dims: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`held_out_pairs`, and the index (in ``prompts``) of the prompt each pair answers."""
    rows, labels, tags = [], [], []
    for number, prompt in enumerate(prompts):
        entry = features[prompt["id"]]
        phi = np.asarray(entry["features"])
        scores = metrics[prompt["prompt"]]["scores"]
        for i in range(len(phi)):
            for j in range(i + 1, len(phi)):
                value = outcome(scores, dims, i, j)
                if value != 0.5:
                    rows.append(phi[i] - phi[j])
                    labels.append(value)
                    tags.append(number)
    return np.asarray(rows), np.asarray(labels), np.asarray(tags, dtype=int)


def best_of_n_sets(cache: dict[str, Any], table: dict[str, Any], metrics: dict[str, Any],
                   prompts: list[dict[str, str]]) -> list[tuple[np.ndarray, Any, int]]:
    """Per held-out prompt: its candidates' features, their metric scores, and which one is the plain answer."""
    out = []
    for prompt in prompts:
        entry = table[prompt["id"]]
        plain = [c["text"] for c in cache["candidates"][prompt["id"]] if c["persona"] is None]
        if plain and plain[0] in entry["texts"]:
            out.append((np.asarray(entry["features"]), metrics[prompt["prompt"]]["scores"],
                        entry["texts"].index(plain[0])))
    return out


def best_of_n(weights: np.ndarray, dims: tuple[str, ...], sets: list[tuple[np.ndarray, Any, int]]) -> float:
    """PReF's use of a learned reward: of each held-out prompt's candidates (the plain answer among them), take
    the one ``w · φ`` ranks first; its mean outcome against the plain answer on the user's dimensions (a pick of
    the plain answer itself is a draw)."""
    if not sets:
        return float("nan")
    return float(np.mean(best_of_n_outcomes(weights, dims, sets)))


def best_of_n_outcomes(weights: np.ndarray, dims: tuple[str, ...], sets: list[tuple[np.ndarray, Any, int]]
                       ) -> list[float]:
    """:func:`best_of_n`'s outcome on each prompt of ``sets`` (1 win, 0.5 draw, 0 loss)."""
    return [outcome(scores, dims, int(np.argmax(phi @ weights)), plain) for phi, scores, plain in sets]


def evaluate_profile(profile: Any, dims: tuple[str, ...], pairs: tuple[np.ndarray, np.ndarray],
                     full_fit_pole: str | None = None,
                     sets: list[tuple[np.ndarray, Any, int]] | None = None) -> dict[str, Any]:
    weights = profile.vector
    top = profile.top(2)
    leaning = [profile.pole_of(n, w) for n, w in top]
    dims_ranked = [d for d in profile.dimensions() if d["poles"][1] is not None]
    lean_dims = [d["poles"][0] if d["score"] > 0 else d["poles"][1] for d in dims_ranked[:2]]
    strict = set().union(*(POLES[d] for d in dims))
    lenient = set().union(*(LENIENT_POLES[d] for d in dims))
    differences, labels = pairs
    margins = differences @ weights if len(differences) else np.zeros(0)
    correct = np.where(margins == 0, 0.5, (margins > 0) == (labels == 1)).astype(float)
    both = np.concatenate([margins, -margins])
    both_labels = np.concatenate([labels, 1 - labels])
    return {
        "top_pole": bool(leaning and leaning[0] in strict),
        "top_pole_lenient": bool(leaning and leaning[0] in lenient),
        "top_pole_as_full_fit": bool(leaning and leaning[0] == full_fit_pole),
        "top_dimension": bool(lean_dims and lean_dims[0] in strict),
        "both_poles": bool(len(dims) == 2 and len(lean_dims) == 2 and all(
            any(p in POLES[d] for p in lean_dims) for d in dims)),
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "auc": roc_auc(both, both_labels),
        "best_of_n_vs_plain": best_of_n(weights, dims, sets or []),
        "best_of_n_by_prompt": best_of_n_outcomes(weights, dims, sets or []),
        "top": [(n, round(w, 4)) for n, w in profile.top(3)],
        "weights": [round(float(w), 6) for w in weights],
    }


def full_fit_pole(scorer: Any, table: dict[str, Any], metrics: dict[str, Any], splits: dict[str, Any],
                  dims: tuple[str, ...], l2: float) -> str | None:
    """The pole the strongest weight leans to when the profile is fitted to every strict noise-free choice of the
    learning and held-out prompts: what this basis on this model can say about the user, with ample data."""
    from langchain_persona_judge.profiles import PreferenceProfile, fit_bradley_terry

    differences, labels = held_out_pairs(table, metrics, splits["learn"] + splits["held_out"], dims)
    if not len(labels):
        return None
    fit = fit_bradley_terry(differences, labels, l2=l2)
    profile = PreferenceProfile(scorer.basis, fit.weights, ModelIdentity.of(scorer.handle))
    return profile.pole_of(*profile.top(1)[0]) if profile.top(1) else None


def ceiling(table: dict[str, Any], metrics: dict[str, Any], splits: dict[str, Any], l2: float) -> dict[str, Any]:
    """Held-out AUC of a profile fitted to every strict, noise-free choice of the learning prompts' candidates: how
    well this basis on this model can predict each user type with ample clean data (what ten choices approach)."""
    from langchain_persona_judge.profiles import fit_bradley_terry

    out = {}
    for dims in USER_TYPES:
        differences, labels = held_out_pairs(table, metrics, splits["learn"], dims)
        held, held_labels = held_out_pairs(table, metrics, splits["held_out"], dims)
        if not len(labels) or not len(held_labels):  # a tiny run (--quick) may have no strict pair
            out["+".join(dims)] = {"training_pairs": int(len(labels)), "held_out_pairs": int(len(held_labels)),
                                   "auc": float("nan")}
            continue
        margins = held @ fit_bradley_terry(differences, labels, l2=l2).weights
        out["+".join(dims)] = {"training_pairs": int(len(labels)), "held_out_pairs": int(len(held_labels)),
                               "auc": round(roc_auc(np.concatenate([margins, -margins]),
                                                    np.concatenate([held_labels, 1 - held_labels])), 4)}
    out["mean_auc"] = round(float(np.nanmean([v["auc"] for v in out.values()])), 4)
    return out


def simulate(scorer: Any, cache: dict[str, Any], splits: dict[str, list[dict[str, str]]] | list[dict[str, Any]],
             metrics: dict[str, Any], users_per_type: int, questions: int, noise: float, l2: float, seed: int,
             cross_validate: bool = False) -> list[dict[str, Any]]:
    """Every simulated user's run, per strategy: the figures at each checkpoint (and, with ``cross_validate``,
    the weights refitted with the L2 strength chosen by :func:`cross_validated_l2` on the user's own choices).
    ``splits``: one repetition's prompt sets, or a list of them (``users_per_type`` users of each type in each;
    each record names its ``repetition`` and where its held-out prompts start among all repetitions')."""
    if isinstance(splits, list):
        records, offset = [], 0
        for number, one in enumerate(splits):
            for record in simulate(scorer, cache, one, metrics, users_per_type, questions, noise, l2,
                                   seed * 1000 + number, cross_validate):
                records.append({**record, "repetition": number, "held_out_offset": offset})
            offset += len(one["held_out"])
        return records
    from langchain_persona_judge.profiles import PreferenceLearner

    table = cache["features"][scorer.basis.identity]
    sets = best_of_n_sets(cache, table, metrics, splits["held_out"])
    records = []
    for type_index, dims in enumerate(USER_TYPES):
        pairs = held_out_pairs(table, metrics, splits["held_out"], dims)
        full_pole = full_fit_pole(scorer, table, metrics, splits, dims, l2)
        for number in range(users_per_type):
            user_seed = seed * 1000 + type_index * 100 + number
            record: dict[str, Any] = {"dims": list(dims), "seed": user_seed, "held_out_pairs": int(len(pairs[1])),
                                      "full_fit_pole": full_pole}
            for strategy in ("active", "random"):
                learner = PreferenceLearner(scorer, prompts=[], strategy=strategy, l2=l2, seed=user_seed)
                for prompt in splits["learn"]:
                    entry = table[prompt["id"]]
                    learner.add_candidates(prompt["prompt"], entry["texts"], features=np.asarray(entry["features"]),
                                           complete=entry["complete"])
                user = SimulatedUser(dims, user_seed, noise, metrics)
                checkpoints = {}
                for asked in range(1, questions + 1):
                    question = learner.next_question()
                    learner.record(question, user.choose(question.prompt, *question.answers))
                    if asked in CHECKPOINTS:
                        checkpoints[asked] = evaluate_profile(learner.profile, dims, pairs, full_pole, sets)
                        if cross_validate:
                            best, weights, scores = cross_validated_l2(learner.differences, learner.outcomes)
                            checkpoints[asked]["cv"] = {"l2": best, "weights": [round(float(w), 6) for w in weights],
                                                        "loo_log_likelihood": {k: round(v, 4) for k, v in scores.items()}}
                    if strategy == "active" and asked == min(DECODE_AFTER, questions):
                        # The profile that decodes: refitted with the L2 chosen on the user's own choices alone.
                        best, weights, _ = cross_validated_l2(learner.differences, learner.outcomes)
                        record["decoding_profile"] = learner.profile.with_weights(weights, l2=best).to_dict()
                record[strategy] = checkpoints
            records.append(record)
    return records


def _ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Mean and 95% CI over users only: for figures that do not depend on the held-out prompts."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if not len(data):
        return [float("nan")] * 3
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (n_boot, len(data)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return [round(float(data.mean()), 4), round(float(low), 4), round(float(high), 4)]


def cross_validated_l2(differences: Any, outcomes: Any, grid: tuple[float, ...] = L2_SWEEP
                       ) -> tuple[float, np.ndarray, dict[str, float]]:
    """The fit's L2 strength chosen on the user's own choices alone: the value of ``grid`` whose fits
    (Bradley–Terry, as the learner's) predict each left-out choice best (mean leave-one-out log-likelihood; a
    "no preference" outcome 0.5 counts half each way; a tie goes to the larger L2), the weights fitted with it
    to every choice, and each candidate's score. No held-out or benchmark prompt is read."""
    from langchain_persona_judge.profiles import fit_bradley_terry

    d, y = np.asarray(differences, dtype=float), np.asarray(outcomes, dtype=float)
    scores: dict[str, float] = {}
    for l2 in grid:
        total = 0.0
        for k in range(len(y)):
            keep = np.arange(len(y)) != k
            z = float(d[k] @ fit_bradley_terry(d[keep], y[keep], l2=l2).weights)
            log_p, log_q = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)  # log σ(z), log σ(−z)
            total += y[k] * log_p + (1 - y[k]) * log_q
        scores[f"{l2:g}"] = total / max(1, len(y))
    best = max(grid, key=lambda l2: (scores[f"{l2:g}"], l2))
    return best, fit_bradley_terry(d, y, l2=best).weights, scores


PairsByType = dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Per user type (or per (repetition, user type)): the held-out pairs' feature differences, labels and prompt
indices (among the held-out prompts of every repetition)."""


def pairs_by_type(table: dict[str, Any], metrics: dict[str, Any], splits: list[dict[str, Any]]) -> PairsByType:
    """Every repetition's held-out pairs per user type, keyed ``(repetition, dims)``, their prompts numbered
    across repetitions (repetition r's first held-out prompt follows the previous ones')."""
    out: PairsByType = {}
    offset = 0
    for number, one in enumerate(splits):
        for dims in USER_TYPES:
            differences, labels, tags = held_out_pairs_by_prompt(table, metrics, one["held_out"], dims)
            out[(number, dims)] = (differences, labels, tags + offset)
        offset += len(one["held_out"])
    return out


def _pairs_of(pairs: PairsByType, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dims = tuple(record["dims"])
    return pairs[(record["repetition"], dims)] if "repetition" in record else pairs[dims]


def user_scores(record: dict[str, Any], strategy: str, asked: int, pairs: PairsByType, prompts: int,
                cv: bool = False) -> UserScores:
    """A user's profile after ``asked`` choices (``cv``: refitted with the L2 chosen on their own choices), scored
    on their type's held-out pairs (prompt-tagged)."""
    differences, labels, tags = _pairs_of(pairs, record)
    entry = record[strategy][asked]
    weights = np.asarray(entry["cv"]["weights"] if cv else entry["weights"])
    margins = differences @ weights if len(differences) else np.zeros(0)
    return UserScores(margins, labels, tags, prompts)


def clustered_figures(records: list[dict[str, Any]], strategy: str, asked: int, pairs: PairsByType,
                      prompts: int, n_boot: int) -> dict[str, list[float]]:
    """Held-out accuracy, AUC and best-of-N over ``records``, CIs two-way over users and held-out prompts."""
    users = [user_scores(r, strategy, asked, pairs, prompts) for r in records]
    best = np.full((len(records), prompts), np.nan)  # each user's row: the held-out prompts of its repetition
    for row, r in enumerate(records):
        outcomes = r[strategy][asked]["best_of_n_by_prompt"]
        start = r.get("held_out_offset", 0)
        best[row, start:start + len(outcomes)] = outcomes
    return {"held_out_accuracy": mean_over_users(users, "accuracy", n_boot),
            "held_out_auc": mean_over_users(users, "auc", n_boot),
            "best_of_n_vs_plain": matrix_mean(best, n_boot) if best.size else [float("nan")] * 3}


def summarise(records: list[dict[str, Any]], pairs: PairsByType, prompts: int, n_boot: int = 2000,
              detail: bool = True) -> dict[str, Any]:
    """The figures per strategy and checkpoint. Held-out accuracy, AUC and best-of-N: every user is scored on the
    same held-out prompts, so their CIs resample users and prompts (two-way); the top-pole shares depend on the
    learning prompts only and are CI'd over users (conditional on those 14 prompts). ``detail``: also per user
    type and the paired active − random differences."""
    out: dict[str, Any] = {}
    for strategy in ("active", "random"):
        per = {}
        for asked in CHECKPOINTS:
            rows = [r[strategy][asked] for r in records if asked in r[strategy]]
            if not rows:
                continue
            two = [row for row, r in zip(rows, records) if len(r["dims"]) == 2]
            per[str(asked)] = {
                "users": len(rows),
                "top_pole": _ci([float(x["top_pole"]) for x in rows]),
                "top_pole_lenient": _ci([float(x["top_pole_lenient"]) for x in rows]),
                "top_pole_as_full_fit": _ci([float(x["top_pole_as_full_fit"]) for x in rows]),
                "top_dimension": _ci([float(x["top_dimension"]) for x in rows]),
                "both_poles_two_dim_users": _ci([float(x["both_poles"]) for x in two]),
                **clustered_figures(records, strategy, asked, pairs, prompts, n_boot),
                "held_out_auc_ci_over_users_only": _ci([x["auc"] for x in rows]),
            }
        out[strategy] = per
    if not detail:
        return out
    by_type: dict[str, Any] = {}
    for dims in USER_TYPES:
        rows = [r for r in records if tuple(r["dims"]) == dims]
        by_type["+".join(dims)] = {
            strategy: {str(a): {"top_pole": _ci([float(r[strategy][a]["top_pole"]) for r in rows]),
                                "top_pole_as_full_fit": _ci([float(r[strategy][a]["top_pole_as_full_fit"])
                                                             for r in rows]),
                                **{k: v for k, v in clustered_figures(rows, strategy, a, pairs, prompts,
                                                                      max(200, n_boot // 4)).items()
                                   if k != "held_out_accuracy"}}
                       for a in CHECKPOINTS if rows and a in rows[0][strategy]}
            for strategy in ("active", "random")
        }
        by_type["+".join(dims)]["full_fit_pole"] = rows[0]["full_fit_pole"] if rows else None
    out["by_user_type"] = by_type
    paired = {}
    for asked in CHECKPOINTS:
        kept = [r for r in records if asked in r["active"]]
        active = [user_scores(r, "active", asked, pairs, prompts) for r in kept]
        random_ = [user_scores(r, "random", asked, pairs, prompts) for r in kept]
        tops = [float(r["active"][asked]["top_pole"]) - float(r["random"][asked]["top_pole"]) for r in kept]
        paired[str(asked)] = {"auc_active_minus_random": paired_difference(active, random_, "auc", n_boot),
                              "top_pole_active_minus_random": _ci(tops)}
    out["active_minus_random"] = paired
    if all("cv" in r["active"].get(a, {}) for r in records for a in CHECKPOINTS if a in r["active"]):
        out["l2_by_cross_validation"] = cv_figures(records, pairs, prompts, n_boot)
    return out


def cv_figures(records: list[dict[str, Any]], pairs: PairsByType, prompts: int, n_boot: int) -> dict[str, Any]:
    """Held-out AUC with each user's L2 chosen on their own choices (leave-one-out), per checkpoint: both
    strategies, their paired difference (two-way CIs), and how often each L2 was chosen."""
    out: dict[str, Any] = {"grid": list(L2_SWEEP)}
    for asked in CHECKPOINTS:
        kept = [r for r in records if asked in r["active"]]
        if not kept:
            continue
        users = {s: [user_scores(r, s, asked, pairs, prompts, cv=True) for r in kept] for s in ("active", "random")}
        chosen = [r[s][asked]["cv"]["l2"] for r in kept for s in ("active", "random")]
        out[str(asked)] = {
            "active_auc": mean_over_users(users["active"], "auc", n_boot),
            "random_auc": mean_over_users(users["random"], "auc", n_boot),
            "auc_active_minus_random": paired_difference(users["active"], users["random"], "auc", n_boot),
            "l2_chosen": {f"{v:g}": round(chosen.count(v) / len(chosen), 4) for v in L2_SWEEP},
        }
    return out


# -- stage 5: decoding with the learned profile -------------------------------------------------------------------


def decoded_key(name: str, guidance: float, rule: str = "product", repetition: int = 0) -> str:
    """Where a user type's profile-decoded answers are cached: by name, rule, repetition and γ (the defaults add
    nothing, so the keys of earlier runs still read)."""
    key = name if rule == "product" else f"{name}|{rule}"
    key += f"|rep={repetition}" if repetition else ""
    return key if guidance == 1.0 else f"{key}|guidance={guidance:g}"


def direct_preferences(dims: tuple[str, ...], basis: Any) -> list[str]:
    """The user's preference written in words: the text of the basis pole of each of their dimensions."""
    return [basis.text(sorted(POLES[d])[0]) for d in dims]


def decode_with_profiles(records: list[dict[str, Any]], splits: dict[str, Any] | list[dict[str, Any]],
                         cache: dict[str, Any], path: Path, learner: Any, max_tokens: int, seed: int,
                         guidance: float = 1.0, rules: tuple[str, ...] = DECODING_RULES) -> None:
    """Decodes each repetition's evaluation prompts: plain (once per prompt), with the preference stated in the
    prompt (once per user type and prompt), and with the first user of each type's profile under each rule."""
    from langchain_persona_judge import ChatPersonaJudge
    from langchain_persona_judge.profiles import PreferenceProfile

    splits = splits if isinstance(splits, list) else [splits]
    handle = learner.scorer.handle
    common = {"hf_model": handle.model, "tokenizer": handle.tokenizer, "max_tokens": max_tokens, **SAMPLING}
    evaluate = list({p["id"]: p for one in splits for p in one["evaluate"]}.values())
    for prompt in evaluate:
        if prompt["id"] not in cache["plain_eval"]:
            [(text, _)] = learner.generate(prompt["prompt"], [None])
            cache["plain_eval"][prompt["id"]] = text
            save_cache(path, cache)
    for dims in USER_TYPES:
        name = "+".join(dims)
        direct = ChatPersonaJudge(preferences=direct_preferences(dims, learner.basis), composition="all", **common)
        _decode(direct, evaluate, cache.setdefault("direct", {}).setdefault(name, {}), cache, path,
                f"direct {name}", seed)
        for number, one in enumerate(splits):
            record = next(r for r in records if tuple(r["dims"]) == dims and r.get("repetition", 0) == number)
            profile = PreferenceProfile.from_dict(record["decoding_profile"])
            for rule in rules:
                llm = ChatPersonaJudge(profile=profile, profile_decoding=rule, guidance=guidance, **common)
                decoded = cache["decoded"].setdefault(decoded_key(name, guidance, rule, number), {})
                _decode(llm, one["evaluate"], decoded, cache, path, f"{rule} {name} rep {number}", seed)


def _decode(llm: Any, prompts: list[dict[str, str]], decoded: dict[str, Any], cache: dict[str, Any], path: Path,
            label: str, seed: int) -> None:
    for index, prompt in enumerate(prompts):
        if prompt["id"] in decoded:
            continue
        started = time.perf_counter()
        message = llm.invoke(prompt["prompt"], seed=seed + index)
        decoded[prompt["id"]] = {"text": message.content, "seconds": time.perf_counter() - started,
                                 "profile": message.response_metadata.get("profile")}
        print(f"[decode] {label} {prompt['id']} in {decoded[prompt['id']]['seconds']:.1f} s", flush=True)
        save_cache(path, cache)


def _answer(cache: dict[str, Any], source: str, name: str, prompt_id: str, guidance: float,
            repetition: int) -> str | None:
    """The text of one condition's answer (``plain``, ``direct``, or a profile rule), None when not decoded."""
    if source == "plain":
        return cache["plain_eval"].get(prompt_id)
    if source == "direct":
        entry = cache.get("direct", {}).get(name, {}).get(prompt_id)
    else:
        entry = cache["decoded"].get(decoded_key(name, guidance, source, repetition), {}).get(prompt_id)
    return None if entry is None else entry["text"]


def decoding_win_rates(cache: dict[str, Any], splits: dict[str, Any] | list[dict[str, Any]], guidance: float = 1.0,
                       rule: str = "product", baseline: str = "plain") -> dict[str, Any]:
    """Each user type's ``rule`` answer (a profile rule, or ``direct``) against the ``baseline`` answer (``plain``
    or ``direct``) on every evaluation prompt of every repetition (the mean of the per-dimension outcomes: 1, 0.5
    or 0, or 0.75/0.25 for a split two-dimension user). Win rates count draws as half, beside the strict
    win/draw/loss shares; CIs resample the evaluation prompts, which every user type of a repetition shares (so
    the pooled figure is not that many independent answers)."""
    splits = splits if isinstance(splits, list) else [splits]
    columns = [(number, prompt) for number, one in enumerate(splits) for prompt in one["evaluate"]]
    out: dict[str, Any] = {}
    table = np.full((len(USER_TYPES), len(columns)), np.nan)
    for row, dims in enumerate(USER_TYPES):
        name = "+".join(dims)
        for column, (number, prompt) in enumerate(columns):
            texts = [_answer(cache, rule, name, prompt["id"], guidance, number),
                     _answer(cache, baseline, name, prompt["id"], guidance, number)]
            if None in texts:
                continue
            scores = metric_table(texts, prompt["prompt"])
            table[row, column] = float(np.mean([outcome_on(scores[d][0], scores[d][1], d) for d in dims]))
        if not np.isnan(table[row]).all():
            out[name] = clustered_win_rate(table[row:row + 1])
    if not np.isnan(table).all():
        out["all_user_types"] = clustered_win_rate(table)
    return out


def decoding_figures(cache: dict[str, Any], splits: list[dict[str, Any]], guidance: float = 1.0) -> dict[str, Any]:
    """Every profile rule against the plain answer and against the direct prompt, and the direct prompt against
    the plain answer: ``{rule: {"vs_plain": ..., "vs_direct": ...}, "direct": {"vs_plain": ...}}``."""
    out: dict[str, Any] = {rule: {f"vs_{b}": decoding_win_rates(cache, splits, guidance, rule, b) for b in BASELINES}
                           for rule in DECODING_RULES}
    out["direct"] = {"vs_plain": decoding_win_rates(cache, splits, guidance, "direct", "plain")}
    return out


# -- stage 6: cost per choice ----------------------------------------------------------------------------------------


def cost_per_choice(cache: dict[str, Any], scorer_model: Any, tokens: int = 100, questions: int = 3,
                    threads: tuple[int, ...] | None = None, bfloat16: bool = True) -> dict[str, Any]:
    """Seconds to score two ``tokens``-token answers to a new question over the built-in basis, per torch thread
    count (default: one, and every core): on a fresh scorer (``cold``: it reads the personas' system turns too)
    and on one that has scored another question before (``warm``: what each question of a learning session
    costs after the first; the median over ``questions - 1`` questions). With ``bfloat16``, the same with the
    last thread count on the model loaded in bfloat16, and how far its features are from the fp32 ones (the
    largest absolute difference, against their mean size, and how often the two answers' feature differences
    keep their sign)."""
    from langchain_persona_judge.profiles import PersonaScorer

    texts = [c["text"] for entries in cache["candidates"].values() for c in entries if c["text"].strip()]
    tokenizer = scorer_model.tokenizer
    pool = tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"]
    if len(pool) < 2 * questions * tokens:
        raise SystemExit(f"The candidate cache holds {len(pool)} answer tokens, fewer than the {2 * questions * tokens} "
                         "the cost measurement reads; run the benchmark once without --cost-only first.")
    answers = [tokenizer.decode(pool[i * tokens:(i + 1) * tokens]) for i in range(2 * questions)]

    def score_questions(scorer: Any) -> tuple[list[float], list[int], np.ndarray]:
        """Seconds and token positions of each question's two answers on ``scorer``, and their features."""
        seconds, positions, features = [], [], []
        for q in range(questions):
            mark, started = scorer.positions, time.perf_counter()
            features.append(scorer.features(f"Question number {q}: what should I know about this?",
                                            answers[2 * q:2 * q + 2]))
            seconds.append(time.perf_counter() - started)
            positions.append(scorer.positions - mark)
        return seconds, positions, np.concatenate(features)

    def warm(values: list[Any]) -> Any:
        return round(float(np.median(values[1:])), 2) if questions > 1 else None

    cores = os.cpu_count() or 1
    before = torch.get_num_threads()
    out: dict[str, Any] = {"answer_tokens": tokens, "machine_cores": cores}
    try:
        for count in threads or tuple(dict.fromkeys((1, cores))):
            torch.set_num_threads(count)
            scorer = PersonaScorer(scorer_model)
            seconds, positions, exact = score_questions(scorer)
            out[f"threads_{count}"] = {
                "cold_seconds": round(seconds[0], 2), "cold_positions": positions[0],
                "warm_seconds": warm(seconds), "warm_positions": positions[-1] if questions > 1 else None,
                "positions_per_second": round(sum(positions) / sum(seconds)),
            }
        out.update(basis=len(scorer.basis), rows=len(scorer.basis) + 1)
        if bfloat16:  # the model loaded in bfloat16 (ChatPersonaJudge(dtype="bfloat16")), the last thread count
            from langchain_persona_judge.profiles.scoring import resolve_model

            seconds, _, rough = score_questions(PersonaScorer(resolve_model(None, dtype="bfloat16")))
            out["bfloat16"] = {
                "threads": torch.get_num_threads(), "cold_seconds": round(seconds[0], 2),
                "warm_seconds": warm(seconds),
                "max_abs_feature_error": round(float(np.abs(rough - exact).max()), 4),
                "feature_scale": round(float(np.abs(exact).mean()), 4),
                "difference_sign_agreement": round(float(np.mean(
                    np.sign(rough[0::2] - rough[1::2]) == np.sign(exact[0::2] - exact[1::2]))), 3),
            }
    finally:
        torch.set_num_threads(before)
    return out


# -- main ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learn-prompts", type=int, default=14, help="prompts whose candidates are asked (14)")
    parser.add_argument("--held-out-prompts", type=int, default=30, help="prompts for held-out pairs (30)")
    parser.add_argument("--eval-prompts", type=int, default=30, help="prompts decoded with each profile (30)")
    parser.add_argument("--repetitions", type=int, default=2,
                        help="repetitions, each with its own learning, held-out and evaluation prompts (2)")
    parser.add_argument("--users-per-type", type=int, default=5, help=f"simulated users per type and repetition "
                        f"({len(USER_TYPES)} types; default 5)")
    parser.add_argument("--questions", type=int, default=20, help="choices per user (20)")
    parser.add_argument("--noise", type=float, default=0.1, help="label noise (0.1)")
    parser.add_argument("--l2", type=float, default=None, help="the fit's L2 strength (default: the package's)")
    parser.add_argument("--max-tokens", type=int, default=200,
                        help="candidate and decoded answers' token limit (200: nearly every answer ends by itself)")
    parser.add_argument("--no-length", action="store_true", help="leave the length feature out of the basis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", default=None, help="the project's shared/ folder (default ../shared)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 prompts per split, 2 users per type")
    parser.add_argument("--reanalyse", action="store_true", help="no decoding: figures from the cache only")
    parser.add_argument("--fresh", action="store_true", help="ignore the cache")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding with the profiles (stage 5)")
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="decode with the profiles at this guidance strength γ (stage 5; default 1: none)")
    parser.add_argument("--cost-only", action="store_true",
                        help="measure only the cost per choice (stage 6) and update it in the results file")
    parser.add_argument("--cache", type=Path, default=None, help=f"default {CACHE}")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/learning.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.learn_prompts, args.held_out_prompts, args.eval_prompts, args.repetitions = 2, 2, 1, 1
        args.users_per_type, args.questions, args.max_tokens = 2, 5, 24
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from langchain_persona_judge.profiles import L2, PersonaScorer, PreferenceLearner

    started = time.perf_counter()
    l2 = L2 if args.l2 is None else args.l2
    quick = "_quick" if args.quick else ""
    cache_path = args.cache or CACHE.with_name(f"learning_candidates{quick}.json")
    out_path = args.out or RESULTS / f"learning{quick}.json"
    everything = load_prompts(shared_dir(args.shared))
    numbers = {p["id"]: number for number, p in enumerate(everything)}
    splits = repetition_splits(everything, args.learn_prompts, args.held_out_prompts, args.eval_prompts, args.seed,
                               args.repetitions)
    # Candidates and answers are cached by prompt id: a prompt has the same ones whichever split it lands in.
    config = {"max_tokens": args.max_tokens, "sampling": SAMPLING, "seed": args.seed, "cache_version": 2}
    cache = {"config": config, "candidates": {}, "features": {}, "plain_eval": {}, "decoded": {}} if args.fresh \
        else load_cache(cache_path, config)
    if args.cost_only:
        return update_cost(out_path, argv, cost_per_choice(cache, PersonaScorer(None).handle,
                                                     tokens=24 if args.quick else 100))
    scorer = PersonaScorer(None, features=() if args.no_length else ("length",))
    learner = PreferenceLearner(scorer, prompts=[], max_tokens=args.max_tokens, seed=args.seed, **SAMPLING)
    pool = list({p["id"]: p for one in splits for p in one["learn"] + one["held_out"]}.values())
    timings: dict[str, float] = {}
    if not args.reanalyse:
        mark = time.perf_counter()
        make_candidates(learner, pool, cache, cache_path, args.seed, numbers)
        timings["candidates_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        score_candidates(scorer, pool, cache, cache_path, args.max_tokens)
        timings["features_s"] = time.perf_counter() - mark
    table = cache["features"][scorer.basis.identity]
    metrics = {}
    for prompt in pool:
        texts = table[prompt["id"]]["texts"]
        metrics[prompt["prompt"]] = {"texts": texts, "scores": metric_table(texts, prompt["prompt"])}
    mark = time.perf_counter()
    records = simulate(scorer, cache, splits, metrics, args.users_per_type, args.questions, args.noise, l2, args.seed,
                       cross_validate=not args.quick)
    timings["simulation_s"] = time.perf_counter() - mark
    pairs = pairs_by_type(table, metrics, splits)
    held = sum(len(one["held_out"]) for one in splits)
    summary = summarise(records, pairs, held)
    summary["ceiling_full_fit"] = ceiling(table, metrics, splits[0], l2)
    sensitivity = {}
    for other in [] if args.quick else [v for v in L2_SWEEP if v != l2]:
        others = simulate(scorer, cache, splits, metrics, args.users_per_type, args.questions, args.noise, other,
                          args.seed)
        rows = summarise(others, pairs, held, n_boot=500, detail=False)
        asked = min(10, args.questions)
        sensitivity[str(other)] = {s: {k: rows[s][str(asked)][k] for k in ("top_pole", "held_out_auc")}
                                   for s in ("active", "random")}
        sensitivity[str(other)]["auc_active_minus_random"] = paired_difference(
            *[[user_scores(r, s, asked, pairs, held) for r in others] for s in ("active", "random")], "auc", 500)
    decoding = {}
    if not args.no_decode:
        if not args.reanalyse:
            mark = time.perf_counter()
            decode_with_profiles(records, splits, cache, cache_path, learner, args.max_tokens, args.seed,
                                 args.guidance)
            timings["decoding_s"] = time.perf_counter() - mark
        decoding = decoding_figures(cache, splits, args.guidance)
    previous = json.loads(out_path.read_text(encoding="utf-8")) if args.reanalyse and out_path.is_file() else {}
    cost = previous.get("cost_per_choice", {})
    if not args.reanalyse:
        cost = cost_per_choice(cache, scorer.handle, tokens=24 if args.quick else 100)
    timings = {**previous.get("timings", {}), **timings}
    scoring = [v for v in table.values()]
    per_answer = [v["seconds"] / len(v["texts"]) for v in scoring]
    report = {
        "config": {**config, "repetitions": args.repetitions,
                   "splits": [{k: [p["id"] for p in v] for k, v in one.items()} for one in splits],
                   "users": len(records), "user_types": ["+".join(t) for t in USER_TYPES],
                   "decoding_guidance": args.guidance,
                   "questions": args.questions, "noise": args.noise, "l2": l2, "basis": list(scorer.basis.labels),
                   "decoding_l2": "chosen per user by leave-one-out on their own choices (cross_validated_l2)",
                   "model": scorer.handle.display,
                   "prompts_per_repetition": {k: len(v) for k, v in splits[0].items()}},
        "machine": machine_info("cpu", 1),
        "statistics": STATISTICS_NOTE,
        "l2_choice": L2_NOTE,
        "learning": summary,
        "l2_sensitivity_after_10": sensitivity,
        "decoding_win_rate_vs_plain": decoding.get("product", {}).get("vs_plain", {}),
        "decoding": decoding,
        "cost_per_choice": cost,
        "scoring_in_run": {"answers": sum(len(v["texts"]) for v in scoring),
                           "seconds_per_answer_median": round(float(np.median(per_answer)), 2) if per_answer else None,
                           "mean_answer_tokens": round(float(np.mean([t for v in scoring
                                                                       for t in v["response_tokens"]])), 1)},
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "users": records,
    }
    decoders = {}
    for record in records:  # the profiles that decoded (the first user of each type), as weights only
        profile = record.pop("decoding_profile", None)
        name = "+".join(record["dims"])
        if profile is not None and name not in decoders:
            decoders[name] = {p["name"]: round(p["weight"], 4)
                              for p in profile["basis"]["personas"] + profile["basis"].get("features", [])}
    report["decoding_profiles"] = decoders
    if args.reanalyse and previous:  # the figures are recomputed here; the texts were decoded where they were
        report["decoded_on"] = previous.get("decoded_on", previous.get("machine"))
    write_results(out_path, report, module="benchmarks.learning", argv=argv, backend="transformers", threads=1)
    print_report(report)
    print(f"\nwrote {out_path}", flush=True)
    return report


def update_cost(out_path: Path, argv: list[str] | None, cost: dict[str, Any]) -> dict[str, Any]:
    """Writes a new cost per choice into an existing results file (the rest of it unchanged)."""
    report = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {}
    report["cost_per_choice"] = cost
    write_results(out_path, report, module="benchmarks.learning", argv=argv, backend="transformers")
    print(f"cost per choice: {json.dumps(cost)}\nwrote {out_path}", flush=True)
    return report


def print_report(report: dict[str, Any]) -> None:
    learning = report["learning"]
    print("\nchoices  strategy  top pole (strict)        top pole (lenient)       held-out acc            AUC"
          "                     best-of-N vs plain")
    for asked in map(str, CHECKPOINTS):
        for strategy in ("active", "random"):
            row = learning[strategy].get(asked)
            if row:
                cells = [f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for v in (
                    row["top_pole"], row["top_pole_lenient"], row["held_out_accuracy"], row["held_out_auc"],
                    row["best_of_n_vs_plain"])]
                print(f"{asked:>7}  {strategy:8s}  " + "  ".join(f"{c:22s}" for c in cells))
    for rule, against in report.get("decoding", {}).items():
        for baseline, rates in against.items():
            rate = rates.get("all_user_types")
            if rate:
                print(f"{rule} {baseline.replace('_', ' ')}, all user types: {rate['win_rate']:.2f} {rate['ci95']} "
                      f"(strict win {rate['win']:.2f}, loss {rate['loss']:.2f}; {rate['prompts']} prompts)")
    if report["cost_per_choice"]:
        print(f"cost per choice: {report['cost_per_choice']}")


if __name__ == "__main__":
    main(sys.argv[1:])
