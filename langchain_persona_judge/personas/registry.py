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

A registry is untrusted input (registries are shared between people). Its fields are always inline text,
never file paths. YAML loads with the safe loader; a registry holds at most :data:`MAX_REGISTRY_BYTES`,
:data:`MAX_PERSONAS` personas and :data:`MAX_TEMPLATE_CHARS` characters of Jinja templates; an
``extends`` chain is at most :data:`MAX_EXTENDS_DEPTH` personas long. Templates render in the hardened sandbox
of :mod:`.sandbox` (bounded source, work, memory and output: a persona's text is at most
:data:`~.sandbox.MAX_TEXT` characters). Every problem with a registry, hostile or not, raises
:class:`~langchain_persona_judge.errors.PersonaError` naming the file, the line, the persona, the problem and the
fix. No LangChain imports.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jinja2 import TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import PersonaError, UnknownPersonaError
from .sandbox import (
    MAX_SOURCE,
    MAX_TEXT,
    InlineTemplate,
    compile_template,
    describe_error,
    is_refusal,
    parse_template,
    render_template,
    template_line,
)

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
"""A persona name, matched whole (``fullmatch``: a ``$`` anchor would let a trailing newline through)."""
VariableValue = str | int | float | bool

_NEWLINES = re.compile(r"\r\n|\r|\n")

MAX_REGISTRY_BYTES = 1_000_000
"""Bytes of a registry (a file, or the files of a folder together)."""
MAX_PERSONAS = 1_000
"""Personas in a registry (a file, or the files of a folder together)."""
MAX_TEMPLATE_CHARS = 50_000
"""Characters of Jinja templates (texts with a ``{``; plain text does not count) in a registry (a file, or the
files of a folder together): parsing them all takes well under a second."""
MAX_EXTENDS_DEPTH = 16
"""Personas in one ``extends`` chain (the persona itself included)."""
_CACHED_REGISTRIES = 16
"""Registries loaded from a path that :func:`load_registry` keeps (by path, modification time and size)."""


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
    """A template for the whole system turn (receives ``system`` and ``preferences``), replacing the default.
    Always the template text itself, never a file path."""
    extends: str | None = None
    """Name of a persona to inherit from and refine."""
    tags: list[str] = Field(default_factory=list)
    """Free labels (dimension, source...) for listing and filtering."""
    source: str | None = Field(default=None, exclude=True, repr=False)
    """Where the persona was defined (file:line), for error messages."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise PersonaError(
                f"persona name {value!r} must start with a letter and hold only letters, digits, '-' and '_'"
            )
        return value

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise PersonaError("is empty; write the preference text (it is what the model is told)")
        return value

    def required_variables(self) -> set[str]:
        """Variables the description uses (``parent`` excluded)."""
        return _template_variables(self.description or "", self.name, self.source) - {"parent"}

    def render(self, **variables: Any) -> str:
        """The preference text with ``variables`` (over the defaults). Ignores ``extends``: use the registry."""
        return _render(self, {}, variables, parent=None)


_LIMITS_HINT = (
    "A persona template may use variables, filters, `if`, `for` and `set`, within the limits listed in "
    "langchain_persona_judge/personas/sandbox.py."
)


def _plain(template: str) -> bool:
    """Whether ``template`` is plain text (no Jinja syntax can start without a ``{``): no need to parse it."""
    return "{" not in template and len(template) <= MAX_SOURCE


@lru_cache(maxsize=1024)
def _undeclared(template: str) -> frozenset[str]:
    if _plain(template):
        return frozenset()
    return frozenset(meta.find_undeclared_variables(parse_template(template)))


def _template_problem(exc: BaseException) -> str:
    """``template ... on its line N: what`` for an error raised parsing or rendering a persona's template."""
    line = template_line(exc)
    at = f" on its line {line}" if line else ""
    if isinstance(exc, TemplateSyntaxError):
        kind = "template refused" if is_refusal(exc) else "template syntax error"
        return f"{kind}{at}: {describe_error(exc)}"
    kind = "template refused" if is_refusal(exc) else "template failed"
    return f"{kind}{at}: {describe_error(exc)}"


def _check_template(template: str, name: str, source: str | None, field: str) -> None:
    """Parse ``template`` (syntax, and the sandbox's parse-time limits), as loading does."""
    if not _plain(template):
        _template_variables(template, name, source, field, analyse=False)


def _template_variables(
    template: str, name: str, source: str | None, field: str = "description", analyse: bool = True
) -> set[str]:
    try:
        if not analyse:
            parse_template(template)
            return set()
        return set(_undeclared(template))
    except Exception as exc:  # a hostile template must fail as a PersonaError, whatever it raises
        where = f"`{field}` " if field != "description" else ""
        fix = _LIMITS_HINT if is_refusal(exc) else "Fix the Jinja syntax ({{ variable }}, {% if %}...{% endif %})."
        raise PersonaError(f"{_where(source, None)}persona {name!r}: {where}{_template_problem(exc)}. {fix}") from exc


def _render(persona: Persona, defaults: Mapping[str, Any], variables: Mapping[str, Any], parent: str | None) -> str:
    template = persona.description
    if template is None:
        raise PersonaError(f"{_where(persona.source, None)}persona {persona.name!r} has no description; write one.")
    # ``defaults`` (the registry's merged chain, children winning) outrank the persona's own defaults.
    values = {**persona.variables, **defaults, **variables}
    if parent is not None:
        values["parent"] = parent
    used = _template_variables(template, persona.name, persona.source)
    missing = sorted(used - {"parent"} - set(values))
    if "parent" in used and parent is None:
        missing.append("parent")
    if missing:
        example = ", ".join(f"{m!r}: ..." for m in missing)
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r} needs the variable(s) {', '.join(missing)}: "
            f"pass them, e.g. ({persona.name!r}, {{{example}}}), or give defaults under `variables:`."
        )
    try:
        if _plain(template) and len(template) <= MAX_TEXT:  # what Jinja renders: the text, line ends normalised
            text = _NEWLINES.sub("\n", template).strip()
        else:
            text = render_template(compile_template(template), values, MAX_TEXT).strip()
    except Exception as exc:  # anything a template raises (limits, recursion, bad values) is the persona's fault
        fix = f" {_LIMITS_HINT}" if is_refusal(exc) else ""
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r}: {_template_problem(exc)}.{fix}"
        ) from exc
    if not text:
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r} renders to empty text; give it a description."
        )
    return text


