"""A corrupted GGUF file on the transformers backend is a ModelLoadError naming the file, not an OSError."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_persona_judge.errors import ModelLoadError, PersonaJudgeError
from langchain_persona_judge.runtime.loading import convert_gguf


@pytest.mark.parametrize(
    "content",
    [b"not a gguf at all" * 64, b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 16],
    ids=["no magic", "magic then garbage"],
)
def test_a_corrupted_gguf_is_a_model_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                content: bytes) -> None:
    monkeypatch.setenv("PERSONA_JUDGE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        convert_gguf(bad)
    assert isinstance(info.value, PersonaJudgeError) and "broken.gguf" in str(info.value)
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-converted is left to load later
