"""Personas: named, templated preference texts, kept in YAML registries.

A registry file looks like this (see ``prompts/personas.yaml`` for the built-ins)::

    personas:
      - name: expert
        description: Generate a response that only a PhD student in {{ field }} could understand.
        variables: {field: that specific field}
        tags: [psoups, expertise]
      - name: biologist
        extends: expert
        variables: {field: biology}

Templates render in jinja2's immutable sandbox with ``StrictUndefined``; YAML loads with ``safe_load``.
Every problem with a registry raises :class:`~langchain_persona_judge.errors.PersonaError` naming the file, the line, the persona, the problem
and the fix. No LangChain imports.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import PersonaError, UnknownPersonaError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
VariableValue = str | int | float | bool

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def _where(source: str | None, line: int | None) -> str:
    if source is None:
        return ""
    return f"{source}:{line}: " if line else f"{source}: "


class Persona(BaseModel):
    """One preference: a name and a Jinja template for its text, with optional variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Identifier used in ``preferences=[...]`` and ``-p NAME`` (letters, digits, ``-``, ``_``)."""
    description: str | None = None
    """The preference text, a Jinja template (may use ``{{ parent }}`` when the persona extends another)."""
    variables: dict[str, VariableValue] = Field(default_factory=dict)
    """Default values of the template's variables."""
    system: str | None = None
    """A template for the whole system turn (receives ``system`` and ``preferences``), replacing the default."""
    extends: str | None = None
    """Name of a persona to inherit from and refine."""
    tags: list[str] = Field(default_factory=list)
    """Free labels (dimension, source...) for listing and filtering."""
    source: str | None = Field(default=None, exclude=True, repr=False)
    """Where the persona was defined (file:line), for error messages."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"persona name {value!r} must start with a letter and hold only letters, digits, '-' and '_'"
            )
        return value

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; write the preference text (it is what the model is told)")
        return value

    def required_variables(self) -> set[str]:
        """Variables the description uses (``parent`` excluded)."""
        return _template_variables(self.description or "", self.name, self.source) - {"parent"}

    def render(self, **variables: Any) -> str:
        """The preference text with ``variables`` (over the defaults). Ignores ``extends``: use the registry."""
        return _render(self, {}, variables, parent=None)


@lru_cache(maxsize=512)
def _parse(template: str) -> Any:
    return _ENV.parse(template)


def _template_variables(template: str, name: str, source: str | None) -> set[str]:
    try:
        return set(meta.find_undeclared_variables(_parse(template)))
    except TemplateSyntaxError as exc:
        raise PersonaError(
            f"{_where(source, None)}persona {name!r}: template syntax error on its line {exc.lineno}: {str(exc.message).rstrip('.')}. "
            "Fix the Jinja syntax ({{ variable }}, {% if %}...{% endif %})."
        ) from exc


def _render(persona: Persona, defaults: Mapping[str, Any], variables: Mapping[str, Any], parent: str | None) -> str:
    template = persona.description
    if template is None:
        raise PersonaError(f"{_where(persona.source, None)}persona {persona.name!r} has no description; write one.")
    # ``defaults`` (the registry's merged chain, children winning) outrank the persona's own defaults.
    values = {**persona.variables, **defaults, **variables}
    if parent is not None:
        values["parent"] = parent
    missing = sorted(persona.required_variables() - set(values) - ({"parent"} if parent is not None else set()))
    if "parent" in _template_variables(template, persona.name, persona.source) and parent is None:
        missing.append("parent")
    if missing:
        example = ", ".join(f"{m!r}: ..." for m in missing)
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r} needs the variable(s) {', '.join(missing)}: "
            f"pass them, e.g. ({persona.name!r}, {{{example}}}), or give defaults under `variables:`."
        )
    try:
        text = _ENV.from_string(template).render(**values).strip()
    except SecurityError as exc:
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r}: the template tried an unsafe operation ({exc}); "
            "templates may only use variables, filters and plain expressions."
        ) from exc
    except (UndefinedError, TemplateError) as exc:
        raise PersonaError(f"{_where(persona.source, None)}persona {persona.name!r}: template failed: {exc}.") from exc
    if not text:
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r} renders to empty text; give it a description."
        )
    return text


def _line_of_items(text: str) -> list[int]:
    """1-based line of each item of the top-level ``personas`` list (for error messages)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "personas" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "persona"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a persona field (fields: name, description, variables, system, extends, tags)"
        parts.append(f"`{field}` {message}")
    return "; ".join(parts)


