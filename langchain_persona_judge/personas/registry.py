"""Personas: named, templated preference texts, kept in YAML registries, looked up by name.

:class:`PersonaRegistry` holds the personas of one or more registries (merged, later wins) and answers by name:
a persona, its text rendered along its ``extends`` chain, its variables, tags and ``system`` template. Reading a
registry is :mod:`.parsing`; one persona and its template, :mod:`.persona`; the ``extends`` chains,
:mod:`.validation`; the built-ins with a user registry over them, cached by path, :mod:`.cache`
(:func:`~.cache.load_registry`). No LangChain imports.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import PersonaError
from .clock import MAX_RENDER_SECONDS, shared_clock
from .parsing import Allowance, parse_registry, parse_registry_text, read_registry, registry_files
from .persona import Persona, located, render_persona
from .sandbox import InlineTemplate
from .validation import check_extends, extends_chain, unknown_persona


class PersonaRegistry:
    """Named personas, loaded from YAML files or folders, merged (later wins), looked up by name."""

    def __init__(self, personas: Iterable[Persona] = ()) -> None:
        self._personas: dict[str, Persona] = {}
        for persona in personas:
            self._personas[persona.name] = persona

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> PersonaRegistry:
        """Load a registry file, or every ``*.yaml``/``*.yml`` file of a folder (in name order, later wins)."""
        return cls._from_path(Path(path).expanduser(), Allowance())

    @classmethod
    def _from_path(cls, path: Path, allowance: Allowance) -> PersonaRegistry:
        if path.is_dir():
            files = registry_files(path)
            if not files:
                raise PersonaError(f"{path}: the folder holds no .yaml or .yml persona files.")
            return cls().merge(*(cls._from_path(f, allowance) for f in files))
        if not path.is_file():
            raise PersonaError(f"{path}: persona registry file not found; check the path.")
        registry = cls(parse_registry(read_registry(path, allowance.bytes), str(path), allowance))
        registry.validate()
        return registry

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<string>") -> PersonaRegistry:
        registry = cls(parse_registry_text(text, source))
        registry.validate()
        return registry

    @classmethod
    def default(cls) -> PersonaRegistry:
        """The built-in personas (``prompts/personas.yaml``): the paper's dimensions and the P-Soups ones."""
        return _default_registry()

    def merge(self, *others: PersonaRegistry) -> PersonaRegistry:
        """A new registry: this one, then each of ``others`` over it (a warning for each override)."""
        merged = PersonaRegistry(self._personas.values())
        for other in others:
            for persona in other:
                if persona.name in merged._personas:
                    old = merged._personas[persona.name]
                    warnings.warn(
                        f"persona {persona.name!r} from {persona.source or 'a later registry'} overrides the one "
                        f"from {old.source or 'an earlier registry'}",
                        stacklevel=2,
                    )
                merged._personas[persona.name] = persona
        merged.validate()
        return merged

    def add(self, persona: Persona) -> PersonaRegistry:
        return self.merge(PersonaRegistry([persona]))


    # -- lookup ---------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._personas

    def __iter__(self) -> Iterator[Persona]:
        return iter(self._personas.values())

    def __len__(self) -> int:
        return len(self._personas)

    def names(self) -> list[str]:
        return list(self._personas)


    def get(self, name: str) -> Persona:
        try:
            return self._personas[name]
        except KeyError:
            raise unknown_persona(name, self._personas) from None

    def _chain(self, name: str, missing_ok: bool = False) -> list[Persona]:
        return extends_chain(self._personas, name, missing_ok)

    def validate(self, missing_ok: bool = True) -> None:
        """Check every persona's `extends` chain: no cycles, at most
        :data:`~.validation.MAX_EXTENDS_DEPTH` long, and (unless ``missing_ok``) no missing parents.

        A single file may extend personas defined elsewhere (the built-ins), so loading only checks cycles;
        :func:`~.cache.load_registry` checks parents once the registries are merged.
        """
        check_extends(self._personas, missing_ok)

    def render(self, name: str, /, **variables: Any) -> str:
        """The preference text of ``name`` (positional only, so a template variable may be called ``name`` too),
        with inheritance: parents' variables are defaults, and a
        child's description can include its parent's text as ``{{ parent }}`` (no description: the parent's).
        The templates of the whole chain render within :data:`~.clock.MAX_RENDER_SECONDS` in all."""
        chain = self._chain(name)
        defaults = self.defaults(name)
        text: str | None = None
        with shared_clock(MAX_RENDER_SECONDS):
            for ancestor in reversed(chain):
                if ancestor.description is not None:
                    text = render_persona(ancestor, defaults, variables, parent=text)
        if text is None:
            raise PersonaError(f"persona {name!r} and its parents have no description; write one.")
        return text

    def defaults(self, name: str) -> dict[str, Any]:
        """Default variable values along the `extends` chain (children win)."""
        merged: dict[str, Any] = {}
        for ancestor in reversed(self._chain(name)):
            merged.update(ancestor.variables)
        return merged

    def variables_used(self, name: str) -> set[str]:
        """Every template variable the persona's text uses, its parents' included."""
        return {v for p in self._chain(name) for v in p.required_variables()}

    def system_template(self, name: str) -> str | None:
        """The nearest ``system`` template override along the persona's `extends` chain (template text, never a
        file path; an :class:`~.sandbox.InlineTemplate` naming the persona, for error messages)."""
        persona = next((p for p in self._chain(name) if p.system), None)
        if persona is None or persona.system is None:
            return None
        return InlineTemplate(persona.system, f"{located(persona.source, None)}persona {persona.name!r} `system`")

    def tags(self, name: str) -> list[str]:
        return list(dict.fromkeys(t for p in reversed(self._chain(name)) for t in p.tags))

    # -- output ---------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        """The registry as YAML text that :meth:`from_yaml_text` reads back to an equal registry."""
        entries = [p.model_dump(exclude_none=True, exclude_defaults=True) for p in self]
        for entry, persona in zip(entries, self):
            entry["name"] = persona.name
        return yaml.safe_dump({"personas": entries}, sort_keys=False, allow_unicode=True, width=100)



@lru_cache(maxsize=1)
def _default_registry() -> PersonaRegistry:
    text = resources.files("langchain_persona_judge.prompts").joinpath("personas.yaml").read_text("utf-8")
    return PersonaRegistry.from_yaml_text(text, source="prompts/personas.yaml")


__all__ = ["PersonaRegistry"]
