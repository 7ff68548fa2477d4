"""Profile files from anyone: each hostile value is refused with a ProfileError naming the field, fast.

No model is needed: a profile over the built-in basis with a made-up model identity is all a file holds.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from langchain_persona_judge.errors import ProfileError
from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile, resolve_basis
from langchain_persona_judge.profiles.files import MAX_FILE_BYTES

MODEL = ModelIdentity("some/model", "some/model", "0123456789abcdef")


@pytest.fixture(scope="module")
def good() -> dict[str, Any]:
    basis = resolve_basis(None)
    weights = [0.5 * ((-1) ** i) * (i % 4) for i in range(len(basis))]
    profile = PreferenceProfile(basis, weights, MODEL, description="Keep it short.",
                                evidence={"comparisons": 4, "ties": 1, "l2": 1.0, "strategy": "uncertainty"})
    return profile.to_dict()


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with the value at a dotted ``path`` (an int part indexes a list) replaced."""
    out = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def test_a_real_profile_round_trips_and_fits_the_size_cap(good: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(good, sort_keys=False)
    assert len(text.encode()) < MAX_FILE_BYTES / 10  # a real profile is far below the cap
    loaded = PreferenceProfile.from_text(text, source="upload")
    assert loaded.to_dict() == good
    saved = PreferenceProfile.from_dict(good).save(tmp_path / "p.json")
    assert PreferenceProfile.load(saved).to_dict() == good


HOSTILE = [
    # (case, dotted path, value, a word the message must hold)
    ("400-digit weight", "basis.personas.0.weight", 10**400, "weight"),
    ("huge weight", "basis.personas.0.weight", 1e308, "out of range"),
    ("negative huge weight", "basis.personas.1.weight", -1e308, "out of range"),
    ("weight just over the bound", "basis.personas.2.weight", 100.5, "out of range"),
    ("NaN weight", "basis.personas.0.weight", float("nan"), "not finite"),
    ("infinite weight", "basis.personas.0.weight", float("inf"), "not finite"),
    ("text weight", "basis.personas.0.weight", "heavy", "must be a number"),
    ("bool weight", "basis.personas.0.weight", True, "must be a number"),
    ("text in evidence", "evidence.comparisons", "many", "evidence.comparisons"),
    ("NaN in evidence", "evidence.l2", float("nan"), "evidence.l2"),
    ("huge count in evidence", "evidence.ties", 10**30, "evidence.ties"),
    ("negative count in evidence", "evidence.comparisons", -3, "evidence.comparisons"),
    ("unknown evidence key", "evidence.payload", 1, "unknown key"),
    ("nested evidence", "evidence.strategy", {"a": [1, 2]}, "evidence.strategy"),
    ("one-word description", "description", "banana", "description"),
    ("description too long", "description", "Be kind. " * 1000, "description"),
    ("poles zero", "poles", 0, "poles"),
    ("poles huge", "poles", 10**12, "poles"),
    ("model name a list", "model.display", ["x"], "model"),
    ("model display huge", "model.display", "x" * 100_000, "model.display"),
]


@pytest.mark.parametrize(("case", "path", "value", "named"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_value_is_refused_naming_the_field(good: dict[str, Any], case: str, path: str, value: Any,
                                                        named: str) -> None:
    data = _with(good, path, value)
    with pytest.raises(ProfileError) as info:
        PreferenceProfile.from_dict(data, source="the upload")
    assert named in str(info.value) and "the upload" in str(info.value)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_hostile_values_are_refused_through_the_text_reader_too(good: dict[str, Any], fmt: str) -> None:
    data = _with(good, "basis.personas.0.weight", 10**400)
    text = yaml.safe_dump(data) if fmt == "yaml" else json.dumps(data)
    with pytest.raises(ProfileError, match="weight"):
        PreferenceProfile.from_text(text, source="upload")
    nan = json.dumps(_with(good, "evidence.l2", 1.0)).replace('"l2": 1.0', '"l2": NaN')
    with pytest.raises(ProfileError, match="evidence.l2"):
        PreferenceProfile.from_text(nan, source="upload")


def test_a_persona_name_as_description_is_accepted(good: dict[str, Any]) -> None:
    assert PreferenceProfile.from_dict(_with(good, "description", "concise")).description == "concise"


@pytest.mark.parametrize("opening", ["[", "{"])
def test_deeply_nested_flow_collections_are_refused_fast(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    depth = 100_000  # a 200 KB file
    text = "format: persona-judge-profile\nbasis: " + opening * depth + closing * depth + "\n"
    began = time.perf_counter()
    with pytest.raises(ProfileError, match="nested"):
        PreferenceProfile.from_text(text, source="upload")
    assert time.perf_counter() - began < 0.1


def test_anchors_aliases_oversize_and_nul_are_refused(good: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(good, sort_keys=False)
    aliased = text.replace("evidence:", "extra: &a [1, 2]\nagain: *a\nevidence:", 1)
    with pytest.raises(ProfileError, match="anchors"):
        PreferenceProfile.from_text(aliased, source="upload")
    with pytest.raises(ProfileError, match="too large"):
        PreferenceProfile.from_text(text + "#" * MAX_FILE_BYTES, source="upload")
    with pytest.raises(ProfileError, match="NUL"):
        PreferenceProfile.from_text(text + "\x00", source="upload")
    big = tmp_path / "big.yaml"
    big.write_text(text + "#" * MAX_FILE_BYTES)
    with pytest.raises(ProfileError, match="too large"):
        PreferenceProfile.load(big)


def test_a_saved_profile_never_holds_nan(good: dict[str, Any], tmp_path: Path) -> None:
    profile = PreferenceProfile.from_dict(good)
    profile.evidence["l2"] = float("nan")  # set after validation, as a buggy caller might
    with pytest.raises(ValueError):
        profile.save(tmp_path / "p.json")
