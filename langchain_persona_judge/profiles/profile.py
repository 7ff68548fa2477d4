"""PreferenceProfile: a user's weights over a basis of personas, tied to the model that scored them.

A profile is readable (:meth:`~PreferenceProfile.top`, :meth:`~PreferenceProfile.dimensions`), usable on its own
as a reward (:meth:`~PreferenceProfile.reward`: rank candidates, best-of-N) and in decoding
(:meth:`~PreferenceProfile.decoding_plan`, which ``ChatPersonaJudge(profile=...)`` reads), and saved as YAML or
JSON. The file records the format version, the model's fingerprint and the basis (names and texts, with their
digest): a profile learned with another model or over another basis is refused with an error naming both,
never silently misapplied; a corrupted file or non-finite weights is a :class:`~langchain_persona_judge.errors.
ProfileError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import ProfileError
from ..personas import NAME_PATTERN, Persona
from .basis import Basis
from .features import DESCRIPTIONS, LENGTH, eos_bias
from .files import (
    MAX_FILE_BYTES,
    check_description,
    check_evidence,
    check_features,
    check_poles,
    check_text,
    check_weight,
    parse_profile_text,
)
from .scoring import ModelHandle, PersonaScorer, Prompt, model_fingerprint, resolve_model

FORMAT = "persona-judge-profile"
VERSION = 1
"""The file format's version; a file of a later version is refused (upgrade the package)."""
POLES = 3
"""How many of the strongest weights decoding uses by default."""
MIN_SHARE = 0.1
"""A pole weaker than this share of the strongest is left out of decoding."""
STATED_SHARE = 0.5
"""The share of the product weights that stated preferences (the description, explicit ones) get beside learned
poles."""


@dataclass(frozen=True)
class ModelIdentity:
    """The model a profile's features were computed with."""

    name: str | None
    """What loads it (HF id, folder, .gguf); None for the embedded model or one passed in memory."""
    display: str
    fingerprint: str

    @classmethod
    def of(cls, handle: ModelHandle) -> ModelIdentity:
        return cls(handle.name, handle.display, handle.fingerprint)


@dataclass(frozen=True)
class DecodingPlan:
    """What a profile contributes to one decode: the personas, their product weights, and a report."""

    preferences: list[Any]
    """Persona objects (the learned poles, with the profile's texts) and free texts (the stated preferences)."""
    weights: list[float]
    """One weight per preference for ``combine="product"``; negative ones steer away."""
    metadata: dict[str, Any] = field(default_factory=dict)
    eos_bias: float = 0.0
    """The end-of-turn logit bias that honours a learned length weight (:func:`.features.eos_bias`; 0: none)."""
    poles: list[tuple[str, Any]] = field(default_factory=list)
    """``(name, persona)`` of the pole each chosen weight leans to (its persona, or for a negative weight the
    other pole of its dimension; left out when the basis has none): what best-of-N decodes candidates under."""


_scorers: weakref.WeakKeyDictionary[Any, dict[str, PersonaScorer]] = weakref.WeakKeyDictionary()
_scorers_lock = threading.Lock()


def shared_scorer(handle: ModelHandle, basis: Basis) -> PersonaScorer:
    """One scorer per (in-memory model, basis), so every profile over them shares what was already scored."""
    with _scorers_lock:
        per_model = _scorers.setdefault(handle.model, {})
        scorer = per_model.get(basis.identity)
        if scorer is None:
            scorer = per_model[basis.identity] = PersonaScorer(handle, basis)
        return scorer


