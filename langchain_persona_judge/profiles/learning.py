"""Evidence → profile: pairwise choices, the user's own writing, an explicit description.

Each is one public function; all share the model (never loaded twice) and score through one
:class:`~.scoring.PersonaScorer` per model and basis, batched (one pass per response, a question's prompt read
once for all its responses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProfileError
from ..personas import PersonaRegistry
from .basis import Basis, resolve_basis
from .fitting import L2, WRITING_L2, fit_bradley_terry, writing_weights
from .profile import ModelIdentity, PreferenceProfile, shared_scorer
from .scoring import PersonaScorer, Prompt, resolve_model

DEFAULT_CONTEXT = "Write a short message in your own words."
"""The context a text the user wrote is scored in reply to, when none is given."""


def scorer_for(
    model: Any = None,
    basis: Basis | Sequence[str] | None = None,
    registry: PersonaRegistry | str | Path | None = None,
    features: Sequence[str] = (),
) -> PersonaScorer:
    """The shared scorer of ``basis`` (with whole-answer ``features``) on ``model`` (see
    :func:`~.scoring.resolve_model` for what ``model`` may be); a ``PersonaScorer`` passed as ``model`` is used as
    it is."""
    if isinstance(model, PersonaScorer):
        if basis is not None or features:
            wanted = resolve_basis(basis if basis is not None else list(model.basis.names), registry, features)
            if wanted.identity != model.basis.identity:
                raise ProfileError("model= is a PersonaScorer over another basis than basis= (or features=); pass "
                                   "one of them.")
        return model
    return shared_scorer(resolve_model(model), resolve_basis(basis, registry, features))


def prior_weights(prior: PreferenceProfile | None, scorer: PersonaScorer) -> np.ndarray | None:
    """The weights of ``prior`` (None: none), refused unless it was learned over this scorer's model and basis."""
    if prior is None:
        return None
    prior.check_basis(scorer.basis)
    prior.check_model(scorer.handle)
    return prior.vector


def _comparison(item: Any, number: int) -> tuple[Prompt, str, str]:
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise ProfileError(f"Comparison #{number} is {item!r}; pass (prompt, chosen, rejected) triples.")
    prompt, chosen, rejected = item
    for label, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise ProfileError(f"Comparison #{number}: the {label} answer is empty or not text ({text!r}).")
    if chosen.strip() == rejected.strip():
        raise ProfileError(f"Comparison #{number}: the chosen and rejected answers are the same text; a choice "
                           "needs two different answers.")
    PersonaScorer.conversation(prompt)  # checks the prompt
    return prompt, chosen, rejected


def comparison_features(
    scorer: PersonaScorer, comparisons: Sequence[tuple[Prompt, str, str]]
) -> np.ndarray:
    """``φ(chosen) − φ(rejected)`` of each comparison (rows), the answers to one prompt scored together."""
    by_prompt: dict[str, tuple[Prompt, list[str]]] = {}
    for prompt, chosen, rejected in comparisons:
        key = repr(scorer.conversation(prompt))
        responses = by_prompt.setdefault(key, (prompt, []))[1]
        responses.extend(r for r in (chosen, rejected) if r not in responses)
    features: dict[tuple[str, str], np.ndarray] = {}
    for key, (prompt, responses) in by_prompt.items():
        for response, row in zip(responses, scorer.features(prompt, responses)):
            features[(key, response)] = row
    return np.stack([
        features[(repr(scorer.conversation(p)), c)] - features[(repr(scorer.conversation(p)), r)]
        for p, c, r in comparisons
    ])


