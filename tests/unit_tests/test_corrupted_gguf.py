"""A corrupted GGUF file is a ModelLoadError naming the file and the fix, on both backends: not an OSError from
transformers, not an exception from deep inside llama.cpp, never a crash of the process."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from langchain_persona_judge.errors import ModelLoadError, PersonaJudgeError
from langchain_persona_judge.runtime.loading import convert_gguf
from tests.conftest import llama_cpp_or_skip

GARBAGE = {
    "no magic": b"not a gguf at all" * 64,
    "magic then garbage": b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 16,
    # version 3, 2**62 tensors and 2**62 metadata entries, then nothing
    "absurd counts": b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62),
    "empty": b"",
}
FIX = "download or convert it again"


@pytest.mark.parametrize("content", [GARBAGE["no magic"], GARBAGE["magic then garbage"]],
                         ids=["no magic", "magic then garbage"])
def test_a_corrupted_gguf_is_a_model_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                content: bytes) -> None:
    monkeypatch.setenv("PERSONA_JUDGE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        convert_gguf(bad)
    assert isinstance(info.value, PersonaJudgeError) and "broken.gguf" in str(info.value)
    assert FIX in str(info.value)
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-converted is left to load later


# -- llama.cpp ----------------------------------------------------------------------------------------------

# Loads each file given on the command line, printing one JSON line per file as it goes: a crash of the process
# (a segfault in llama.cpp) shows as the return code, after the lines of the files before it.
_RUNNER = r"""
import json, sys
from langchain_persona_judge import load_model
from langchain_persona_judge.decoding.backends.llamacpp import LlamaCppModel
from langchain_persona_judge.errors import ModelLoadError

for path in sys.argv[1:]:
    for how, load in (("load_model", lambda: load_model(path, backend="llamacpp", device="cpu", n_threads=1)),
                      ("LlamaCppModel", lambda: LlamaCppModel(path, n_threads=1))):
        try:
            load()
            outcome = ["loaded", ""]
        except ModelLoadError as exc:
            outcome = ["ModelLoadError", str(exc)]
        except BaseException as exc:
            outcome = ["raw " + type(exc).__name__, repr(exc)[:1000]]
        print(json.dumps([path, how] + outcome), flush=True)
"""


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def _skip_value(data: bytes, at: int, kind: int) -> int:
    if kind == _STRING:
        return at + 8 + struct.unpack_from("<Q", data, at)[0]
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item != _STRING:
            return at + _SCALAR_SIZES[item] * count
        for _ in range(count):
            at = _skip_value(data, at, _STRING)
        return at
    return at + _SCALAR_SIZES[kind]


def _offset_past_the_end(source: Path, target: Path) -> None:
    """A copy of ``source`` (GGUF v3) whose last tensor's data offset points far past the end of the file (read
    here, not with gguf.GGUFReader, which takes seconds over a 49 152-token vocabulary)."""
    data = bytearray(source.read_bytes())
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    at = 24
    for _ in range(n_kv):
        at = _skip_value(data, at, _STRING)  # the key
        at = _skip_value(data, at + 4, struct.unpack_from("<I", data, at)[0])
    for _ in range(n_tensors):
        at = _skip_value(data, at, _STRING)  # the name
        n_dims = struct.unpack_from("<I", data, at)[0]
        at += 4 + 8 * n_dims + 4  # the dimensions, the type; then the offset
        offset_at, at = at, at + 8
    data[offset_at:offset_at + 8] = struct.pack("<Q", 2**40)
    target.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def damaged_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Garbage, and copies of the embedded GGUF cut short at several points or with a tensor out of bounds."""
    from langchain_persona_judge.runtime.loading import embedded_model_path

    folder = tmp_path_factory.mktemp("damaged")
    files = {}
    for name, content in GARBAGE.items():
        files[name] = folder / f"{name.replace(' ', '-')}.gguf"
        files[name].write_bytes(content)
    try:
        model = embedded_model_path()
    except ModelLoadError:
        return files  # the embedded model is not installed: the garbage files only
    data = model.read_bytes()
    for name, size in (("header only", 24), ("cut in the metadata", 100_000), ("cut in the weights", len(data) // 2),
                       ("last byte missing", len(data) - 1)):
        files[name] = folder / f"{name.replace(' ', '-')}.gguf"
        files[name].write_bytes(data[:size])
    files["tensor past the end"] = folder / "tensor-past-the-end.gguf"
    _offset_past_the_end(model, files["tensor past the end"])
    return files


def test_a_corrupted_gguf_on_llamacpp_is_a_model_load_error_never_a_crash(damaged_files, tmp_path):
    llama_cpp_or_skip()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "PERSONA_JUDGE_CACHE": str(tmp_path / "cache")}
    paths = [str(p) for p in damaged_files.values()]
    result = subprocess.run([sys.executable, "-c", _RUNNER, *paths], capture_output=True, text=True, timeout=300,
                            cwd=root, env=env)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert result.returncode == 0, (
        f"the process died (return code {result.returncode}) after {lines[-1][:2] if lines else 'no file'}: "
        f"{result.stderr[-2000:]}"
    )
    assert len(lines) == 2 * len(paths)
    for path, how, kind, message in lines:
        assert kind == "ModelLoadError", f"{how}({path}): {kind} {message}"
        assert Path(path).name in message and FIX in message, message
    assert not list((tmp_path / "cache").rglob("tokenizer_config.json"))  # no tokenizer of a damaged file is kept