class PreferenceProfile:
    """Weights over a basis of registry personas, learned for one model.

    Build one with :func:`~langchain_persona_judge.profiles.learn_profile` (choices),
    :func:`~langchain_persona_judge.profiles.learn_from_texts` (the user's writing),
    :func:`~langchain_persona_judge.profiles.profile_from_description`, or a
    :class:`~langchain_persona_judge.profiles.PreferenceLearner`; read one with :meth:`load`.
    """

    def __init__(
        self,
        basis: Basis,
        weights: Sequence[float] | np.ndarray,
        model: ModelIdentity,
        *,
        description: str | None = None,
        evidence: dict[str, Any] | None = None,
        poles: int = POLES,
    ) -> None:
        values = np.asarray(weights, dtype=float).reshape(-1)
        if values.shape != (len(basis),):
            raise ProfileError(f"The profile has {values.size} weights for a basis of {len(basis.names)} personas"
                               + (f" and {len(basis.features)} features." if basis.features else "."))
        if not np.all(np.isfinite(values)):
            bad = [n for n, w in zip(basis.labels, values) if not math.isfinite(w)]
            raise ProfileError(f"The profile's weights are not finite for {bad}; relearn it (or fix the file).")
        if description is not None and not isinstance(description, str):
            raise ProfileError("A profile's description is free text (a str).")
        if not isinstance(poles, int) or isinstance(poles, bool) or poles < 1:
            raise ProfileError(f"poles={poles!r}: pass an integer >= 1 (how many of the strongest weights decode).")
        self.basis = basis
        self._weights = values
        self.model = model
        self.description = description.strip() if description and description.strip() else None
        self.evidence = dict(evidence or {})
        self.poles = poles
        self._handle: ModelHandle | None = None

    # -- reading ----------------------------------------------------------------------------------------

    @property
    def weights(self) -> dict[str, float]:
        """Each basis persona's weight, then each whole-answer feature's (``length``), in basis order."""
        return {n: float(w) for n, w in zip(self.basis.labels, self._weights)}

    @property
    def vector(self) -> np.ndarray:
        """The weights as an array, in basis order (a copy)."""
        return self._weights.copy()

    def top(self, k: int = POLES) -> list[tuple[str, float]]:
        """The ``k`` strongest ``(name, weight)`` pairs by magnitude (a negative weight: away from that persona);
        zero weights are left out. A whole-answer feature (``length``: negative prefers shorter answers) ranks
        with the personas."""
        order = np.argsort(-np.abs(self._weights), kind="stable")
        return [(self.basis.labels[i], float(self._weights[i])) for i in order[:k] if self._weights[i] != 0]

    @property
    def length_weight(self) -> float:
        """The weight of the ``length`` feature (0 when the basis has none): per doubling of the word count."""
        return self.weights.get(LENGTH, 0.0) if LENGTH in self.basis.features else 0.0

    def pole_of(self, name: str, weight: float) -> str:
        """The pole a weight leans to: ``name`` itself when positive, its opposite (or ``not name``) when negative."""
        if weight >= 0:
            return name
        return self.basis.opposite(name) or f"not {name}"

    def dimensions(self) -> list[dict[str, Any]]:
        """One entry per bipolar dimension (``score = w(first) − w(second)``: positive leans to the first pole),
        then one per persona without a pole pair (``score`` its weight), and one per whole-answer feature
        (``feature: True``); strongest first."""
        weights = self.weights
        out = []
        paired: set[str] = set()
        for dimension, first, second in self.basis.pairs():
            paired.update((first, second))
            out.append({"dimension": dimension, "poles": (first, second), "score": weights[first] - weights[second]})
        for name in self.basis.names:
            if name not in paired:
                out.append({"dimension": name, "poles": (name, None), "score": weights[name]})
        for name in self.basis.features:
            out.append({"dimension": name, "poles": (name, None), "score": weights[name], "feature": True})
        return sorted(out, key=lambda entry: -abs(entry["score"]))

    def __repr__(self) -> str:
        top = ", ".join(f"{n}={w:+.3g}" for n, w in self.top())
        extra = f", description={self.description!r}" if self.description else ""
        return f"PreferenceProfile(model={self.model.display!r}, top=[{top}]{extra})"

    def with_description(self, description: str | None) -> PreferenceProfile:
        """A copy with a free-text description (kept beside the weights, added to decoding as a preference)."""
        return self._copy(description=description)

    def with_weights(self, weights: Sequence[float] | np.ndarray, **evidence: Any) -> PreferenceProfile:
        """A copy with other weights (same basis and model), and evidence counts updated."""
        return self._copy(weights=weights, evidence={**self.evidence, **evidence})

    def _copy(self, **changes: Any) -> PreferenceProfile:
        values: dict[str, Any] = {"weights": self._weights, "description": self.description,
                                  "evidence": self.evidence, "poles": self.poles, **changes}
        copy = PreferenceProfile(self.basis, values.pop("weights"), self.model, **values)
        copy._handle = self._handle
        return copy

    # -- the model it is tied to ------------------------------------------------------------------------------

    def check_model(self, model: Any) -> None:
        """Refuse a model other than the one this profile was learned with (a ProfileError naming both)."""
        fingerprint = model.fingerprint if isinstance(model, ModelHandle) else model_fingerprint(model)
        if fingerprint != self.model.fingerprint:
            raise ProfileError(
                f"This profile was learned with the model {self.model.display!r} (fingerprint "
                f"{self.model.fingerprint}), but it is being used with another (fingerprint {fingerprint}); a "
                "profile's weights only mean something for the model that scored them. Learn a profile for this "
                "model (persona-judge learn --model ...), or use the model it was learned with."
            )

    def check_basis(self, basis: Basis) -> None:
        """Refuse another basis (other names, or the same names rendering to other texts)."""
        if basis.identity != self.basis.identity:
            changed = [n for n in basis.names if n in self.basis.names and basis.text(n) != self.basis.text(n)]
            detail = (f"the texts of {changed} differ" if changed else
                      f"its personas are {list(basis.names)}, the profile's {list(self.basis.names)}")
            raise ProfileError(
                f"This profile was learned over another basis ({detail}); its weights do not apply. Learn over "
                "the profile's own basis (basis=list(profile.weights)), or start a new profile."
            )

    def bind(self, model: Any) -> PreferenceProfile:
        """Use this loaded model for :meth:`reward` (checked against the profile's); returns the profile."""
        handle = resolve_model(model)
        self.check_model(handle)
        self._handle = handle
        return self

    def scorer(self) -> PersonaScorer:
        """The scorer of this profile's basis on its model (the bound one, else loaded by name, shared)."""
        if self._handle is None:
            handle = resolve_model(self.model.name)
            self.check_model(handle)
            self._handle = handle
        return shared_scorer(self._handle, self.basis)

    # -- as a reward ------------------------------------------------------------------------------------------

    def rewards(self, prompt: Prompt, responses: Sequence[str]) -> list[float]:
        """``w · φ(prompt, response)`` of each response (one batched pass each, the prompt read once)."""
        features = self.scorer().features(prompt, list(responses))
        return [float(v) for v in features @ self._weights]

    def reward(self, prompt: Prompt, response: str) -> float:
        """``w · φ(prompt, response)``: how much this user should like the response (higher is better)."""
        return self.rewards(prompt, [response])[0]

    def score_answers(self, model: Any, prompt: Prompt, responses: Sequence[str],
                      complete: bool | Sequence[bool] = True) -> list[float]:
        """``w · φ`` of each response, scored on ``model`` (the one that decoded them; checked to be the
        profile's): what best-of-N ranks by. ``complete``: whether each response ended by itself."""
        handle = resolve_model(model)
        self.check_model(handle)
        features = shared_scorer(handle, self.basis).features(prompt, list(responses), complete)
        return [float(v) for v in features @ self._weights]

    def rank(self, prompt: Prompt, responses: Sequence[str]) -> list[tuple[str, float]]:
        """The responses with their rewards, best first (best-of-N: take the first)."""
        scored = zip(responses, self.rewards(prompt, responses))
        return sorted(scored, key=lambda pair: -pair[1])

    # -- in decoding ------------------------------------------------------------------------------------------

    def decoding_plan(self, stated: Sequence[Any] = (), *, strength: float = 1.0) -> DecodingPlan:
        """The personas and product weights that decode with this profile.

        The ``poles`` strongest persona weights (each at least :data:`MIN_SHARE` of the strongest) become personas
        with the profile's own texts, their weights scaled to sum to 1 in magnitude (a negative one steers
        away). Stated preferences (``stated``, then the description) share :data:`STATED_SHARE` of the weight
        equally when there are learned poles, all of it otherwise. A learned ``length`` weight becomes a bias on
        the end-of-turn token (``eos_bias``, :func:`.features.eos_bias`), scaled by ``strength`` (the decode's
        guidance γ: the inverse regularisation of the KL-regularised optimum).
        """
        chosen = [(n, w) for n, w in self.top(len(self.basis)) if not self.basis.is_feature(n)][: self.poles]
        strongest = max((abs(w) for _, w in chosen), default=0.0)
        chosen = [(n, w) for n, w in chosen if abs(w) >= MIN_SHARE * strongest]
        texts = [*stated, *([self.description] if self.description else [])]
        learned_share = (1.0 - STATED_SHARE) if texts and chosen else 1.0
        total = sum(abs(w) for _, w in chosen)
        preferences: list[Any] = []
        weights: list[float] = []
        poles: list[tuple[str, Any]] = []
        for name, weight in chosen:
            preferences.append(self._persona(name))
            weights.append(learned_share * weight / total)
            pole = self.pole_of(name, weight)
            if pole in self.basis.names and pole not in dict(poles):
                poles.append((pole, self._persona(pole)))
        for text in texts:
            preferences.append(text)
            weights.append((1.0 - learned_share if chosen else 1.0) / len(texts))
        metadata = {
            "personas": [{"name": n, "weight": round(w_plan, 4), "learned_weight": round(w, 4)}
                         for (n, w), w_plan in zip(chosen, weights)],
            "stated": [t if isinstance(t, str) else getattr(t, "name", str(t)) for t in texts],
            "model": self.model.display,
            "basis": self.basis.identity,
            "evidence": dict(self.evidence),
        }
        if self.description:
            metadata["description"] = self.description
        bias = eos_bias(self.length_weight, strength)
        if LENGTH in self.basis.features:
            metadata["length"] = {"learned_weight": round(self.length_weight, 4), "eos_bias": round(bias, 4)}
        return DecodingPlan(preferences, weights, metadata, bias, poles)

    def _persona(self, name: str) -> Any:
        """A basis persona as a preference: a Persona with the profile's text (its own text when the name or the
        text cannot make one)."""
        text = self.basis.text(name)
        return Persona(name=name, description=text) if NAME_PATTERN.match(name) and "{" not in text else text

    # -- files --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {"name": self.model.name, "display": self.model.display, "fingerprint": self.model.fingerprint},
            "basis": {
                "id": self.basis.identity,
                "personas": [{**record, "weight": float(w)} for record, w in zip(self.basis.to_records(),
                                                                                  self._weights)],
                **({"features": [
                    {"name": n, "definition": DESCRIPTIONS[n], "weight": float(w)}
                    for n, w in zip(self.basis.features, self._weights[len(self.basis.names):])
                ]} if self.basis.features else {}),
            },
            "description": self.description,
            "poles": self.poles,
            "evidence": self.evidence,
        }

    def save(self, path: str | Path) -> Path:
        """Write the profile: JSON for a ``.json`` path, else YAML. Returns the path."""
        path = Path(path).expanduser()
        data = self.to_dict()
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        else:
            text = "# A persona-judge preference profile (langchain_persona_judge.profiles).\n" + yaml.safe_dump(
                data, sort_keys=False, allow_unicode=True, width=110)
        # Atomically: a temporary file beside it, then renamed over it, so that an interrupted save (Ctrl-C, a
        # full disk) leaves the previous profile whole rather than half a file.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ProfileError(f"{path}: cannot write the profile ({exc.strerror or exc}).") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> PreferenceProfile:
        """Read a saved profile (YAML or JSON); any problem is a ProfileError naming the file."""
        path = Path(path).expanduser()
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ProfileError(f"{path}: {size} bytes is too large for a profile (at most {MAX_FILE_BYTES}).")
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ProfileError(f"{path}: profile file not found; check the path (persona-judge learn writes one).") \
                from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: cannot read the profile as UTF-8 text ({exc}).") from exc
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, *, source: str = "<profile>") -> PreferenceProfile:
        """A profile from a file's text (YAML or JSON) that may come from anyone: size, nesting and every field
        bounded (:mod:`.files`); any problem is a ProfileError naming ``source`` and the field."""
        return cls.from_dict(parse_profile_text(text, source), source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<profile>") -> PreferenceProfile:
        """A profile from :meth:`to_dict`'s data, every field checked."""

        def fail(problem: str) -> ProfileError:
            return ProfileError(f"{source}: {problem}")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise fail(f"not a preference profile (no `format: {FORMAT}`); the file is corrupted or another kind.")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise fail(f"`version` is {version!r}; the file is corrupted.")
        if version > VERSION:
            raise fail(f"profile format version {version} is newer than this package reads ({VERSION}); upgrade "
                       "langchain-persona-judge.")
        model = data.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str) or not isinstance(
                model.get("display"), str) or not isinstance(model.get("name"), (str, type(None))):
            raise fail("`model` must hold `name`, `display` and `fingerprint`; the file is corrupted.")
        for key in ("name", "display", "fingerprint"):
            check_text(model[key], f"model.{key}", fail, optional=key == "name")
        basis = data.get("basis")
        records = basis.get("personas") if isinstance(basis, dict) else None
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise fail("`basis.personas` must be a non-empty list of {name, text, dimension, weight}.")
        try:
            names = tuple(str(r["name"]) for r in records)
            texts = tuple(str(r["text"]) for r in records)
            dimensions = tuple(None if r.get("dimension") is None else str(r["dimension"]) for r in records)
            raw = [r["weight"] for r in records]
        except KeyError as exc:
            raise fail(f"a basis persona has no {exc.args[0]!r}; the file is corrupted.") from None
        for text in texts:
            check_text(text, "basis.personas[].text", fail)
        raw = [check_weight(n[:40], w, fail) for n, w in zip(names, raw)]
        features, feature_weights = check_features(basis.get("features"), fail)
        raw += feature_weights
        try:
            resolved = Basis(names, texts, dimensions, features)
        except ProfileError as exc:
            raise fail(str(exc)) from None
        if basis.get("id") != resolved.identity:
            raise fail("the basis digest does not match its personas' texts: the file was edited or is corrupted; "
                       "relearn the profile.")
        description = check_description(data.get("description"), fail)
        evidence = check_evidence(data.get("evidence"), fail)
        poles = check_poles(data.get("poles", POLES), fail)
        try:
            return cls(resolved, raw, ModelIdentity(model["name"], model["display"], model["fingerprint"]),
                       description=description, evidence=evidence, poles=poles)
        except ProfileError as exc:
            raise fail(str(exc)) from None


def as_profile(value: Any) -> PreferenceProfile:
    """A profile object, or the one saved at a path."""
    if isinstance(value, PreferenceProfile):
        return value
    if isinstance(value, (str, Path)):
        return PreferenceProfile.load(value)
    raise ProfileError(f"profile={type(value).__name__}: pass a PreferenceProfile or the path of a saved one.")


__all__ = [
    "FORMAT",
    "MIN_SHARE",
    "POLES",
    "STATED_SHARE",
    "VERSION",
    "DecodingPlan",
    "ModelIdentity",
    "PreferenceProfile",
    "as_profile",
    "shared_scorer",
]