def parse_registry_text(text: str, source: str = "<string>") -> list[Persona]:
    """Parse YAML registry text into personas (in file order), with precise errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PersonaError(f"{_where(source, line)}invalid YAML: {problem}. Fix the YAML syntax.") from exc
    if data is None:
        return []
    if isinstance(data, list):
        data = {"personas": data}
    if not isinstance(data, dict) or not isinstance(data.get("personas"), list):
        raise PersonaError(
            f"{_where(source, 1)}a persona registry is a mapping with a `personas:` list of entries "
            "(each with `name:` and `description:`); see examples/personas.yaml."
        )
    unknown_top = sorted(str(k) for k in data if k != "personas")
    if unknown_top:
        raise PersonaError(f"{_where(source, 1)}unknown top-level key(s) {unknown_top}; only `personas:` is read.")
    lines = _line_of_items(text)
    personas: list[Persona] = []
    seen: dict[str, int | None] = {}
    for index, entry in enumerate(data["personas"]):
        line = lines[index] if index < len(lines) else None
        where = _where(source, line)
        if not isinstance(entry, dict):
            raise PersonaError(
                f"{where}persona entry #{index + 1} is a {type(entry).__name__}; write a mapping with "
                "`name:` and `description:`."
            )
        label = repr(entry.get("name")) if isinstance(entry.get("name"), str) else f"#{index + 1}"
        try:
            persona = Persona(**entry, source=f"{source}:{line}" if line else source)
        except ValidationError as exc:
            raise PersonaError(f"{where}persona {label}: {_format_validation(exc)}.") from exc
        except TypeError as exc:  # non-string keys
            raise PersonaError(f"{where}persona {label}: {exc}.") from exc
        if persona.name in seen:
            raise PersonaError(
                f"{where}persona {persona.name!r} is defined twice in this file (first on line {seen[persona.name]}); "
                "rename or remove one."
            )
        if persona.description is None and persona.extends is None:
            raise PersonaError(
                f"{where}persona {persona.name!r} has no description; write the preference text under `description:`."
            )
        for variable in (persona.description, persona.system):
            if variable is not None:
                _template_variables(variable, persona.name, persona.source)
        seen[persona.name] = line
        personas.append(persona)
    return personas


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
        path = Path(path).expanduser()
        if path.is_dir():
            files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not files:
                raise PersonaError(f"{path}: the folder holds no .yaml or .yml persona files.")
            return cls().merge(*(cls.from_yaml(f) for f in files))
        if not path.is_file():
            raise PersonaError(f"{path}: persona registry file not found; check the path.")
        registry = cls(parse_registry_text(path.read_text("utf-8"), source=str(path)))
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
            close = difflib.get_close_matches(name, self._personas, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownPersonaError(
                f"Unknown persona {name!r}.{hint} Known personas: {', '.join(sorted(self._personas)) or 'none'}; "
                "add it to a registry file (registry=...) or pass the preference as free text."
            ) from None

    def _chain(self, name: str, missing_ok: bool = False) -> list[Persona]:
        """The persona and its ancestors, nearest first; a cycle (or, unless ``missing_ok``, a missing parent)
        is an error."""
        chain: list[Persona] = []
        current: str | None = name
        while current is not None:
            if any(p.name == current for p in chain):
                cycle = " -> ".join([*(p.name for p in chain), current])
                raise PersonaError(
                    f"{_where(chain[0].source, None)}persona {name!r} has cyclic `extends`: {cycle}; break the cycle."
                )
            try:
                persona = self.get(current)
            except UnknownPersonaError as exc:
                if not chain:
                    raise
                if missing_ok:
                    return chain
                child = chain[-1]
                raise PersonaError(
                    f"{_where(child.source, None)}persona {child.name!r} extends {current!r}, which is not defined. "
                    f"{exc}"
                ) from None
            chain.append(persona)
            current = persona.extends
        return chain

    def validate(self, missing_ok: bool = True) -> None:
        """Check every persona's `extends` chain: no cycles, and (unless ``missing_ok``) no missing parents.

        A single file may extend personas defined elsewhere (the built-ins), so loading only checks cycles;
        :func:`load_registry` checks parents once the registries are merged.
        """
        for name in self._personas:
            self._chain(name, missing_ok=missing_ok)

    def render(self, name: str, **variables: Any) -> str:
        """The preference text of ``name``, with inheritance: parents' variables are defaults, and a
        child's description can include its parent's text as ``{{ parent }}`` (no description: the parent's)."""
        chain = self._chain(name)
        defaults = self.defaults(name)
        text: str | None = None
        for ancestor in reversed(chain):
            if ancestor.description is not None:
                text = _render(ancestor, defaults, variables, parent=text)
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
        """The nearest ``system`` template override along the persona's `extends` chain."""
        return next((p.system for p in self._chain(name) if p.system), None)

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


def load_registry(registry: PersonaRegistry | str | Path | None) -> PersonaRegistry:
    """The built-ins, with a user registry (object or YAML path) over them."""
    base = PersonaRegistry.default()
    if registry is None:
        return base
    if isinstance(registry, PersonaRegistry):
        user = registry
    else:
        user = PersonaRegistry.from_yaml(registry)
    with warnings.catch_warnings():
        # Overriding a built-in on purpose is normal for a user registry.
        warnings.simplefilter("ignore")
        merged = base.merge(user)
    merged.validate(missing_ok=False)
    return merged
