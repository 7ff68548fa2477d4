"""benchmarks/learning.py's analysis on planted cases: AUC, accuracy, win rates and CIs clustered by prompt.

Every expected value is worked out by hand in the test (or by a definition written out here), never taken from
the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks import learning
from benchmarks.learning_stats import (UserScores, clustered_win_rate, matrix_mean, mean_over_users,
                                       outcome_shares, paired_difference, roc_auc, two_way_ci)


def _mann_whitney(scores: list[float], labels: list[int]) -> float:
    """The AUC by its definition: over every (positive, negative) pair, 1 if the positive scores higher, 1/2 on
    a tie, 0 otherwise; the mean."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]))


# -- AUC ---------------------------------------------------------------------------------------------------------


def test_roc_auc_on_planted_scores():
    labels = np.array([1, 1, 0, 0])
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), labels) == 1.0  # every positive above every negative
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), labels) == 0.0  # inverted: every positive below
    assert roc_auc(np.array([4.0, 1.0, 2.0, 3.0]), labels) == 0.5  # 4 beats both; 1 beats neither: 2 of 4
    assert roc_auc(np.array([2.0, 2.0, 2.0, 2.0]), labels) == 0.5  # all ties count half
    assert roc_auc(np.array([3.0, 1.0, 2.0, 1.0]), labels) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))  # no negative: undefined


def test_user_auc_scores_both_orientations_of_each_pair():
    # margins (w · (φ(a) − φ(b))) and labels (1: the user prefers a) of three held-out pairs on two prompts
    margins, labels, prompt = np.array([2.0, -1.0, 0.5]), np.array([1, 1, 0]), np.array([0, 0, 1])
    user = UserScores(margins, labels, prompt, prompts=2)
    # both orientations: scores [2, -1, 0.5, -2, 1, -0.5], labels [1, 1, 0, 0, 0, 1];
    # positives {2, -1, -0.5} against negatives {0.5, -2, 1}: 2 beats all three, -1 and -0.5 beat -2: 5 of 9.
    assert user.auc() == pytest.approx(5 / 9)
    assert user.auc() == pytest.approx(_mann_whitney([2, -1, 0.5, -2, 1, -0.5], [1, 1, 0, 0, 0, 1]))
    # accuracy: pair 1 right (2 > 0, prefers a), pair 2 wrong, pair 3 wrong (0.5 > 0 but prefers b): 1 of 3
    assert user.accuracy() == pytest.approx(1 / 3)
    flipped = UserScores(-margins, labels, prompt, prompts=2)  # the negated profile
    assert flipped.auc() == pytest.approx(4 / 9) and flipped.accuracy() == pytest.approx(2 / 3)


def test_user_auc_weights_pairs_by_how_often_their_prompt_was_drawn():
    margins, labels, prompt = np.array([2.0, -1.0, 0.5]), np.array([1, 1, 0]), np.array([0, 0, 1])
    user = UserScores(margins, labels, prompt, prompts=2)
    # prompt 0 drawn twice, prompt 1 not at all: the AUC of prompt 0's pairs, each listed twice
    twice = [2.0, -1.0, 2.0, -1.0]
    expected = _mann_whitney(twice + [-m for m in twice], [1, 1, 1, 1, 0, 0, 0, 0])
    assert user.auc(np.array([2.0, 0.0])) == pytest.approx(expected)  # 2 > 1, 2 > -2, -1 > -2; -1 < 1: 3/4
    assert expected == pytest.approx(3 / 4)
    assert user.accuracy(np.array([0.0, 3.0])) == 0.0  # only prompt 1's pair, ranked the wrong way
    assert np.isnan(user.auc(np.zeros(2)))


