"""Preference-adherence metrics, guards and statistics for benchmarks/quality.py.

Definitions follow ../shared/bench/README.md: one offline text metric per preference dimension, a direction
and a margin; pairwise comparisons where A wins when its metric is better by more than the margin (a tie
otherwise); guards that make a degenerate response lose whatever its metric; win rates with 95% bootstrap
confidence intervals resampling prompts (and seeds within a prompt); an A/A control.

Scorers: ``textstat-rs`` (Flesch reading ease, Flesch-Kincaid grade), ``vaderSentiment``, ``emoji`` — all in the
``bench`` extra and imported lazily, so the pure-Python parts here import without them. Stop words: our own
list (below), so no scikit-learn is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

# -- words -------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    """Lower-cased words; a contraction (don't, it's) is one word. Apostrophes are normalised to '."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


# A general English stop-word list (function words, auxiliaries, pronouns, common adverbs).
STOP_WORDS = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also although always am
    among amongst an and another any anyhow anyone anything anyway anywhere are around as at be became because
    become becomes becoming been before beforehand behind being below beside besides between beyond both but by
    can cannot could did do does doing done down during each either else elsewhere enough etc even ever every
    everyone everything everywhere except few for former formerly from further get gets getting go goes going
    got had has have having he hence her here hereafter hereby herein hers herself him himself his how however
    i ie if in indeed instead into is it its itself just keep last latter least less let like made make many
    may me meanwhile might mine more moreover most mostly much must my myself namely neither never nevertheless
    next no nobody none noone nor not nothing now nowhere of off often on once one only onto or other others
    otherwise our ours ourselves out over own per perhaps please put quite rather really same see seem seemed
    seeming seems several she should since so some somehow someone something sometime sometimes somewhere still
    such than that the their theirs them themselves then thence there thereafter thereby therefore therein
    thereupon these they this those though through throughout thru thus to together too toward towards under
    until up upon us very via was we well were what whatever when whence whenever where whereafter whereas
    whereby wherein whereupon wherever whether which while whither who whoever whole whom whose why will with
    within without would yet you your yours yourself yourselves s t d ll m re ve don doesn didn isn aren wasn
    weren hasn haven hadn won wouldn shouldn couldn can't won't don't it's that's i'm you're we're they're
    i've you've we've they've i'll you'll we'll they'll i'd you'd we'd they'd isn't aren't wasn't weren't
    doesn't didn't hasn't haven't hadn't wouldn't shouldn't couldn't let's there's here's what's he's she's
    """.split()
)

FIRST_SECOND_PERSON = frozenset(
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves ya y'all".split()
)
INTERJECTIONS = frozenset(
    """oh ooh ohh wow hey hi hello haha hahaha hehe lol yay woohoo whoa oops ouch yikes ah aha ahh aww ugh hmm
    huh yeah yep yup nope okay ok phew gee golly boom tada voila alright cheers dude wee yo psst uh um""".split()
)
_CONTRACTION_SUFFIXES = ("n't", "'re", "'ve", "'ll", "'d", "'m")
_S_CONTRACTION_STEMS = frozenset(
    "it that what there here let he she who where how when why everything something nothing".split()
)
_SLANG_CONTRACTIONS = frozenset("gonna wanna gotta kinda sorta y'all ain't dunno lemme gimme".split())


def is_contraction(word: str) -> bool:
    if word in _SLANG_CONTRACTIONS or word.endswith(_CONTRACTION_SUFFIXES):
        return True
    return word.endswith("'s") and word[:-2] in _S_CONTRACTION_STEMS


def _stem(word: str) -> str:
    return word.split("'", 1)[0]


# -- metrics -----------------------------------------------------------------------------------------------


def word_count(text: str) -> float:
    return float(len(words(text)))


def informality_rate(text: str) -> float:
    """(contractions + first/second-person pronouns + interjections + '!' + emoji) / words."""
    import emoji

    ws = words(text)
    if not ws:
        return 0.0
    contractions = sum(is_contraction(w) for w in ws)
    pronouns = sum(w in FIRST_SECOND_PERSON or _stem(w) in FIRST_SECOND_PERSON for w in ws)
    interjections = sum(w in INTERJECTIONS or bool(re.fullmatch(r"(ha){2,}h?|(he){2,}|lo+l", w)) for w in ws)
    marks = text.count("!")
    emojis = emoji.emoji_count(text)
    return (contractions + pronouns + interjections + marks + emojis) / len(ws)


def distinct_content_words(text: str) -> float:
    """Distinct non-stop words (lower-cased, alphabetic, 2+ letters)."""
    return float(len({w for w in words(text) if w.isalpha() and len(w) > 1 and w not in STOP_WORDS}))


def _finite(x: float) -> float:
    return float(x) if x is not None and math.isfinite(x) else float("nan")


def flesch_reading_ease(text: str) -> float:
    import textstat_rs

    return _finite(textstat_rs.flesch_reading_ease(text)) if text.strip() else float("nan")


def flesch_kincaid_grade(text: str) -> float:
    import textstat_rs

    return _finite(textstat_rs.flesch_kincaid_grade(text)) if text.strip() else float("nan")


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """Mean VADER compound score over sentences (0 for no sentence)."""
    parts = sentences(text)
    if not parts:
        return 0.0
    analyzer = _vader()
    return float(np.mean([analyzer.polarity_scores(s)["compound"] for s in parts]))


@dataclass(frozen=True)
class Dimension:
    name: str
    psoups: str
    """Key of the preference text in ../shared/reference/preferences.json ("psoups")."""
    metric: str
    score: Callable[[str], float]
    higher_is_better: bool
    margin: float


DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in [
        Dimension("simple", "P1A", "Flesch reading ease", flesch_reading_ease, True, 5.0),
        Dimension("concise", "P2A", "word count", word_count, False, 5.0),
        Dimension("friendly", "P3A", "informality rate", informality_rate, True, 0.01),
        Dimension("expert", "P1B", "Flesch-Kincaid grade", flesch_kincaid_grade, True, 1.0),
        Dimension("informative", "P2B", "distinct non-stop words", distinct_content_words, True, 3.0),
        Dimension("unfriendly", "P3B", "mean VADER compound over sentences", vader_compound, False, 0.05),
    ]
}


# -- guards -----------------------------------------------------------------------------------------------

MIN_WORDS = 5
ECHO_SHARE = 0.5
MIN_DISTINCT_TRIGRAMS = 0.6


def guard_failures(text: str, question: str) -> list[str]:
    """Why ``text`` loses its comparisons regardless of its metric ([] when it passes every guard).

    - ``empty``: empty or under 5 words;
    - ``echo``: most of its words (more than half) are words of the question;
    - ``repetitive``: fewer than 60% of its word trigrams are distinct.
    """
    ws = words(text)
    if len(ws) < MIN_WORDS:
        return ["empty"]
    failures = []
    asked = set(words(question))
    if asked and sum(w in asked for w in ws) / len(ws) > ECHO_SHARE:
        failures.append("echo")
    trigrams = list(zip(ws, ws[1:], ws[2:]))
    if trigrams and len(set(trigrams)) / len(trigrams) < MIN_DISTINCT_TRIGRAMS:
        failures.append("repetitive")
    return failures


# -- comparisons and statistics -----------------------------------------------------------------------------


def compare(a: float, b: float, a_fails: bool, b_fails: bool, dim: Dimension) -> float:
    """A's outcome against B on ``dim``: 1 win, 0.5 tie, 0 loss. A response that fails a guard loses."""
    if a_fails or b_fails:
        return 0.5 if a_fails == b_fails else (0.0 if a_fails else 1.0)
    if math.isnan(a) or math.isnan(b):
        return 0.5 if math.isnan(a) == math.isnan(b) else (0.0 if math.isnan(a) else 1.0)
    diff = (a - b) if dim.higher_is_better else (b - a)
    if diff > dim.margin:
        return 1.0
    if diff < -dim.margin:
        return 0.0
    return 0.5


