"""Statistics of benchmarks/learning.py: ROC AUC, accuracy and win rates with CIs that resample the prompts.

Every simulated user is scored on the same few held-out prompts and every profile decodes the same few evaluation
prompts, so users are not independent draws: a bootstrap over users alone ignores the prompt sample and gives CIs
that are too narrow. Here a resample draws the prompts with replacement (a prompt drawn twice counts twice) and,
for figures over users, the users with replacement too (a two-way bootstrap); the CI is the percentile interval.
Pure numpy, so it imports (and is tested) without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann–Whitney, ties counted half): how often a positive outscores a negative."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).mean()
    equal = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * equal)


class UserScores:
    """One profile's margins ``w · (φ(a) − φ(b))`` on the held-out pairs (label 1: the user prefers a), each pair
    tagged with its prompt, ready to be re-weighted by a resample of prompts.

    The AUC is over both orientations of every pair (``(m, label)`` and ``(−m, 1 − label)``), as in
    ``learning.evaluate_profile``; with every prompt counted once, :meth:`auc` equals :func:`roc_auc` of them.
    """

    def __init__(self, margins: np.ndarray, labels: np.ndarray, prompt: np.ndarray, prompts: int) -> None:
        margins, labels, prompt = (np.asarray(x) for x in (margins, labels, prompt))
        self.prompts = prompts
        self.prompt = prompt.astype(int)
        self.correct = np.where(margins == 0, 0.5, (margins > 0) == (labels == 1)).astype(float)
        scores = np.concatenate([margins, -margins])
        both = np.concatenate([labels, 1 - labels])
        tags = np.concatenate([self.prompt, self.prompt])
        pos, neg = scores[both == 1], scores[both == 0]
        self.order = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        self.tag_pos, self.tag_neg = tags[both == 1], tags[both == 0]

    def _counts(self, counts: np.ndarray | None) -> np.ndarray:
        return np.ones(self.prompts) if counts is None else np.asarray(counts, dtype=float)

    def auc(self, counts: np.ndarray | None = None) -> float:
        """AUC with prompt ``p``'s pairs counted ``counts[p]`` times (None: once each)."""
        c = self._counts(counts)
        wp, wn = c[self.tag_pos], c[self.tag_neg]
        total = wp.sum() * wn.sum()
        return float(wp @ self.order @ wn / total) if total else float("nan")

    def accuracy(self, counts: np.ndarray | None = None) -> float:
        """Share of pairs ranked the user's way (a zero margin counts half), prompts weighted by ``counts``."""
        w = self._counts(counts)[self.prompt]
        return float(w @ self.correct / w.sum()) if w.sum() else float("nan")


def two_way_ci(statistic: Callable[[np.ndarray, np.ndarray], float], rows: int, prompts: int,
               n_boot: int = 2000, seed: int = 0, resample_rows: bool = True) -> list[float]:
    """``[point, low, high]`` of ``statistic(row_indices, prompt_counts)`` under a bootstrap that draws the
    prompts with replacement (``prompt_counts[p]``: how often prompt ``p`` was drawn) and, with
    ``resample_rows``, the rows (users) with replacement too. The point estimate uses every row and prompt once.
    """
    point = statistic(np.arange(rows), np.ones(prompts))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, rows, rows) if resample_rows else np.arange(rows)
        counts = np.bincount(rng.integers(0, prompts, prompts), minlength=prompts).astype(float)
        stats[b] = statistic(picked, counts)
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return [round(float(point), 4), float("nan"), float("nan")]
    low, high = np.quantile(stats, [0.025, 0.975])
    return [round(float(point), 4), round(float(low), 4), round(float(high), 4)]