def test_evaluate_profile_reports_the_auc_of_the_profiles_own_direction():
    class Profile:  # the few methods evaluate_profile reads
        def __init__(self, vector):
            self.vector = np.asarray(vector, dtype=float)

        def top(self, k):
            return [("concise", float(self.vector[0]))][:k]

        def pole_of(self, name, weight):
            return name

        def dimensions(self):
            return []

    differences = np.array([[1.0, 0.0], [0.5, 1.0], [-2.0, 0.0]])
    labels = np.array([1, 1, 0])  # the user prefers a exactly when feature 0 of a is larger
    right = learning.evaluate_profile(Profile([1.0, 0.0]), ("concise",), (differences, labels))
    wrong = learning.evaluate_profile(Profile([-1.0, 0.0]), ("concise",), (differences, labels))
    assert right["auc"] == 1.0 and right["accuracy"] == 1.0
    assert wrong["auc"] == 0.0 and wrong["accuracy"] == 0.0
    assert right["weights"] == [1.0, 0.0]


# -- CIs clustered by prompt ---------------------------------------------------------------------------------------


def test_two_way_ci_widens_when_the_prompts_differ_and_users_do_not():
    # 60 identical users, six prompts: three the profile always wins, three it always loses. Over users alone
    # the mean is exactly 0.5 with no spread; the prompt sample is what is uncertain.
    table = np.tile([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], (60, 1))
    point, low, high = matrix_mean(table, n_boot=1000)
    assert point == 0.5
    assert low <= 1 / 3 and high >= 2 / 3  # six prompts: a resample of 2 wins of 6 or 4 of 6 is common
    users_only = learning._ci(list(table.mean(axis=1)))
    assert users_only == [0.5, 0.5, 0.5]


def test_two_way_ci_reflects_the_users_when_the_prompts_agree():
    rng = np.random.default_rng(0)
    per_user = rng.choice([0.0, 1.0], size=40)
    table = np.tile(per_user[:, None], (1, 6))  # every prompt the same for a user
    point, low, high = matrix_mean(table, n_boot=1000)
    assert point == pytest.approx(per_user.mean())
    assert low < point < high
    fixed_rows = matrix_mean(table, n_boot=200, resample_rows=False)
    assert fixed_rows[1] == fixed_rows[2] == pytest.approx(per_user.mean())  # only prompts resampled: no spread


def test_two_way_ci_counts_a_prompt_as_often_as_it_was_drawn():
    seen = []

    def statistic(rows, counts):
        seen.append((rows.copy(), counts.copy()))
        return float(counts[0])

    point, low, high = two_way_ci(statistic, rows=3, prompts=4, n_boot=300, seed=1)
    assert point == 1.0  # every prompt once
    assert all(c.sum() == 4 and len(r) == 3 for r, c in seen[1:])
    assert 0 <= low <= high <= 4


def test_mean_over_users_and_the_paired_difference():
    margins, labels, prompt = np.array([1.0, 1.0, -1.0, -1.0]), np.array([1, 1, 1, 1]), np.array([0, 1, 2, 3])
    good = UserScores(margins, labels, prompt, prompts=4)  # right on prompts 0, 1; wrong on 2, 3
    perfect = UserScores(np.ones(4), labels, prompt, prompts=4)
    point, low, high = mean_over_users([good, good], "accuracy", n_boot=500)
    assert point == 0.5 and low < 0.5 < high  # identical users: the spread comes from the prompts
    diff = paired_difference([perfect, perfect], [good, good], "accuracy", n_boot=500)
    assert diff[0] == 0.5 and 0 <= diff[1] < 0.5 < diff[2] <= 1  # 1 - 0.5; never below 0 on any resample
    assert mean_over_users([], "auc") != mean_over_users([], "auc")  # NaNs


# -- win rates --------------------------------------------------------------------------------------------------


def test_outcome_shares_keep_strict_wins_and_losses_apart_from_split_outcomes():
    # 8 outcomes: wins 1, 1; draws 0.5, 0.5, 0.5; a loss 0; split two-dimension outcomes 0.75, 0.25
    shares = outcome_shares(np.array([[1, 1, 0.5, 0.5], [0.5, 0, 0.75, 0.25]]))
    assert shares == {"win": 0.25, "tie": 0.375, "loss": 0.125, "partial": 0.25}