class _ReportValueErrors:
    """Mixed into the safe loaders: any failure to build a value (a 5000-digit integer...) is a YAML error at
    the value's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value ({exc})", node.start_mark
            ) from None


class _Loader(_ReportValueErrors, yaml.SafeLoader):
    """PyYAML's safe loader (pure Python: its messages are the ones reported)."""


def _items(root: yaml.Node | None) -> list[yaml.Node]:
    """The nodes of the top-level ``personas`` list (or of a top-level list)."""
    if isinstance(root, yaml.SequenceNode):
        return list(root.value)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if getattr(key, "value", None) == "personas" and isinstance(value, yaml.SequenceNode):
                return list(value.value)
    return []


def _item_name(item: yaml.Node) -> str | None:
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if getattr(key, "value", None) == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)[:100]
    return None


_NAME_LINE = re.compile(r"^[\s-]*name:\s*['\"]?([^'\"#\n]{1,100})")


def _persona_near(text: str, line: int | None, items: list[yaml.Node] | None = None) -> str:
    """`` (in persona 'x')`` for the persona whose entry holds ``line``, or ``""``."""
    if line is None:
        return ""
    name = None
    if items:
        for item in items:
            if item.start_mark.line + 1 <= line:
                name = _item_name(item)
    else:  # the YAML did not parse: the nearest `name:` above the line
        for candidate in reversed(text.splitlines()[:line]):
            match = _NAME_LINE.match(candidate)
            if match:
                name = match.group(1).strip()
                break
    return f" (in persona {name!r})" if name else ""


def _yaml_error(exc: yaml.YAMLError, text: str, source: str, items: list[yaml.Node]) -> NoReturn:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    raise PersonaError(
        f"{_where(source, line)}invalid YAML: {problem}{_persona_near(text, line, items)}. Fix the YAML syntax."
    ) from exc


_REPARSE_BYTES = 100_000
"""Largest document that PyYAML reads again for its error message (about 0.2 s)."""

if hasattr(yaml, "CSafeLoader"):

    class _FastLoader(_ReportValueErrors, yaml.CSafeLoader):  # type: ignore[name-defined,misc]
        """libyaml's parser (several times faster), with the same constructor as :class:`_Loader`."""

else:  # pragma: no cover - PyYAML built without libyaml
    _FastLoader = None  # type: ignore[assignment,misc]


