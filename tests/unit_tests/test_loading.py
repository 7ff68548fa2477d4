"""The GGUF conversion cache is keyed by the file's content, so a reinstall or a second environment reuses it."""

from __future__ import annotations

import os
import shutil

import pytest

from langchain_persona_judge.runtime import loading


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gguf(folder, content: bytes, mtime: int):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.Q4.gguf"
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def test_same_content_elsewhere_and_restamped_shares_one_conversion(cache, tmp_path):
    first = _gguf(tmp_path / "venv-a" / "site-packages", b"GGUF" + bytes(range(256)) * 4000, 1_000_000)
    second = _gguf(tmp_path / "venv-b" / "site-packages", first.read_bytes(), 2_000_000)  # pip's new mtime
    target = loading._converted_path(first)
    assert target.parent == cache / "converted" and target.name.startswith("model.Q4-")
    assert loading._converted_path(second) == target

    # A finished conversion is found from the other copy: no model is loaded (convert_gguf returns at once).
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert loading.convert_gguf(second) == target

    other = _gguf(tmp_path / "venv-c", b"GGUF" + b"\x01" * 1000, 1_000_000)
    assert loading._converted_path(other) != target


def test_the_digest_is_remembered_per_file_and_redone_when_the_file_changes(cache, tmp_path, monkeypatch):
    path = _gguf(tmp_path, b"GGUF-one", 1_000_000)
    hashed: list[str] = []
    real = loading._content_digest
    monkeypatch.setattr(loading, "_content_digest", lambda p: hashed.append(str(p)) or real(p))

    target = loading._converted_path(path)
    assert loading._converted_path(path) == target
    assert len(hashed) == 1  # the second lookup read the remembered digest

    path.write_bytes(b"GGUF-two")  # new content (and size), so a new stat key
    os.utime(path, (1_000_005, 1_000_005))
    assert loading._converted_path(path) != target
    assert len(hashed) == 2

    # A damaged memo is ignored, not trusted: the digest is computed again and the memo mended.
    changed = loading._converted_path(path)
    memos = list((cache / "converted" / "digests").iterdir())
    assert len(memos) == 2
    for memo in memos:
        memo.write_text("zz")
    assert loading._converted_path(path) == changed
    assert len(hashed) == 3
    assert loading._converted_path(path) == changed and len(hashed) == 3

def test_a_read_only_cache_still_resolves(cache, tmp_path, monkeypatch):
    path = _gguf(tmp_path, b"GGUF-ro", 1_000_000)
    expected = loading._converted_path(path)
    shutil.rmtree(cache)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(loading.Path, "mkdir", refuse)
    assert loading._converted_path(path) == expected
