"""Whole-answer features: what a user may prefer that no per-token implicit reward can express.

A persona's implicit reward ``φ_j`` is a per-token mean, so it cannot see how long an answer is; yet length is the
first attribute in PReF's and AlignX's lists. A basis may therefore carry whole-answer features beside its
personas (``Basis.features``): each maps an answer's text to one number, enters the user's reward ``w · φ`` like a
persona's implicit reward, and is fitted by the same Bradley–Terry model.

``length``: ``log2(words / 100)``, the answer's word count standardised to *doublings from 100 words* (0 at 100
words, +1 at 200, −1 at 50). Words rather than tokens, so that the feature means the same on every model and
tokenizer. Its weight reads as Bradley–Terry log-odds per doubling: ``w = −1`` is a user who picks the answer half
as long, other things equal, with odds ``e : 1``.

Decoding honours it through a constant bias on the end-of-turn token's logit (:func:`eos_bias`): see there why
that constant is the soft-value shift of the KL-regularised optimum under a scale-free prior on the remaining
length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

LENGTH = "length"
LENGTH_REFERENCE_WORDS = 100
"""The word count where the length feature is 0."""
MAX_EOS_BIAS = 8.0
"""The largest end-of-turn logit bias decoding applies (a factor of about 3000 on the odds of stopping)."""


def answer_words(text: str) -> int:
    """The answer's words (whitespace-separated), at least 1."""
    return max(1, len(text.split()))


def length_value(text: str) -> float:
    """``log2(words / 100)``: doublings of the answer's word count from 100 words."""
    return math.log2(answer_words(text) / LENGTH_REFERENCE_WORDS)


FEATURES: dict[str, Callable[[str], float]] = {LENGTH: length_value}
"""The known whole-answer features, by name."""
DESCRIPTIONS: dict[str, str] = {LENGTH: f"log2(words / {LENGTH_REFERENCE_WORDS}): doublings of the answer's length"}


def feature_values(names: tuple[str, ...], text: str) -> list[float]:
    """The value of each named feature for ``text``."""
    return [FEATURES[name](text) for name in names]


def eos_bias(length_weight: float, strength: float = 1.0) -> float:
    """The end-of-turn logit bias that honours a length weight ``w`` when decoding: ``−γ w``, within
    ``±``:data:`MAX_EOS_BIAS`.

    Why this is the principled constant. The user's reward has the term ``w · log2(n / 100)`` (``n`` words); the
    KL-regularised optimum ``π*(y) ∝ π_ref(y) exp(γ r(y))`` (``γ`` the inverse regularisation, 1 for the
    Bradley–Terry reward's own log-odds scale) multiplies the answer's odds by ``(n / 100)^(γ w)``. Token by token,
    the optimum shifts the log-odds of stopping after ``n`` words by the soft value of stopping there rather than
    going on: ``γ w (log2 n − E[log2 N | going on])``, with ``N`` the final length. Under a scale-free prior on how
    much more the model would write (going on, the answer is as likely to double as not: ``E[log2 N/n] ≈ 1``),
    that shift is ``−γ w``, the same at every step: a constant bias on the end-of-turn token. It acts where the
    model already considers stopping (the end of a sentence or a paragraph), so a user who prefers short answers
    gets answers that end sooner, not ones cut mid-sentence.
    """
    if not (math.isfinite(length_weight) and math.isfinite(strength)):
        return 0.0
    return max(-MAX_EOS_BIAS, min(MAX_EOS_BIAS, -strength * length_weight))


__all__ = [
    "DESCRIPTIONS",
    "FEATURES",
    "LENGTH",
    "LENGTH_REFERENCE_WORDS",
    "MAX_EOS_BIAS",
    "answer_words",
    "eos_bias",
    "feature_values",
    "length_value",
]