def test_clustered_win_rate_resamples_prompts_not_user_types():
    # 2 user types x 3 prompts; draws count half: (1 + 0.5 + 0 + 1 + 0.75 + nan) / 5
    table = np.array([[1.0, 0.5, 0.0], [1.0, 0.75, np.nan]])
    rate = clustered_win_rate(table, n_boot=500)
    assert rate["win_rate"] == pytest.approx(round((1 + 0.5 + 0 + 1 + 0.75) / 5, 4))
    assert (rate["win"], rate["tie"], rate["loss"], rate["partial"]) == (0.4, 0.2, 0.2, 0.2)
    assert rate["comparisons"] == 5 and rate["prompts"] == 3
    assert rate["ci95"][0] < rate["win_rate"] < rate["ci95"][1]
    same_prompts = clustered_win_rate(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), n_boot=200)
    assert same_prompts["ci95"] == [0.5, 0.5]  # the rows differ, every prompt is alike: no prompt spread


def test_decoding_win_rates_pool_user_types_by_prompt():
    pytest.importorskip("emoji")
    pytest.importorskip("textstat_rs")
    long = ("Water the plant when the top of the soil feels dry, give it bright indirect light every day, and "
            "feed it once a month in spring and summer so that it keeps growing strong and green.")
    short = "Water it when the soil is dry, and give it light."
    prompts = [{"id": f"p{i}", "prompt": "How do I keep a plant alive?"} for i in range(3)]
    cache = {"plain_eval": {p["id"]: long for p in prompts}, "decoded": {}}
    for dims in learning.USER_TYPES:
        name = "+".join(dims)
        # the concise user's profile answers short on every prompt: a strict win on word count
        cache["decoded"][name] = {p["id"]: {"text": short if name == "concise" else long} for p in prompts}
    out = learning.decoding_win_rates(cache, {"evaluate": prompts})
    concise = out["concise"]
    assert (concise["win_rate"], concise["win"], concise["loss"], concise["prompts"]) == (1.0, 1.0, 0.0, 3)
    assert out["simple"]["tie"] == 1.0 and out["simple"]["win_rate"] == 0.5  # the same text: a draw
    pooled = out["all_user_types"]
    assert pooled["comparisons"] == 18 and pooled["prompts"] == 3
    assert pooled["win_rate"] == pytest.approx(round((3 * 1.0 + 15 * 0.5) / 18, 4))
    assert pooled["ci95"] == [pooled["win_rate"]] * 2  # every prompt alike


# -- L2 chosen on a user's own choices -------------------------------------------------------------------------------


def test_cross_validated_l2_follows_how_predictable_the_choices_are():
    rng = np.random.default_rng(0)
    differences = rng.normal(size=(12, 3))
    clean = (differences[:, 0] > 0).astype(float)  # the user follows feature 0 every time
    best, weights, scores = learning.cross_validated_l2(differences * 4, clean)
    assert best == min(learning.L2_SWEEP) and weights[0] > 0
    assert scores[f"{min(learning.L2_SWEEP):g}"] > scores[f"{max(learning.L2_SWEEP):g}"]
    noise = rng.integers(0, 2, 12).astype(float)  # choices unrelated to the features
    best_noise, _, noise_scores = learning.cross_validated_l2(differences * 4, noise)
    assert best_noise == max(learning.L2_SWEEP)
    assert set(noise_scores) == {f"{v:g}" for v in learning.L2_SWEEP}


