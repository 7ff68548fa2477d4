"""The basis of a profile: registry personas whose implicit rewards a user's weights combine.

The built-in basis is every persona of the registry tagged ``basis``: bipolar dimensions (length, expertise,
friendliness, formality, humour, elicitation, politeness, enthusiasm, confidence, structure), the two poles of a
dimension sharing a ``dimension:NAME`` tag (``prompts/personas.yaml``). Users add their own personas to a registry
(tagging a pair ``dimension:NAME`` makes them poles of one dimension) and pass their names as ``basis=``.

A basis may also carry whole-answer features (``features=("length",)``, :mod:`.features`): their weights follow
the personas' in a profile's weight vector and in a feature vector.

A basis is identified by its names *and* the texts they render to (and its features): a profile learned over one
basis is refused over another, because its weights mean nothing there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProfileError
from ..personas import PersonaRegistry, load_registry
from .features import FEATURES, feature_values

BASIS_TAG = "basis"
"""The registry tag of the built-in basis personas."""
DIMENSION_TAG = "dimension:"
"""The prefix of the tag naming a persona's dimension; the two personas that share one are its poles."""


@dataclass(frozen=True)
class Basis:
    """Named preference texts, in a fixed order (the order of a profile's weights and of a feature vector)."""

    names: tuple[str, ...]
    texts: tuple[str, ...]
    dimensions: tuple[str | None, ...]
    """Each persona's dimension (from its ``dimension:`` tag), None when it has none."""
    features: tuple[str, ...] = ()
    """Whole-answer features (:data:`.features.FEATURES`, e.g. ``length``), after the personas."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ProfileError(f"The basis features {unknown} are unknown; the known ones are {sorted(FEATURES)}.")
        if len(set(self.features)) != len(self.features) or set(self.features) & set(self.names):
            raise ProfileError(f"The basis features {list(self.features)} repeat a feature or a persona's name; "
                               "name each once.")
        if not self.names:
            raise ProfileError("The basis is empty; name at least one persona (or pass basis=None for the built-in).")
        if not (len(self.names) == len(self.texts) == len(self.dimensions)):
            raise ProfileError("A basis needs one text and one dimension (or None) per name.")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ProfileError(f"The basis names {duplicates} more than once; name each persona once.")
        empty = [n for n, t in zip(self.names, self.texts) if not str(t).strip()]
        if empty:
            raise ProfileError(f"The basis personas {empty} have empty texts; give each a preference text.")

    def __len__(self) -> int:
        """How many weights a profile over this basis has: one per persona, then one per feature."""
        return len(self.names) + len(self.features)

    @property
    def labels(self) -> tuple[str, ...]:
        """The personas' names, then the features': one per weight."""
        return self.names + self.features

    @property
    def identity(self) -> str:
        """A digest of the names and texts (and features): equal for the same basis, different for any other."""
        parts: list[list[str]] = [list(self.names), list(self.texts)]
        if self.features:  # a basis without features keeps the digest it had before features existed
            parts.append(list(self.features))
        payload = json.dumps(parts, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(payload).hexdigest()[:16]

    def index(self, name: str) -> int:
        """The position of a persona or a feature in the weight vector."""
        try:
            return self.labels.index(name)
        except ValueError:
            raise ProfileError(f"{name!r} is not in this basis ({', '.join(self.labels)}).") from None

    def is_feature(self, name: str) -> bool:
        return name in self.features

    def text(self, name: str) -> str:
        if self.is_feature(name):
            raise ProfileError(f"{name!r} is a whole-answer feature of the basis, not a persona: it has no text.")
        return self.texts[self.index(name)]

    def feature_values(self, text: str) -> list[float]:
        """The basis features' values for an answer's text (empty for a basis without features)."""
        return feature_values(self.features, text)

    def opposite(self, name: str) -> str | None:
        """The other pole of ``name``'s dimension, when exactly two personas of the basis share it."""
        if self.is_feature(name):
            return None
        dimension = self.dimensions[self.index(name)]
        if dimension is None:
            return None
        poles = [n for n, d in zip(self.names, self.dimensions) if d == dimension]
        if len(poles) != 2:
            return None
        return poles[1] if poles[0] == name else poles[0]

    def pairs(self) -> list[tuple[str, str, str]]:
        """``(dimension, first pole, second pole)`` of every bipolar dimension, in basis order."""
        out = []
        seen: set[str] = set()
        for name, dimension in zip(self.names, self.dimensions):
            other = self.opposite(name)
            if dimension is not None and other is not None and dimension not in seen:
                seen.add(dimension)
                out.append((dimension, name, other))
        return out

    def to_records(self) -> list[dict[str, str | None]]:
        return [{"name": n, "text": t, "dimension": d} for n, t, d in zip(self.names, self.texts, self.dimensions)]


def dimension_of(registry: PersonaRegistry, name: str) -> str | None:
    """The dimension a registry persona's tags name, or None."""
    return next((t[len(DIMENSION_TAG):] for t in registry.tags(name) if t.startswith(DIMENSION_TAG)), None)


def builtin_basis_names(registry: PersonaRegistry | None = None) -> list[str]:
    """The names of the registry's personas tagged ``basis``, in registry order."""
    registry = registry or PersonaRegistry.default()
    return [p.name for p in registry if BASIS_TAG in registry.tags(p.name)]


def resolve_basis(
    basis: Basis | Sequence[str] | None = None,
    registry: PersonaRegistry | str | Path | None = None,
    features: Sequence[str] = (),
) -> Basis:
    """A :class:`Basis` from registry persona names (None: the built-in basis), rendered with ``registry``
    (the built-ins, with a user registry over them), with whole-answer ``features`` (e.g. ``("length",)``; a
    feature's name among ``basis`` counts as one too, so ``basis=list(profile.weights)`` is the profile's basis)."""
    if isinstance(features, str):
        raise ProfileError(f"features={features!r}: pass a list of feature names, e.g. ['length'].")
    if isinstance(basis, Basis):
        if features and tuple(features) != basis.features:
            raise ProfileError(f"features={list(features)} differ from the given basis's {list(basis.features)}; "
                               "pass one of them.")
        return basis
    resolved = load_registry(registry)
    if basis is None:
        names = builtin_basis_names(resolved)
    elif isinstance(basis, str) or not all(isinstance(n, str) for n in basis):
        raise ProfileError(f"basis={basis!r}: pass a list of persona names, e.g. ['concise', 'informative'].")
    else:
        names = list(basis)
    # A feature's name among the names (``basis=list(profile.weights)``) is that feature, unless a persona has it.
    named = [n for n in names if n in FEATURES and n not in resolved]
    names = [n for n in names if n not in named]
    return Basis(
        names=tuple(names),
        texts=tuple(resolved.render(n) for n in names),
        dimensions=tuple(dimension_of(resolved, n) for n in names),
        features=(*features, *(n for n in named if n not in features)),
    )


__all__ = ["BASIS_TAG", "DIMENSION_TAG", "Basis", "builtin_basis_names", "dimension_of", "resolve_basis"]