def outcome_matrix(a: Sequence[tuple[float, bool]], b: Sequence[tuple[float, bool]], dim: Dimension) -> np.ndarray:
    """Outcomes of every seed of A against every seed of B on one prompt: shape (len(a), len(b))."""
    return np.array([[compare(sa, sb, fa, fb, dim) for sb, fb in b] for sa, fa in a], dtype=float)


def aa_matrix(a: Sequence[tuple[float, bool]], dim: Dimension) -> np.ndarray:
    """A/A control on one prompt: seed 2k against seed 2k+1 of the same condition, shape (pairs, 1)."""
    pairs = [(a[i], a[i + 1]) for i in range(0, len(a) - 1, 2)]
    return np.array([[compare(x[0], y[0], x[1], y[1], dim)] for x, y in pairs], dtype=float).reshape(-1, 1)


@dataclass
class WinRate:
    win_rate: float
    ci_low: float
    ci_high: float
    wins: float
    ties: float
    losses: float
    comparisons: int
    prompts: int
    partial: float = 0.0
    """Share of outcomes strictly between 0 and 1 other than a 0.5 tie (e.g. a mean over two dimensions, 0.75):
    neither a win, a tie nor a loss, so ``wins + ties + losses + partial == 1``."""

    @property
    def contains_half(self) -> bool:
        return self.ci_low <= 0.5 <= self.ci_high

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "win_rate": round(self.win_rate, 4),
            "ci95": [round(self.ci_low, 4), round(self.ci_high, 4)],
            "win": round(self.wins, 4),
            "tie": round(self.ties, 4),
            "loss": round(self.losses, 4),
            **({"partial": round(self.partial, 4)} if self.partial else {}),
            "comparisons": self.comparisons,
            "prompts": self.prompts,
        }


