"""Preference profiles: a user's preferences learned from a few choices or their own writing, training-free.

Layer between the LangChain adapters and the runtime: it scores with the model (through
:mod:`~langchain_persona_judge.runtime`) and reads personas; ``ChatPersonaJudge(profile=...)`` decodes with a
profile. No LangChain here.

Each basis persona ``j`` (a registry persona: bipolar dimensions such as concise/informative) has an implicit
reward computed by the same model, ``φ_j(x, y) = mean_t [log p(y_t | x, persona_j, y_<t) − log p(y_t | x,
y_<t)]``; a user's reward is ``w · φ`` (PReF's factorisation, Shenfeld et al. 2025, with the personas' implicit
rewards as the base functions), and their weights ``w`` are learned from evidence. A basis may also carry
whole-answer features that no per-token reward can express (``features=("length",)``: the answer's length),
fitted beside the personas by the same model:

=============  ===========================================================================================
``basis``      the basis: registry personas tagged ``basis``, poles of one dimension sharing a tag
``features``   whole-answer features (``length``: doublings of the word count) and how decoding honours them
``scoring``    :class:`PersonaScorer`: φ batched (K+1 rows per response), the model's fingerprint
``fitting``    Bradley–Terry with L2 (scipy), the Hessian's uncertainty ``dᵀ H⁻¹ d``, the writing step
``profile``    :class:`PreferenceProfile`: weights, reward, decoding plan, YAML/JSON files, version checks
``learning``   evidence → profile: :func:`learn_profile` (choices), :func:`learn_from_texts` (writing),
               :func:`profile_from_description` (a stated preference, kept as free text)
``active``     :class:`PreferenceLearner`: PReF's active questions, candidates decoded under contrasting poles
=============  ===========================================================================================
"""

from __future__ import annotations

from ..errors import ProfileError
from .active import DEFAULT_PROMPTS, Candidate, PreferenceLearner, Question, parse_choice
from .basis import BASIS_TAG, DIMENSION_TAG, Basis, builtin_basis_names, resolve_basis
from .features import FEATURES, LENGTH
from .fitting import L2, Fit, fit_bradley_terry, information, most_informative, writing_weights
from .learning import DEFAULT_CONTEXT, comparison_features, learn_from_texts, learn_profile, profile_from_description
from .profile import FORMAT, VERSION, DecodingPlan, ModelIdentity, PreferenceProfile, as_profile
from .scoring import ModelHandle, PersonaScorer, WritingStatistics, model_fingerprint, resolve_model

__all__ = [
    "BASIS_TAG",
    "DEFAULT_CONTEXT",
    "DEFAULT_PROMPTS",
    "DIMENSION_TAG",
    "FEATURES",
    "FORMAT",
    "L2",
    "LENGTH",
    "VERSION",
    "Basis",
    "Candidate",
    "DecodingPlan",
    "Fit",
    "ModelHandle",
    "ModelIdentity",
    "PersonaScorer",
    "PreferenceLearner",
    "PreferenceProfile",
    "ProfileError",
    "Question",
    "WritingStatistics",
    "as_profile",
    "builtin_basis_names",
    "comparison_features",
    "fit_bradley_terry",
    "information",
    "learn_from_texts",
    "learn_profile",
    "model_fingerprint",
    "most_informative",
    "parse_choice",
    "profile_from_description",
    "resolve_basis",
    "resolve_model",
    "writing_weights",
]