def mean_over_users(users: Sequence[UserScores], metric: str, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """The mean over users of ``metric`` ("auc" or "accuracy"), CI two-way over users and held-out prompts."""
    if not users:
        return [float("nan")] * 3
    values = [getattr(u, metric) for u in users]

    def statistic(picked: np.ndarray, counts: np.ndarray) -> float:
        return float(np.nanmean([values[i](counts) for i in picked]))

    return two_way_ci(statistic, len(users), users[0].prompts, n_boot, seed)


def paired_difference(first: Sequence[UserScores], second: Sequence[UserScores], metric: str = "auc",
                      n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Mean of ``first[u].metric − second[u].metric`` (the same user, two strategies), CI two-way."""
    if not first:
        return [float("nan")] * 3

    def statistic(picked: np.ndarray, counts: np.ndarray) -> float:
        return float(np.nanmean([getattr(first[i], metric)(counts) - getattr(second[i], metric)(counts)
                                 for i in picked]))

    return two_way_ci(statistic, len(first), first[0].prompts, n_boot, seed)


def matrix_mean(values: np.ndarray, n_boot: int = 2000, seed: int = 0, resample_rows: bool = True) -> list[float]:
    """Mean of a (rows × prompts) matrix of outcomes (NaN: none), CI resampling prompts (and rows)."""
    values = np.asarray(values, dtype=float)
    if not values.size:
        return [float("nan")] * 3

    def statistic(picked: np.ndarray, counts: np.ndarray) -> float:
        block = values[picked]
        weights = np.broadcast_to(counts, block.shape) * ~np.isnan(block)
        return float(np.nansum(block * weights) / weights.sum()) if weights.sum() else float("nan")

    return two_way_ci(statistic, values.shape[0], values.shape[1], n_boot, seed, resample_rows)


def outcome_shares(outcomes: np.ndarray) -> dict[str, float]:
    """Strict wins (outcome 1), draws (0.5), strict losses (0) and partial outcomes (a mean over two dimensions
    that is none of these, e.g. 0.75) as shares of all outcomes; NaN cells are left out."""
    flat = np.asarray(outcomes, dtype=float).ravel()
    flat = flat[~np.isnan(flat)]
    if not len(flat):
        return {"win": float("nan"), "tie": float("nan"), "loss": float("nan"), "partial": float("nan")}
    win, tie, loss = (flat == 1).mean(), (flat == 0.5).mean(), (flat == 0).mean()
    return {"win": round(float(win), 4), "tie": round(float(tie), 4), "loss": round(float(loss), 4),
            "partial": round(float(1 - win - tie - loss), 4)}


def clustered_win_rate(outcomes: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Win rate (the mean outcome, draws as half) of a (user types × evaluation prompts) matrix, its 95% CI
    resampling the prompts only (the user types are a fixed design), and the strict win/draw/loss shares."""
    outcomes = np.asarray(outcomes, dtype=float)
    point, low, high = matrix_mean(outcomes, n_boot, seed, resample_rows=False)
    return {"win_rate": point, "ci95": [low, high], **outcome_shares(outcomes),
            "comparisons": int((~np.isnan(outcomes)).sum()), "prompts": int(outcomes.shape[1]),
            "ci": "bootstrap over the evaluation prompts (every user type's outcome on a drawn prompt counts)"}


def win_summary(outcomes: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One decoding option against a baseline: a (users × prompts) matrix of outcomes (1 win, 0.5 draw, 0 loss,
    0.75/0.25 a split two-dimension user; NaN where the user did not see the prompt). The win rate counts a draw
    as half; its 95% CI resamples users and prompts (two-way: each user sees a few prompts drawn fresh, and a
    prompt is seen by several users). Beside it the strict shares and how many strict wins per strict loss."""
    outcomes = np.asarray(outcomes, dtype=float)
    point, low, high = matrix_mean(outcomes, n_boot, seed, resample_rows=True)
    shares = outcome_shares(outcomes)
    seen = ~np.isnan(outcomes)
    wins, losses = int((outcomes == 1).sum()), int((outcomes == 0).sum())
    return {"win_rate": point, "ci95": [low, high], **shares, "strict_wins": wins, "strict_losses": losses,
            "wins_per_loss": round(wins / losses, 3) if losses else (float("inf") if wins else float("nan")),
            "comparisons": int(seen.sum()), "users": int(seen.any(axis=1).sum()) if seen.size else 0,
            "prompts": int(seen.any(axis=0).sum()) if seen.size else 0}


def median_shortening(words: np.ndarray, baseline_words: np.ndarray, n_boot: int = 2000,
                      seed: int = 0) -> list[float]:
    """``1 − median(words) / median(baseline_words)`` over the cells where both are known: how much shorter the
    option's answers are (0.25: a quarter fewer words at the median). ``[point, low, high]``, the CI two-way
    over users (rows) and prompts (columns), a cell counted as often as its row and its prompt were drawn."""
    a, b = np.asarray(words, dtype=float), np.asarray(baseline_words, dtype=float)
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any():
        return [float("nan")] * 3

    def statistic(picked: np.ndarray, counts: np.ndarray) -> float:
        weights = (np.broadcast_to(counts, a.shape) * both)[picked].ravel()
        keep = weights > 0
        if not keep.any():
            return float("nan")
        reps = weights[keep].astype(int)
        ours = np.repeat(a[picked].ravel()[keep], reps)
        theirs = np.repeat(b[picked].ravel()[keep], reps)
        return float(1.0 - np.median(ours) / np.median(theirs))

    return two_way_ci(statistic, a.shape[0], a.shape[1], n_boot, seed)


DONE_WHEN = {"win_rate": 0.70, "ci_low": 0.55, "wins_per_loss": 2.0, "shortening": 0.25}
"""Issue 25's bars: win rate vs plain (draws half), its CI's lower bound, strict wins per strict loss, and the
median-word shortening for a short-answer user; and a win rate above one half against the direct prompt."""


def done_when(vs_plain: dict[str, Any], vs_direct: dict[str, Any], shortening: list[float] | None) -> dict[str, bool]:
    """Which of issue 25's bars one decoding option meets (from :func:`win_summary` and
    :func:`median_shortening` figures)."""
    ratio = vs_plain["wins_per_loss"]
    return {
        "win_rate_vs_plain_at_least_70": bool(vs_plain["win_rate"] >= DONE_WHEN["win_rate"]),
        "ci_low_vs_plain_above_55": bool(vs_plain["ci95"][0] > DONE_WHEN["ci_low"]),
        "strict_wins_at_least_twice_losses": bool(not math.isnan(ratio) and ratio >= DONE_WHEN["wins_per_loss"]),
        "beats_direct": bool(vs_direct["win_rate"] > 0.5 and vs_direct["ci95"][0] > 0.5),
        "short_answers_25_percent_shorter": bool(shortening is not None and not math.isnan(shortening[0])
                                                  and shortening[0] >= DONE_WHEN["shortening"]),
    }