def _load_yaml(text: str, source: str) -> tuple[Any, list[yaml.Node]]:
    """The YAML data of ``text`` and the nodes of its persona entries; every failure is a PersonaError.

    libyaml reads it when it can; a small document it refuses is read again by PyYAML's parser, whose messages
    (and marks) are the ones reported. A large one (PyYAML would take seconds) or one nested past libyaml's
    limit is reported with libyaml's message.
    """
    if _FastLoader is not None:
        fast = None
        try:
            fast = _FastLoader(text)
            root = fast.get_single_node()
            return (fast.construct_document(root) if root is not None else None), _items(root)
        except yaml.YAMLError as exc:
            if len(text) > _REPARSE_BYTES or "nesting depth" in str(getattr(exc, "problem", "")):
                _yaml_error(exc, text, source, [])
        except Exception:  # noqa: S110 - reported below, by the pure-Python parser
            pass
        finally:
            if fast is not None:
                fast.dispose()
    loader: _Loader | None = None
    items: list[yaml.Node] = []
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        items = _items(root)
        return (loader.construct_document(root) if root is not None else None), items
    except yaml.YAMLError as exc:
        _yaml_error(exc, text, source, items)
    except RecursionError as exc:
        line = getattr(loader, "line", None)
        line = line + 1 if isinstance(line, int) else None
        raise PersonaError(
            f"{_where(source, line)}invalid YAML: it nests too deeply{_persona_near(text, line)}. Flatten it."
        ) from exc
    finally:
        if loader is not None:
            loader.dispose()


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "persona"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a persona field (fields: name, description, variables, system, extends, tags)"
        parts.append(f"`{field}` {message}")
    return "; ".join(parts)


@dataclass
class _Allowance:
    """What is left of a registry's limits while its files load (a folder's files share one)."""

    bytes: int = MAX_REGISTRY_BYTES
    personas: int = MAX_PERSONAS
    template_chars: int = MAX_TEMPLATE_CHARS


def parse_registry_text(text: str, source: str = "<string>") -> list[Persona]:
    """Parse YAML registry text into personas (in file order), with precise errors."""
    return _parse_registry(text, source, _Allowance())


def _parse_registry(text: str, source: str, allowance: _Allowance) -> list[Persona]:
    if len(text) > allowance.bytes:
        raise PersonaError(
            f"{_where(source, None)}the registry holds more than {MAX_REGISTRY_BYTES} characters (a folder's files "
            "together); a registry is at most that long."
        )
    allowance.bytes -= len(text)
    data, items = _load_yaml(text, source)
    if data is None:
        return []
    if isinstance(data, list):
        data = {"personas": data}
    if not isinstance(data, dict) or not isinstance(data.get("personas"), list):
        raise PersonaError(
            f"{_where(source, 1)}a persona registry is a mapping with a `personas:` list of entries "
            "(each with `name:` and `description:`); see examples/personas.yaml."
        )
    if len(data["personas"]) > allowance.personas:
        index = allowance.personas
        first = items[index] if len(items) > index else None
        line = first.start_mark.line + 1 if first is not None else 1
        name = (_item_name(first) if first is not None else None) or f"#{index + 1}"
        raise PersonaError(
            f"{_where(source, line)}persona {name!r} is one too many: a registry (a file, or a folder's files "
            f"together) holds at most {MAX_PERSONAS} personas."
        )
    allowance.personas -= len(data["personas"])
    unknown_top = sorted(str(k)[:100] for k in data if k != "personas")
    if unknown_top:
        raise PersonaError(f"{_where(source, 1)}unknown top-level key(s) {unknown_top}; only `personas:` is read.")
    lines = [item.start_mark.line + 1 for item in items]
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
        for field, template in (("description", persona.description), ("system", persona.system)):
            if template is not None and not _plain(template):
                allowance.template_chars -= len(template)
                if allowance.template_chars < 0:
                    raise PersonaError(
                        f"{where}persona {persona.name!r}: the registry's Jinja templates hold more than "
                        f"{MAX_TEMPLATE_CHARS} characters (a folder's files together; plain text does not count); "
                        "shorten them."
                    )
                _check_template(template, persona.name, persona.source, field)
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
        return cls._from_path(Path(path).expanduser(), _Allowance())

    @classmethod
    def _from_path(cls, path: Path, allowance: _Allowance) -> PersonaRegistry:
        if path.is_dir():
            files = _registry_files(path)
            if not files:
                raise PersonaError(f"{path}: the folder holds no .yaml or .yml persona files.")
            return cls().merge(*(cls._from_path(f, allowance) for f in files))
        if not path.is_file():
            raise PersonaError(f"{path}: persona registry file not found; check the path.")
        registry = cls(_parse_registry(_read_registry(path, allowance.bytes), str(path), allowance))
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
        """The persona and its ancestors, nearest first; a cycle, a chain longer than
        :data:`MAX_EXTENDS_DEPTH` or (unless ``missing_ok``) a missing parent is an error."""
        chain: list[Persona] = []
        seen: set[str] = set()
        current: str | None = name
        while current is not None:
            if current in seen:
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
            if len(chain) == MAX_EXTENDS_DEPTH:
                self._too_deep(chain[0], [*chain, persona])
            chain.append(persona)
            seen.add(current)
            current = persona.extends
        return chain

    @staticmethod
    def _too_deep(persona: Persona, chain: list[Persona]) -> None:
        names = " -> ".join(p.name for p in chain[:4])
        raise PersonaError(
            f"{_where(persona.source, None)}persona {persona.name!r} extends a chain of more than "
            f"{MAX_EXTENDS_DEPTH} personas ({names} -> ...); shorten the chain."
        )

    def validate(self, missing_ok: bool = True) -> None:
        """Check every persona's `extends` chain: no cycles, at most :data:`MAX_EXTENDS_DEPTH` long, and
        (unless ``missing_ok``) no missing parents. Linear in the number of personas: each chain is walked
        only up to a persona already checked.

        A single file may extend personas defined elsewhere (the built-ins), so loading only checks cycles;
        :func:`load_registry` checks parents once the registries are merged.
        """
        depth: dict[str, int] = {}  # a checked persona -> the length of its chain
        for name in self._personas:
            path: list[Persona] = []
            on_path: set[str] = set()
            current: str | None = name
            while current is not None and current not in depth:
                persona = self._personas.get(current)
                if persona is None:  # a parent defined elsewhere
                    if not missing_ok:
                        self._chain(name)  # raises, naming the missing parent
                    current = None
                    break
                if current in on_path or len(path) == MAX_EXTENDS_DEPTH:
                    self._chain(name, missing_ok=missing_ok)  # raises: a cycle, or a chain too long
                on_path.add(current)
                path.append(persona)
                current = persona.extends
            base = depth[current] if current is not None else 0
            for offset, persona in enumerate(reversed(path)):
                depth[persona.name] = base + offset + 1
                if depth[persona.name] > MAX_EXTENDS_DEPTH:
                    self._chain(persona.name, missing_ok=True)  # raises: the chain is too long

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
        """The nearest ``system`` template override along the persona's `extends` chain (template text, never a
        file path; an :class:`~.sandbox.InlineTemplate` naming the persona, for error messages)."""
        persona = next((p for p in self._chain(name) if p.system), None)
        if persona is None or persona.system is None:
            return None
        return InlineTemplate(persona.system, f"{_where(persona.source, None)}persona {persona.name!r} `system`")

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


