"""Reading a persona registry: YAML text (or a file) → :class:`~.persona.Persona` objects, with precise errors.

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
:data:`MAX_PERSONAS` personas and :data:`MAX_TEMPLATE_CHARS` characters of Jinja templates, and reads within
:data:`MAX_LOAD_SECONDS` (checked after each persona). Every problem,
hostile or not, raises :class:`~langchain_persona_judge.errors.PersonaError` naming the file, the line, the
persona, the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from ..errors import PersonaError
from .persona import Persona, check_template, is_plain, located

MAX_REGISTRY_BYTES = 1_000_000
"""Bytes of a registry (a file, or the files of a folder together)."""
MAX_PERSONAS = 1_000
"""Personas in a registry (a file, or the files of a folder together)."""
MAX_TEMPLATE_CHARS = 50_000
"""Characters of Jinja templates (texts with a ``{``; plain text does not count) in a registry (a file, or the
files of a folder together): parsing them all takes well under a second."""
MAX_LOAD_SECONDS = 1.0
"""Wall-clock seconds to read a registry (a file, or the files of a folder together), its templates parsed: the
largest registry allowed reads in about 0.15 s."""


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
        f"{located(source, line)}invalid YAML: {problem}{_persona_near(text, line, items)}. Fix the YAML syntax."
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
            f"{located(source, line)}invalid YAML: it nests too deeply{_persona_near(text, line)}. Flatten it."
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
class Allowance:
    """What is left of a registry's limits while its files load (a folder's files share one)."""

    bytes: int = MAX_REGISTRY_BYTES
    personas: int = MAX_PERSONAS
    template_chars: int = MAX_TEMPLATE_CHARS
    deadline: float = dataclasses.field(default_factory=lambda: time.perf_counter() + MAX_LOAD_SECONDS)
    """:func:`time.perf_counter` value past which reading is refused."""


def parse_registry_text(text: str, source: str = "<string>") -> list[Persona]:
    """Parse YAML registry text into personas (in file order), with precise errors."""
    return parse_registry(text, source, Allowance())


def parse_registry(text: str, source: str, allowance: Allowance) -> list[Persona]:
    """The personas of ``text`` (in file order), charged to ``allowance``."""
    if len(text) > allowance.bytes:
        raise PersonaError(
            f"{located(source, None)}the registry holds more than {MAX_REGISTRY_BYTES} characters (a folder's files "
            "together); a registry is at most that long."
        )
    allowance.bytes -= len(text)
    data, items = _load_yaml(text, source)
    if data is None:
        return []
    entries = _entries(data, items, source, allowance)
    lines = [item.start_mark.line + 1 for item in items]
    personas: list[Persona] = []
    seen: dict[str, int | None] = {}
    for index, entry in enumerate(entries):
        line = lines[index] if index < len(lines) else None
        persona = _persona(entry, index, source, line, seen, allowance)
        seen[persona.name] = line
        personas.append(persona)
    return personas


def _entries(data: Any, items: list[yaml.Node], source: str, allowance: Allowance) -> list[Any]:
    """The document's list of persona entries, once its shape and count are checked."""
    if isinstance(data, list):
        data = {"personas": data}
    if not isinstance(data, dict) or not isinstance(data.get("personas"), list):
        raise PersonaError(
            f"{located(source, 1)}a persona registry is a mapping with a `personas:` list of entries "
            "(each with `name:` and `description:`); see examples/personas.yaml."
        )
    if len(data["personas"]) > allowance.personas:
        index = allowance.personas
        first = items[index] if len(items) > index else None
        line = first.start_mark.line + 1 if first is not None else 1
        name = (_item_name(first) if first is not None else None) or f"#{index + 1}"
        raise PersonaError(
            f"{located(source, line)}persona {name!r} is one too many: a registry (a file, or a folder's files "
            f"together) holds at most {MAX_PERSONAS} personas."
        )
    allowance.personas -= len(data["personas"])
    unknown_top = sorted(str(k)[:100] for k in data if k != "personas")
    if unknown_top:
        raise PersonaError(f"{located(source, 1)}unknown top-level key(s) {unknown_top}; only `personas:` is read.")
    return data["personas"]


def _persona(
    entry: Any, index: int, source: str, line: int | None, seen: dict[str, int | None], allowance: Allowance
) -> Persona:
    """One entry as a :class:`Persona`: its fields, a name not ``seen`` before, its templates parsed."""
    where = located(source, line)
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
        if template is not None and not is_plain(template):
            allowance.template_chars -= len(template)
            if allowance.template_chars < 0:
                raise PersonaError(
                    f"{where}persona {persona.name!r}: the registry's Jinja templates hold more than "
                    f"{MAX_TEMPLATE_CHARS} characters (a folder's files together; plain text does not count); "
                    "shorten them."
                )
            check_template(template, persona.name, persona.source, field)
    if time.perf_counter() > allowance.deadline:
        raise PersonaError(
            f"{where}persona {persona.name!r}: reading the registry took more than {MAX_LOAD_SECONDS:g} s (the "
            "files of a folder together); shorten its templates or hold fewer personas."
        )
    return persona


# -- files ----------------------------------------------------------------------------------------------


def registry_files(folder: Path) -> list[Path]:
    return sorted(p for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")] if p.is_file())


def read_registry(path: Path, allowed: int = MAX_REGISTRY_BYTES) -> str:
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


__all__ = [
    "MAX_LOAD_SECONDS",
    "MAX_PERSONAS",
    "MAX_REGISTRY_BYTES",
    "MAX_TEMPLATE_CHARS",
    "Allowance",
    "parse_registry",
    "parse_registry_text",
    "read_registry",
    "registry_files",
]
