"""The ``extends`` chains of a set of personas: walked nearest first, and checked for cycles, length and
missing parents (:data:`MAX_EXTENDS_DEPTH`). Every problem is a
:class:`~langchain_persona_judge.errors.PersonaError` naming the persona and the fix; a name the set does not
hold is an :class:`~langchain_persona_judge.errors.UnknownPersonaError` suggesting the close ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from ..errors import PersonaError, UnknownPersonaError
from .persona import Persona, located

MAX_EXTENDS_DEPTH = 16
"""Personas in one ``extends`` chain (the persona itself included)."""


def unknown_persona(name: str, known: Iterable[str]) -> UnknownPersonaError:
    """The error for ``name``, which ``known`` does not hold: the close names, every name, and the fix."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownPersonaError(
        f"Unknown persona {name!r}.{hint} Known personas: {', '.join(sorted(known)) or 'none'}; "
        "add it to a registry file (registry=...) or pass the preference as free text."
    )


def extends_chain(personas: Mapping[str, Persona], name: str, missing_ok: bool = False) -> list[Persona]:
    """The persona and its ancestors, nearest first; a cycle, a chain longer than :data:`MAX_EXTENDS_DEPTH` or
    (unless ``missing_ok``) a missing parent is an error."""
    chain: list[Persona] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            cycle = " -> ".join([*(p.name for p in chain), current])
            raise PersonaError(
                f"{located(chain[0].source, None)}persona {name!r} has cyclic `extends`: {cycle}; break the cycle."
            )
        persona = personas.get(current)
        if persona is None:
            exc = unknown_persona(current, personas)
            if not chain:
                raise exc
            if missing_ok:
                return chain
            child = chain[-1]
            raise PersonaError(
                f"{located(child.source, None)}persona {child.name!r} extends {current!r}, which is not defined. "
                f"{exc}"
            )
        if len(chain) == MAX_EXTENDS_DEPTH:
            _too_deep(chain[0], [*chain, persona])
        chain.append(persona)
        seen.add(current)
        current = persona.extends
    return chain


def _too_deep(persona: Persona, chain: list[Persona]) -> None:
    names = " -> ".join(p.name for p in chain[:4])
    raise PersonaError(
        f"{located(persona.source, None)}persona {persona.name!r} extends a chain of more than "
        f"{MAX_EXTENDS_DEPTH} personas ({names} -> ...); shorten the chain."
    )


def check_extends(personas: Mapping[str, Persona], missing_ok: bool = True) -> None:
    """Check every persona's `extends` chain: no cycles, at most :data:`MAX_EXTENDS_DEPTH` long, and (unless
    ``missing_ok``) no missing parents. Linear in the number of personas: each chain is walked only up to a
    persona already checked.
    """
    depth: dict[str, int] = {}  # a checked persona -> the length of its chain
    for name in personas:
        path: list[Persona] = []
        on_path: set[str] = set()
        current: str | None = name
        while current is not None and current not in depth:
            persona = personas.get(current)
            if persona is None:  # a parent defined elsewhere
                if not missing_ok:
                    extends_chain(personas, name)  # raises, naming the missing parent
                current = None
                break
            if current in on_path or len(path) == MAX_EXTENDS_DEPTH:
                extends_chain(personas, name, missing_ok=missing_ok)  # raises: a cycle, or a chain too long
            on_path.add(current)
            path.append(persona)
            current = persona.extends
        base = depth[current] if current is not None else 0
        for offset, persona in enumerate(reversed(path)):
            depth[persona.name] = base + offset + 1
            if depth[persona.name] > MAX_EXTENDS_DEPTH:
                extends_chain(personas, persona.name, missing_ok=True)  # raises: the chain is too long


__all__ = ["MAX_EXTENDS_DEPTH", "check_extends", "extends_chain", "unknown_persona"]