def win_rate(matrices: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> WinRate:
    """Win rate (the mean outcome: ``(wins + ties/2) / comparisons`` for 1/0.5/0 outcomes) over per-prompt outcome
    matrices, with a bootstrap CI. ``wins``, ``ties`` and ``losses`` count outcomes of exactly 1, 0.5 and 0; any
    other (fractional) outcome is ``partial``, never a loss.

    Each resample draws prompts with replacement, then, within each drawn prompt, the rows (A's seeds) and
    columns (B's seeds) of its matrix with replacement; the CI is the percentile interval.
    """
    mats = [np.asarray(m, dtype=float) for m in matrices if np.asarray(m).size]
    if not mats:
        return WinRate(float("nan"), float("nan"), float("nan"), 0.0, 0.0, 0.0, 0, 0)
    flat = np.concatenate([m.ravel() for m in mats])
    point = float(flat.mean())
    wins, ties, losses = float((flat == 1).mean()), float((flat == 0.5).mean()), float((flat == 0).mean())
    rng = np.random.default_rng(seed)
    n = len(mats)
    if len({m.shape for m in mats}) == 1:  # the usual case: vectorised
        stacked = np.stack(mats)
        _, sa, sb = stacked.shape
        p_idx = rng.integers(0, n, (n_boot, n))
        rows = rng.integers(0, sa, (n_boot, n, sa))
        cols = rng.integers(0, sb, (n_boot, n, sb))
        stats = stacked[p_idx[:, :, None, None], rows[:, :, :, None], cols[:, :, None, :]].mean(axis=(1, 2, 3))
    else:
        stats = np.empty(n_boot)
        for b in range(n_boot):
            total = count = 0.0
            for p in rng.integers(0, n, n):
                m = mats[p]
                sub = m[np.ix_(rng.integers(0, m.shape[0], m.shape[0]), rng.integers(0, m.shape[1], m.shape[1]))]
                total += sub.sum()
                count += sub.size
            stats[b] = total / count
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return WinRate(point, float(low), float(high), wins, ties, losses, int(flat.size), n,
                   partial=float(((flat != 0) & (flat != 0.5) & (flat != 1)).mean()))


# -- fluency and loops -------------------------------------------------------------------------------------


def answer_nll(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Mean negative log-likelihood (nats per token) of ``answer_ids`` after ``prompt_ids`` under ``model``.

    One forward over prompt + answer; the logits at position ``len(prompt) - 1 + k`` score answer token ``k``.
    ``exp`` of it is the answer's per-token perplexity. NaN for an empty answer.
    """
    import torch

    answer = [int(t) for t in answer_ids]
    if not answer:
        return float("nan")
    prompt = [int(t) for t in prompt_ids]
    ids = torch.tensor([prompt + answer], device=getattr(model, "device", "cpu"))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(answer, device=logp.device)
    return float(-logp.gather(1, target[:, None]).mean())


def repeated_ngram_share(ids: Sequence[Any], n: int = 4) -> float:
    """The loop detector: the share of the sequence's n-grams that already occurred earlier in it.

    Natural text stays near 0 (a few set phrases); an answer that has fallen into a loop approaches 1 (every
    n-gram after the first cycle is a repeat). 0 for a sequence shorter than ``n``.
    """
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[Any, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


LOOP_SHARE = 0.5
"""A window whose repeated 4-gram share (against everything before it) is at least this has fallen into a loop."""


def loop_report(ids: Sequence[Any], n: int = 4, window: int | None = None) -> dict[str, Any]:
    """Loop figures of a token sequence: the repeated n-gram share over it all, over its last ``window`` tokens
    (n-grams seen anywhere earlier count as repeats; default: the last quarter), and whether that tail loops."""
    ids = list(ids)
    window = window or max(n, len(ids) // 4)
    start = max(0, len(ids) - window)
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    seen = set(grams[:start])  # n-grams that start before the tail
    tail_repeats = 0
    tail = grams[start:]
    for g in tail:
        tail_repeats += g in seen
        seen.add(g)
    tail_share = tail_repeats / len(tail) if tail else 0.0
    return {"tokens": len(ids), "repeated_ngram_share": round(repeated_ngram_share(ids, n), 4),
            "tail_tokens": len(ids) - start, "tail_repeated_ngram_share": round(tail_share, 4),
            "looping": tail_share >= LOOP_SHARE, "n": n}
