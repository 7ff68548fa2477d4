"""Reading a profile file that may come from anyone: bounded size and nesting, a fast parser, every field checked.

A profile file is small (the built-in basis of 20 personas writes about 8 KB) and shallow (four levels: the
profile, its basis, the list of personas, one persona). What is read here may be an upload to a server, so
everything is bounded *before* the expensive step:

* the size (:data:`MAX_FILE_BYTES`) before decoding;
* the nesting of flow collections (``[``/``{``, :data:`MAX_NESTING`) before YAML parsing, in one linear pass
  (PyYAML's pure-Python scanner takes a minute over 200 KB of ``[[[...``);
* parsing with libyaml (``yaml.CSafeLoader``) when PyYAML has it, JSON when the text is JSON; YAML anchors and
  aliases are refused (a profile file has none, and they expand on export);
* then every field (:func:`check_fields`): finite weights within ``±``:data:`MAX_WEIGHT`, the evidence's known
  keys with small values, a description that reads as a preference (a single word must name a persona, as a
  typed preference must), bounded strings.

Each refusal is a :class:`~langchain_persona_judge.errors.ProfileError` naming the source and the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml

from ..errors import ProfileError
from ..personas import NAME_PATTERN
from .features import FEATURES

MAX_FILE_BYTES = 256 * 1024
"""The largest profile file read (a real one is a few KB: the built-in basis writes about 8 KB)."""
MAX_NESTING = 16
"""The deepest nesting of flow collections (``[``, ``{``) a profile file may have; a real one has at most 4."""
MAX_WEIGHT = 100.0
"""The largest weight magnitude accepted (learned weights are O(1); ±1e308 would silently turn decoding off)."""
MAX_DESCRIPTION_CHARS = 4000
MAX_TEXT_CHARS = 4000
"""The longest model name, display name, fingerprint, basis persona text or evidence string."""
MAX_COUNT = 10**9
MAX_POLES = 64
EVIDENCE_KEYS: dict[str, str] = {
    "comparisons": "count",
    "ties": "count",
    "texts": "count",
    "tokens": "count",
    "l2": "number",
    "strategy": "text",
    "description": "flag",
}
"""What a profile's ``evidence`` may hold (what the learners write), and the kind of each value."""

_FLOW = re.compile(r"[\[\]{}]")
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_nesting(text: str, source: str, limit: int = MAX_NESTING) -> None:
    """Refuse flow collections (``[``, ``{``) nested deeper than ``limit``, in one linear pass over the brackets.

    Brackets inside strings count too: telling strings apart would take a YAML scanner, and a guess could be
    fooled into skipping the very brackets it exists to count; a real profile has no text with ``limit``
    unclosed brackets."""
    depth = 0
    for match in _FLOW.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                raise ProfileError(f"{source}: collections nested more than {limit} deep; a profile file has at "
                                   "most 4 levels (it may be a crafted file).")
        elif depth:
            depth -= 1


def parse_profile_text(text: str, source: str) -> Any:
    """The data of a profile file's text (JSON when it looks like JSON, else YAML), bounded as the module says."""
    if len(text) > MAX_FILE_BYTES:
        raise ProfileError(f"{source}: {len(text)} characters is too large for a profile (at most "
                           f"{MAX_FILE_BYTES}).")
    if "\x00" in text:
        raise ProfileError(f"{source}: holds a NUL character; it is not a profile file.")
    check_nesting(text, source)
    try:
        if text.lstrip().startswith("{"):  # JSON first when it looks like JSON (it spells NaN as YAML does not)
            return json.loads(text)  # NaN and Infinity parse, and are refused by name in the field checks
        loader = _YAML_LOADER(text)
        try:
            if _has_anchors(loader):
                raise ProfileError(f"{source}: uses YAML anchors or aliases; a profile file has none (it may be a "
                                   "crafted file).")
        finally:
            loader.dispose()
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        if isinstance(exc, ProfileError):
            raise
        kind = "JSON" if text.lstrip().startswith("{") else "YAML"
        raise ProfileError(f"{source}: the profile file is corrupted (not valid {kind}: "
                           f"{type(exc).__name__}).") from None


def _has_anchors(loader: Any) -> bool:
    while loader.check_token():
        token = loader.get_token()
        if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
            return True
    return False


def check_weight(name: str, value: Any, fail: Any, where: str = "basis.personas") -> float:
    """One basis persona's weight: a number (not a bool), finite, within ±MAX_WEIGHT."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(f"`{where}[{name}].weight` must be a number, not {type(value).__name__}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(f"the weights of {[name]} are not finite (NaN or infinite): `{where}[{name}].weight`; "
                   "relearn the profile.")
    if not -MAX_WEIGHT <= value <= MAX_WEIGHT:  # compared before any float(): a 400-digit int cannot overflow
        raise fail(f"`{where}[{name}].weight` is out of range (at most {MAX_WEIGHT:g} in magnitude; "
                   "learned weights are small): the file is corrupted or crafted.")
    return float(value)


def check_features(records: Any, fail: Any) -> tuple[tuple[str, ...], list[float]]:
    """``basis.features``: absent, or a list of ``{name, weight}`` (and the ``definition`` written beside them)
    naming known whole-answer features, each once; their names and weights."""
    if records is None:
        return (), []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise fail("`basis.features` must be a list of {name, weight}.")
    if len(records) > len(FEATURES):
        raise fail(f"`basis.features` has {len(records)} entries; the known features are {sorted(FEATURES)}.")
    names: list[str] = []
    weights: list[float] = []
    for record in records:
        name = record.get("name")
        if not isinstance(name, str) or name not in FEATURES:
            raise fail(f"`basis.features` names an unknown feature {str(name)[:40]!r}; the known ones are "
                       f"{sorted(FEATURES)}.")
        if name in names:
            raise fail(f"`basis.features` names {name!r} twice.")
        unknown = sorted(str(k)[:40] for k in record if k not in ("name", "weight", "definition"))
        if unknown:
            raise fail(f"`basis.features[{name}]` holds unknown keys {unknown}; a feature has name, definition and "
                       "weight.")
        if "weight" not in record:
            raise fail(f"`basis.features[{name}]` has no weight; the file is corrupted.")
        check_text(record.get("definition", ""), f"basis.features[{name}].definition", fail)
        names.append(name)
        weights.append(check_weight(name, record["weight"], fail, "basis.features"))
    return tuple(names), weights


def check_evidence(evidence: Any, fail: Any) -> dict[str, Any]:
    """The evidence mapping: only :data:`EVIDENCE_KEYS`, each with a small value of its kind."""
    if evidence is None:
        return {}
    if not isinstance(evidence, dict):
        raise fail("`evidence` must be a mapping.")
    for key, value in evidence.items():
        kind = EVIDENCE_KEYS.get(key) if isinstance(key, str) else None
        if kind is None:
            raise fail(f"`evidence` holds an unknown key {str(key)[:40]!r}; known: {sorted(EVIDENCE_KEYS)}.")
        where = f"`evidence.{key}`"
        if kind == "count":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise fail(f"{where} must be a whole number from 0 to {MAX_COUNT}.")
        elif kind == "number":
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value <= 1e6):
                raise fail(f"{where} must be a finite number from 0 to 1e6.")
        elif kind == "text":
            if not isinstance(value, str) or len(value) > 64:
                raise fail(f"{where} must be a short text (at most 64 characters).")
        elif not isinstance(value, bool):
            raise fail(f"{where} must be true or false.")
    return {k: float(v) if EVIDENCE_KEYS[k] == "number" else v for k, v in evidence.items()}


def check_description(description: Any, fail: Any, registry: Any = None) -> str | None:
    """Free text that decodes as a preference: bounded, and a single word must be a persona's name (as a typed
    preference must: a one-word preference is read as a name)."""
    if description is None:
        return None
    if not isinstance(description, str):
        raise fail("`description` must be text.")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise fail(f"`description` has {len(description)} characters; the most is {MAX_DESCRIPTION_CHARS}.")
    text = description.strip()
    if text and NAME_PATTERN.fullmatch(text):
        if registry is None:
            from ..personas import PersonaRegistry

            registry = PersonaRegistry.default()
        if text not in registry:
            raise fail(f"`description` {text[:40]!r} is one word but no persona's name; write it as a sentence "
                       "(e.g. 'Keep it short.').")
    return description


def check_text(value: Any, where: str, fail: Any, *, optional: bool = False) -> Any:
    """A string field of at most :data:`MAX_TEXT_CHARS` characters (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise fail(f"`{where}` must be text of at most {MAX_TEXT_CHARS} characters.")
    return value


def check_poles(poles: Any, fail: Any) -> int:
    if not isinstance(poles, int) or isinstance(poles, bool) or not 1 <= poles <= MAX_POLES:
        raise fail(f"`poles` must be a whole number from 1 to {MAX_POLES}.")
    return poles


__all__ = [
    "EVIDENCE_KEYS",
    "MAX_FILE_BYTES",
    "MAX_NESTING",
    "MAX_WEIGHT",
    "check_description",
    "check_evidence",
    "check_features",
    "check_nesting",
    "check_poles",
    "check_text",
    "check_weight",
    "parse_profile_text",
]