def _registry_files(folder: Path) -> list[Path]:
    return sorted(p for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")] if p.is_file())


def _read_registry(path: Path, allowed: int = MAX_REGISTRY_BYTES) -> str:
    try:
        size = path.stat().st_size
        data = path.read_bytes()[: allowed + 1] if size <= allowed else b""
        if size > allowed or len(data) > allowed:
            raise PersonaError(
                f"{path}: the registry holds more than {MAX_REGISTRY_BYTES} bytes (a folder's files together); a "
                "registry is at most that long."
            )
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        near = _persona_near(data.decode("utf-8", errors="replace"), line)
        raise PersonaError(
            f"{path}:{line}: the registry is not UTF-8 text ({exc.reason}){near}; save it as UTF-8."
        ) from exc
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read the registry file ({exc.strerror or exc}).") from exc


def _signature(path: Path) -> tuple[Any, ...] | None:
    """What identifies a registry path's content: its resolved path and, for it or each file of the folder,
    the name, modification time, size and inode; None if it cannot be read (no caching)."""
    try:
        resolved = path.expanduser().resolve()
        files = _registry_files(resolved) if resolved.is_dir() else [resolved]
        stats = []
        for file in files:
            st = os.stat(file)
            stats.append((file.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return (str(resolved), resolved.is_dir(), tuple(stats))
    except OSError:
        return None


_loaded: OrderedDict[tuple[Any, ...], PersonaRegistry] = OrderedDict()
_loaded_lock = threading.Lock()


def load_registry(registry: PersonaRegistry | str | Path | None) -> PersonaRegistry:
    """The built-ins, with a user registry (object or YAML path) over them.

    A registry given by path is cached by its resolved path and its files' modification times and sizes: an
    unchanged file is not read again, a changed one is.
    """
    base = PersonaRegistry.default()
    if registry is None:
        return base
    key = None
    if isinstance(registry, PersonaRegistry):
        user = registry
    else:
        key = _signature(Path(registry))
        if key is not None:
            with _loaded_lock:
                cached = _loaded.get(key)
                if cached is not None:
                    _loaded.move_to_end(key)
                    return cached
        user = PersonaRegistry.from_yaml(registry)
    with warnings.catch_warnings():
        # Overriding a built-in on purpose is normal for a user registry.
        warnings.simplefilter("ignore")
        merged = base.merge(user)
    merged.validate(missing_ok=False)
    if key is not None:
        with _loaded_lock:
            _loaded[key] = merged
            while len(_loaded) > _CACHED_REGISTRIES:
                _loaded.popitem(last=False)
    return merged