def test_cross_validated_l2_scores_are_leave_one_out_log_likelihoods():
    from langchain_persona_judge.profiles import fit_bradley_terry

    d = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 0.5], [0.2, -0.3]])
    y = np.array([1.0, 1.0, 0.0, 0.5])
    _, _, scores = learning.cross_validated_l2(d, y, grid=(0.3,))
    total = 0.0
    for k in range(4):
        keep = [i for i in range(4) if i != k]
        p = 1 / (1 + np.exp(-(d[k] @ fit_bradley_terry(d[keep], y[keep], l2=0.3).weights)))
        total += y[k] * np.log(p) + (1 - y[k]) * np.log(1 - p)
    assert scores["0.3"] == pytest.approx(total / 4)


# -- repetitions with fresh prompts, and every decoding rule against plain and direct ------------------------------


def test_each_repetition_draws_its_own_disjoint_splits():
    prompts = [{"id": f"q{i:03d}", "prompt": f"question {i}"} for i in range(100)]
    splits = learning.repetition_splits(prompts, 14, 30, 30, seed=0, repetitions=3)
    assert len(splits) == 3
    for one in splits:
        ids = [p["id"] for key in ("learn", "held_out", "evaluate") for p in one[key]]
        assert (len(one["learn"]), len(one["held_out"]), len(one["evaluate"])) == (14, 30, 30)
        assert len(set(ids)) == 74  # disjoint within a repetition
    evaluate = [{p["id"] for p in one["evaluate"]} for one in splits]
    assert evaluate[0] != evaluate[1] and evaluate[1] != evaluate[2]  # drawn afresh
    assert splits[0] == learning.split_prompts(prompts, 14, 30, 30, 0)  # repetition 0 is the old single split
    with pytest.raises(SystemExit, match="the pool has 100"):
        learning.split_prompts(prompts, 50, 30, 30, 0)


def test_decoding_rules_are_compared_with_plain_and_direct_across_repetitions():
    pytest.importorskip("emoji")
    pytest.importorskip("textstat_rs")
    long = ("Water the plant when the top of the soil feels dry, give it bright indirect light every day, and "
            "feed it once a month in spring and summer so that it keeps growing strong and green.")
    short = "Water it when the soil is dry, and give it light."
    splits = [{"evaluate": [{"id": f"r{r}p{i}", "prompt": "How do I keep a plant alive?"} for i in range(2)]}
              for r in range(2)]
    ids = [p["id"] for one in splits for p in one["evaluate"]]
    cache: dict = {"plain_eval": {i: long for i in ids}, "direct": {}, "decoded": {}}
    for dims in learning.USER_TYPES:
        name = "+".join(dims)
        cache["direct"][name] = {i: {"text": long} for i in ids}  # the stated preference changed nothing
        for r, one in enumerate(splits):
            for rule in learning.DECODING_RULES:
                # best-of-N answers short for the concise user; the product rule never does
                text = short if (name == "concise" and rule == "best_of_n") else long
                key = learning.decoded_key(name, 1.0, rule, r)
                cache["decoded"][key] = {p["id"]: {"text": text} for p in one["evaluate"]}
    figures = learning.decoding_figures(cache, splits)
    best = figures["best_of_n"]["vs_plain"]["concise"]
    assert (best["win_rate"], best["win"], best["prompts"]) == (1.0, 1.0, 4)  # both repetitions' prompts
    assert figures["best_of_n"]["vs_direct"]["concise"]["win_rate"] == 1.0
    assert figures["product"]["vs_plain"]["concise"]["tie"] == 1.0
    assert figures["direct"]["vs_plain"]["all_user_types"]["win_rate"] == 0.5
    pooled = figures["best_of_n"]["vs_plain"]["all_user_types"]
    assert pooled["comparisons"] == 24 and pooled["win_rate"] == pytest.approx(round((4 * 1.0 + 20 * 0.5) / 24, 4))
    assert learning.decoded_key("concise", 1.0) == "concise"  # the keys of earlier runs still read
    assert learning.decoded_key("concise", 1.5, "best_of_n", 1) == "concise|best_of_n|rep=1|guidance=1.5"
