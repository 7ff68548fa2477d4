"""One persona: a name and a Jinja template for its preference text, checked and rendered in the sandbox.

A persona's fields come from a registry, which is untrusted input: its templates parse and render in the
hardened sandbox of :mod:`.sandbox` (bounded source, work, memory and output: a persona's text is at most
:data:`~.guards.MAX_TEXT` characters), and every failure is a
:class:`~langchain_persona_judge.errors.PersonaError` naming the persona, the problem and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import PersonaError
from .guards import MAX_TEXT
from .sandbox import (
    MAX_SOURCE,
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


def located(source: str | None, line: int | None) -> str:
    """``source:line: `` (or ``source: ``) to start an error message with; empty when the source is unknown."""
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
        return template_variables(self.description or "", self.name, self.source) - {"parent"}

    def render(self, **variables: Any) -> str:
        """The preference text with ``variables`` (over the defaults). Ignores ``extends``: use the registry."""
        return render_persona(self, {}, variables, parent=None)


_LIMITS_HINT = (
    "A persona template may use variables, filters, `if`, `for` and `set`, within the limits listed in "
    "langchain_persona_judge/personas/sandbox.py."
)


def is_plain(template: str) -> bool:
    """Whether ``template`` is plain text (no Jinja syntax can start without a ``{``): no need to parse it."""
    return "{" not in template and len(template) <= MAX_SOURCE


@lru_cache(maxsize=1024)
def _undeclared(template: str) -> frozenset[str]:
    if is_plain(template):
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


def check_template(template: str, name: str, source: str | None, field: str) -> None:
    """Parse ``template`` (syntax, and the sandbox's parse-time limits), as loading does."""
    if not is_plain(template):
        template_variables(template, name, source, field, analyse=False)


def template_variables(
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
        raise PersonaError(f"{located(source, None)}persona {name!r}: {where}{_template_problem(exc)}. {fix}") from exc


def render_persona(persona: Persona, defaults: Mapping[str, Any], variables: Mapping[str, Any], parent: str | None) -> str:
    template = persona.description
    if template is None:
        raise PersonaError(f"{located(persona.source, None)}persona {persona.name!r} has no description; write one.")
    # ``defaults`` (the registry's merged chain, children winning) outrank the persona's own defaults.
    values = {**persona.variables, **defaults, **variables}
    if parent is not None:
        values["parent"] = parent
    used = template_variables(template, persona.name, persona.source)
    missing = sorted(used - {"parent"} - set(values))
    if "parent" in used and parent is None:
        missing.append("parent")
    if missing:
        example = ", ".join(f"{m!r}: ..." for m in missing)
        raise PersonaError(
            f"{located(persona.source, None)}persona {persona.name!r} needs the variable(s) {', '.join(missing)}: "
            f"pass them, e.g. ({persona.name!r}, {{{example}}}), or give defaults under `variables:`."
        )
    try:
        if is_plain(template) and len(template) <= MAX_TEXT:  # what Jinja renders: the text, line ends normalised
            text = _NEWLINES.sub("\n", template).strip()
        else:
            text = render_template(compile_template(template), values, MAX_TEXT).strip()
    except Exception as exc:  # anything a template raises (limits, recursion, bad values) is the persona's fault
        fix = f" {_LIMITS_HINT}" if is_refusal(exc) else ""
        raise PersonaError(
            f"{located(persona.source, None)}persona {persona.name!r}: {_template_problem(exc)}.{fix}"
        ) from exc
    if not text:
        raise PersonaError(
            f"{located(persona.source, None)}persona {persona.name!r} renders to empty text; give it a description."
        )
    return text


__all__ = ["NAME_PATTERN", "Persona", "VariableValue", "check_template", "is_plain", "located", "render_persona",
           "template_variables"]
