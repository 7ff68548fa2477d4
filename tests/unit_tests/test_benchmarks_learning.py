"""benchmarks/learning.py's analysis on planted cases: AUC, accuracy, win rates and CIs clustered by prompt.

Every expected value is worked out by hand in the test (or by a definition written out here), never taken from
the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks import learning, learning_decoding
from benchmarks.learning_decoding import Option
from benchmarks.learning_stats import (UserScores, clustered_win_rate, done_when, matrix_mean, mean_over_users,
                                       median_shortening, outcome_shares, paired_difference, roc_auc, two_way_ci,
                                       win_summary)


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


# -- the decoding comparison: users x prompts, each user on prompts drawn fresh -----------------------------------


def test_win_summary_counts_strict_outcomes_and_draws_as_half():
    # 3 users x 4 prompts; NaN: the user did not see the prompt. Seen: 1, 1, 0.5, 0 | 1, 0.75 | 0.5, 1, 0
    table = np.array([[1.0, 1.0, 0.5, 0.0], [np.nan, 1.0, 0.75, np.nan], [0.5, np.nan, 1.0, 0.0]])
    out = win_summary(table, n_boot=300)
    assert out["win_rate"] == pytest.approx(round((1 + 1 + 0.5 + 0 + 1 + 0.75 + 0.5 + 1 + 0) / 9, 4))
    assert (out["strict_wins"], out["strict_losses"], out["comparisons"]) == (4, 2, 9)
    assert out["wins_per_loss"] == 2.0
    assert (out["win"], out["tie"], out["loss"]) == (round(4 / 9, 4), round(2 / 9, 4), round(2 / 9, 4))
    assert (out["users"], out["prompts"]) == (3, 4)
    assert 0 <= out["ci95"][0] < out["win_rate"] < out["ci95"][1] <= 1
    inverted = win_summary(1 - table, n_boot=300)  # the baseline's view: wins and losses trade places
    assert inverted["win_rate"] == pytest.approx(1 - out["win_rate"], abs=1e-4)
    assert (inverted["strict_wins"], inverted["strict_losses"], inverted["wins_per_loss"]) == (2, 4, 0.5)


def test_win_summary_ci_is_clustered_by_prompt():
    # 50 users, 30 prompts, each user sees 3; a prompt is a win for everyone or a loss for everyone (15 each):
    # the users agree, the prompts do not. A users-only bootstrap would be narrow; this one must not be.
    rng = np.random.default_rng(3)
    per_prompt = np.array([1.0, 0.0] * 15)
    table = np.full((50, 30), np.nan)
    for user in range(50):
        seen = rng.choice(30, 3, replace=False)
        table[user, seen] = per_prompt[seen]
    out = win_summary(table, n_boot=1000)
    mean = float(np.nanmean(table))
    assert out["win_rate"] == pytest.approx(round(mean, 4))
    # the spread of a mean of 30 coin flips (0.5 / sqrt(30) = 0.09): the 95% CI spans well over +-0.1
    assert out["ci95"][1] - out["ci95"][0] > 0.2


def test_median_shortening_by_hand():
    words = np.array([[50.0, 60.0], [100.0, np.nan], [np.nan, 10.0]])
    plain = np.array([[100.0, 100.0], [100.0, 100.0], [100.0, np.nan]])  # user 3's one prompt has no plain answer
    point, low, high = median_shortening(words, plain, n_boot=300)
    assert point == pytest.approx(1 - 60 / 100)  # cells (50, 100), (60, 100), (100, 100): medians 60 and 100
    assert low <= point <= high
    longer = median_shortening(plain, words, n_boot=50)[0]
    assert longer == pytest.approx(1 - 100 / 60, abs=1e-4)  # the other way round (4 places): negative, 67% longer
    assert np.isnan(median_shortening(np.full((1, 1), np.nan), plain[:1, :1], n_boot=10)[0])


def test_done_when_reads_every_bar():
    good_plain = {"win_rate": 0.74, "ci95": [0.6, 0.85], "wins_per_loss": 2.5}
    good_direct = {"win_rate": 0.6, "ci95": [0.52, 0.7], "wins_per_loss": 1.3}
    assert all(done_when(good_plain, good_direct, [0.3, 0.2, 0.4]).values())
    bars = done_when({"win_rate": 0.69, "ci95": [0.55, 0.8], "wins_per_loss": 1.9},
                     {"win_rate": 0.6, "ci95": [0.5, 0.7], "wins_per_loss": 2.0}, [0.24, 0.1, 0.3])
    assert not any(bars.values())  # each just misses: 0.69 < 0.70, 0.55 not above, 1.9 < 2, 0.5 not above, 0.24


def test_option_names_parse_and_round_trip():
    assert Option.parse("product@2") == Option("product", False, 2.0)
    assert Option.parse("product+length@1.5") == Option("product", True, 1.5)
    assert Option.parse("best_of_4+length@1") == Option("best_of_n", True, 1.0, 4)
    for name in learning_decoding.DEFAULT_OPTIONS + learning_decoding.QUICK_OPTIONS:
        assert Option.parse(name).name == name
    for bad in ("product", "best_of_1@1", "greedy@2", "product@x"):
        with pytest.raises(SystemExit):
            Option.parse(bad)


def test_user_splits_are_fresh_disjoint_and_differ_between_users():
    prompts = [{"id": f"q{i:03d}", "prompt": f"question {i}"} for i in range(100)]
    splits = learning.user_splits(prompts, users=54, learn=14, held_out=30, evaluate=4, seed=0)
    assert len(splits) == 54
    for s in splits:
        assert (len(s["learn"]), len(s["held_out"]), len(s["evaluate"])) == (14, 30, 4)
        assert not set(s["learn"]) & set(s["held_out"]) and not set(s["learn"]) & set(s["evaluate"])
        assert not set(s["held_out"]) & set(s["evaluate"])
        assert not (set(s["held_out"]) | set(s["evaluate"])) & learning.USED_BEFORE
    evaluated = {pid for s in splits for pid in s["evaluate"]}
    assert len(evaluated) >= 30  # the clusters of the decoding CIs
    assert len({tuple(s["evaluate"]) for s in splits}) == 54
    assert splits == learning.user_splits(prompts, users=54, learn=14, held_out=30, evaluate=4, seed=0)
    with pytest.raises(SystemExit, match="fresh prompts"):
        learning.user_splits(prompts, users=1, learn=14, held_out=60, evaluate=4, seed=0)


LONG = ("Water the plant when the top of the soil feels dry, give it bright indirect light every day, and feed it "
        "once a month in spring and summer so that it keeps growing strong and green.")
SHORT = "Water it when the soil is dry, and give it light."


def said(text):
    """A decoded answer as the cache keeps it."""
    return {"text": text, "words": len(text.split()), "complete": True, "seconds": 1.0}


def test_decoding_figures_on_planted_answers():
    pytest.importorskip("emoji")
    pytest.importorskip("textstat_rs")

    prompts = {f"p{i}": "How do I keep a plant alive?" for i in range(3)}
    records = [{"dims": ["concise"], "seed": 1, "splits": {"evaluate": ["p0", "p1"]}},
               {"dims": ["simple"], "seed": 2, "splits": {"evaluate": ["p1", "p2"]}}]
    cache = {"plain_eval": {pid: said(LONG) for pid in prompts},
             "plain_again": {"p0": said(SHORT), "p1": said(LONG)},  # p2's A/A answer is missing
             "direct": {name: {pid: said(LONG) for pid in prompts} for name in ("concise", "simple")},
             # the concise user's profile answers short (a strict win on word count, against plain and direct);
             # the simple user's answers the plain text (a draw)
             "decoded": {"concise#1": {pid: {"product@2": said(SHORT)} for pid in ("p0", "p1")},
                         "simple#2": {pid: {"product@2": said(LONG)} for pid in ("p1", "p2")}}}
    out = learning_decoding.decoding_figures(records, prompts, cache, ["product@2"], n_boot=200)
    assert (out["evaluation_prompts"], out["users"]) == (3, 2)
    option = out["options"]["product@2"]
    vs_plain = option["vs_plain"]
    assert vs_plain["win_rate"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert (vs_plain["strict_wins"], vs_plain["strict_losses"], vs_plain["tie"]) == (2, 0, 0.5)
    assert option["vs_direct"]["win_rate"] == pytest.approx(0.75)
    assert option["by_user_type_vs_plain"]["concise"]["win_rate"] == 1.0
    assert option["by_user_type_vs_plain"]["simple"]["win_rate"] == 0.5
    shorter = 1 - len(SHORT.split()) / len(LONG.split())
    assert option["concise_median_shortening"][0] == pytest.approx(shorter, abs=1e-4)
    assert option["done_when"]["short_answers_25_percent_shorter"]
    assert option["done_when"]["strict_wins_at_least_twice_losses"]  # two strict wins, no strict loss
    assert out["direct_vs_plain"]["win_rate"] == 0.5 and out["direct_vs_plain"]["tie"] == 1.0
    assert option["ended_by_itself"] == 1.0
    # A/A: the concise user on p0 (short against long: a win), p1 for both users (the same text: draws)
    aa = out["aa_control"]
    assert (aa["comparisons"], aa["strict_wins"], aa["strict_losses"]) == (3, 1, 0)
    assert aa["win_rate"] == pytest.approx(round((1 + 0.5 + 0.5) / 3, 4))


def test_the_default_option_is_chosen_on_half_the_prompts_and_confirmed_on_the_others():
    pytest.importorskip("emoji")
    pytest.importorskip("textstat_rs")

    prompts = {f"p{i}": "How do I keep a plant alive?" for i in range(3)}
    records = [{"dims": ["concise"], "seed": 1, "splits": {"evaluate": ["p0", "p1", "p2"]}}]
    # product@4 answers short on p0 and p2 (the choosing half: sorted places 0 and 2) and long on p1;
    # product@2 the other way round: the choice sees only p0 and p2, so it takes product@4, and the
    # confirmation (p1 alone) shows a draw, although product@2 would have won there.
    decoded = {"p0": {"product@4": said(SHORT), "product@2": said(LONG)},
               "p1": {"product@4": said(LONG), "product@2": said(SHORT)},
               "p2": {"product@4": said(SHORT), "product@2": said(LONG)}}
    cache = {"plain_eval": {pid: said(LONG) for pid in prompts}, "plain_again": {},
             "direct": {"concise": {pid: said(LONG) for pid in prompts}}, "decoded": {"concise#1": decoded}}
    out = learning_decoding.decoding_figures(records, prompts, cache, ["product@2", "product@4"], n_boot=100)
    selection = out["selection"]
    assert selection["choice_win_rates"] == {"product@2": 0.5, "product@4": 1.0}
    assert selection["chosen"] == "product@4"
    held = selection["confirmation"]["vs_plain"]
    assert (held["comparisons"], held["win_rate"], held["strict_wins"]) == (1, 0.5, 0)
    # Over all prompts product@2 wins on p1 and draws elsewhere.
    assert out["options"]["product@2"]["vs_plain"]["win_rate"] == pytest.approx(2 / 3, abs=1e-4)
