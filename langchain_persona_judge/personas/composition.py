"""From the user's preferences to the persona prompts the engine decodes with.

A preference is a persona name, a ``Persona``, a ``(name, {variables})`` pair, or free text. A string that
looks like a name (one word: letters, digits, ``-``, ``_``) must be a known persona, so a typo fails loudly
instead of being sent to the model as a one-word preference.

Composition strategies for N preferences:
- ``split`` (default): each preference is its own persona; roles rotate among them.
- ``pair``: the paper's: the preferences are divided into two groups (the first ceil(N/2), then the rest),
  each group's texts joined into one persona's prompt.
- ``all``: one persona that sees every preference: the direct-prompt baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..errors import PersonaError
from .persona import NAME_PATTERN, Persona
from .registry import PersonaRegistry

Strategy = Literal["split", "pair", "all"]
STRATEGIES: tuple[str, ...] = ("split", "pair", "all")
PreferenceSpec = Union[str, Persona, tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class ResolvedPreference:
    """One preference, rendered."""

    text: str
    name: str | None = None
    """The persona's name, None for free text."""
    system_template: str | None = None
    """The persona's own system-turn template (its text, never a file path), if it has one."""


@dataclass(frozen=True)
class PersonaPrompt:
    """What one persona of the decoder is told."""

    preferences: list[str]
    names: list[str | None] = field(default_factory=list)
    system_template: str | None = None


def resolve_preference(spec: Any, registry: PersonaRegistry) -> ResolvedPreference:
    """Render one preference spec against ``registry``."""
    if isinstance(spec, Persona):
        # The object given wins over a same-named registry entry (no override warning: it is explicit).
        merged = PersonaRegistry([*registry, spec])
        return ResolvedPreference(merged.render(spec.name), spec.name, merged.system_template(spec.name))
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], Mapping):
            raise PersonaError(
                f"Preference {spec!r} is not a (name, {{variables}}) pair; write e.g. ('expert', {{'field': 'biology'}})."
            )
        name, variables = spec
        return ResolvedPreference(registry.render(name, **dict(variables)), name, registry.system_template(name))
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise PersonaError("A preference is empty; write the preference text or a persona name.")
        if NAME_PATTERN.fullmatch(text):
            return ResolvedPreference(registry.render(text), text, registry.system_template(text))
        return ResolvedPreference(text)
    raise PersonaError(
        f"Preference {spec!r} has type {type(spec).__name__}; pass a persona name, free text, a Persona, "
        "or a (name, {variables}) pair."
    )


def compose(preferences: Sequence[ResolvedPreference], strategy: str = "split") -> list[PersonaPrompt]:
    """Group resolved preferences into persona prompts by ``strategy``; no preferences: one plain persona."""
    if strategy not in STRATEGIES:
        raise PersonaError(f"composition={strategy!r} is unknown; use one of {', '.join(STRATEGIES)}.")
    if not preferences:
        return [PersonaPrompt([])]
    if strategy == "split" or len(preferences) == 1:
        groups = [[p] for p in preferences]
    elif strategy == "pair":
        half = (len(preferences) + 1) // 2
        groups = [list(preferences[:half]), list(preferences[half:])]
    else:
        groups = [list(preferences)]
    return [
        PersonaPrompt(
            [p.text for p in group],
            [p.name for p in group],
            # A persona's own system template applies when it is alone in its prompt.
            group[0].system_template if len(group) == 1 else None,
        )
        for group in groups
    ]