def learn_profile(
    comparisons: Iterable[tuple[Prompt, str, str]],
    *,
    model: Any = None,
    basis: Basis | Sequence[str] | None = None,
    registry: PersonaRegistry | str | Path | None = None,
    l2: float = L2,
    prior: PreferenceProfile | None = None,
    description: str | None = None,
    features: Sequence[str] = (),
) -> PreferenceProfile:
    """A profile from pairwise choices: ``(prompt, chosen, rejected)`` triples (a prompt is a question or a
    conversation), fitted by Bradley–Terry on ``φ(chosen) − φ(rejected)`` with an L2 penalty (towards ``prior``'s
    weights when given).

    ``model``: None (the embedded model), an HF id or path, a loaded ``(model, tokenizer)`` pair, or a
    ``ChatPersonaJudge`` (its weights are shared). ``basis``: registry persona names (None: the built-in basis).
    ``features``: whole-answer features fitted beside the personas (``("length",)``: the answer's length).
    """
    checked = [_comparison(item, number) for number, item in enumerate(comparisons, 1)]
    if not checked:
        raise ProfileError("No comparisons were given; pass at least one (prompt, chosen, rejected) triple.")
    scorer = scorer_for(model, basis, registry, features)
    centre = prior_weights(prior, scorer)
    differences = comparison_features(scorer, checked)
    fit = fit_bradley_terry(differences, np.ones(len(checked)), l2=l2, prior=centre)
    evidence = {"comparisons": len(checked), "l2": l2}
    if prior is not None:
        evidence["comparisons"] += int(prior.evidence.get("comparisons", 0))
    return PreferenceProfile(scorer.basis, fit.weights, ModelIdentity.of(scorer.handle),
                             description=description or (prior.description if prior else None),
                             evidence=evidence).bind(scorer.handle)


def _writing(item: Any, number: int) -> tuple[Prompt, str]:
    if isinstance(item, str):
        prompt, text = DEFAULT_CONTEXT, item
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        prompt, text = item
    else:
        raise ProfileError(f"Text #{number} is {item!r}; pass a text, or a (context, text) pair.")
    if not isinstance(text, str) or not text.strip():
        raise ProfileError(f"Text #{number} is empty or not text ({text!r}); pass what the user wrote.")
    PersonaScorer.conversation(prompt)
    return prompt, text


def learn_from_texts(
    texts: Iterable[str | tuple[Prompt, str]],
    *,
    model: Any = None,
    basis: Basis | Sequence[str] | None = None,
    registry: PersonaRegistry | str | Path | None = None,
    l2: float = WRITING_L2,
    description: str | None = None,
    features: Sequence[str] = (),
) -> PreferenceProfile:
    """A profile from text the user wrote: each a text, or a ``(context, text)`` pair (the message it replies
    to; default :data:`DEFAULT_CONTEXT`).

    The weights are those of the log-linear model ``log p_w = log p_0 + Σ_j w_j (log p_j − log p_0) − log Z`` (the
    weighted product that decoding samples from) that best explains the user's tokens, one Newton step from
    ``w = 0``: how much each persona raises the likelihood of the user's writing against the plain reference,
    beyond what it raises for text the plain model would write, scaled by the Fisher information.
    """
    checked = [_writing(item, number) for number, item in enumerate(texts, 1)]
    if not checked:
        raise ProfileError("No texts were given; pass at least one text the user wrote.")
    scorer = scorer_for(model, basis, registry, features)
    k = len(scorer.basis.names)  # the personas' weights; whole-answer features are not learned from writing (0)
    score, fisher, tokens = np.zeros(k), np.zeros((k, k)), 0
    for prompt, text in checked:
        stats = scorer.writing_statistics(prompt, text)
        score += stats.score
        fisher += stats.fisher
        tokens += stats.tokens
    weights = np.concatenate([writing_weights(score, fisher, l2=l2), np.zeros(len(scorer.basis.features))])
    return PreferenceProfile(scorer.basis, weights, ModelIdentity.of(scorer.handle), description=description,
                             evidence={"texts": len(checked), "tokens": tokens, "l2": l2}).bind(scorer.handle)


def profile_from_description(
    description: str,
    *,
    model: Any = None,
    basis: Basis | Sequence[str] | None = None,
    registry: PersonaRegistry | str | Path | None = None,
    features: Sequence[str] = (),
) -> PreferenceProfile:
    """A profile that holds only an explicit description ("I'm a nurse, keep it short"): no learned weights;
    decoding adds the description as a preference. Learn weights later with ``prior=`` this profile."""
    if not isinstance(description, str) or not description.strip():
        raise ProfileError("The description is empty; write what the user wants (e.g. \"keep it short\").")
    scorer = scorer_for(model, basis, registry, features)
    return PreferenceProfile(scorer.basis, np.zeros(len(scorer.basis)), ModelIdentity.of(scorer.handle),
                             description=description, evidence={"description": True}).bind(scorer.handle)


__all__ = [
    "DEFAULT_CONTEXT",
    "comparison_features",
    "learn_from_texts",
    "learn_profile",
    "prior_weights",
    "profile_from_description",
    "scorer_for",
]
