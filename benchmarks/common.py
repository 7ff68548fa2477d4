"""What the benchmark scripts share: their constants (questions, preferences, sampling, λ), model loading (embedded
or random-init), hooks, memory, machine info, and the one writer of results files (:func:`write_results`), which
records the machine, library versions, backend, commit and command line with every result."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_ENV = "PERSONA_JUDGE_SHARED"

# -- constants shared by the benchmarks ----------------------------------------------------------------------

QUESTIONS = [
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What should I pack for a weekend hiking trip?",
]
"""The speed and backend benchmarks' questions."""
PREFERENCES = [
    "Explain it so that a ten-year-old understands, with simple words.",
    "Be playful and funny, like a friendly storyteller.",
]
"""The speed and backend benchmarks' two preferences."""
SAMPLING = {"temperature": 0.7, "top_p": 0.95}
"""The sampled runs' settings (speed; the quality benchmark's main setting)."""
LEARNING_SAMPLING = {**SAMPLING, "repetition_penalty": 1.2}
"""The learning benchmark's candidates and decoded answers: the chat model's repetition penalty on top."""
LOOKAHEAD = 4
"""λ wherever a benchmark does not sweep it."""


def shared_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The project's shared/ folder (``../shared`` from the repository root), or ``override``/$PERSONA_JUDGE_SHARED.

    Fails with a message that says where it looked and how to point elsewhere.
    """
    candidates = [Path(override)] if override else []
    if os.environ.get(SHARED_ENV):
        candidates.append(Path(os.environ[SHARED_ENV]))
    candidates.append(ROOT.parent / "shared")
    for path in candidates:
        if (path / "bench" / "prompts.jsonl").is_file():
            return path.resolve()
    looked = ", ".join(str(p / "bench" / "prompts.jsonl") for p in candidates)
    raise SystemExit(
        f"The benchmark prompts are missing: looked for {looked}. They live in the project's shared/ folder "
        f"beside the repository (../shared); pass --shared PATH or set {SHARED_ENV}=PATH to point elsewhere."
    )


# -- models ------------------------------------------------------------------------------------------

# Shapes of real architectures, for a randomly initialised stand-in where the weights cannot be carried.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        name="SmolLM2-135M", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        name="Llama-3.2-1B", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
}


@dataclass
class BenchModel:
    model: Any
    tokenizer: Any | None
    description: str
    random_weights: bool


def random_model(arch: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialised LlamaForCausalLM of ``arch``'s shape (see ARCHITECTURES)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(ARCHITECTURES[arch])
    spec.pop("name")
    rope_theta = spec.pop("rope_theta")
    config = LlamaConfig(**spec, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config.rope_theta = rope_theta
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def load_bench_model(name: str | None, device: str, random_init: str | None, dtype: str | None,
                     prepack: bool | None = None) -> BenchModel:
    """The embedded SmolLM2 (or ``name``) on ``device``; or a random-init stand-in of ``random_init``'s shape.

    ``prepack`` is ``load_model``'s (None: auto, oneDNN-packed linear weights for fp32 CPU models).
    """
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    ]
    if random_init:
        if random_init not in ARCHITECTURES:
            raise SystemExit(f"--random-init {random_init!r}: choose one of {sorted(ARCHITECTURES)}")
        model = random_model(random_init, device, torch_dtype)
        from langchain_persona_judge import prepack_linear_weights
        from langchain_persona_judge.decoding.cpu_kernels import should_prepack  # load_model's own rule

        if should_prepack(model, prepack):
            prepack_linear_weights(model)
        desc = (
            f"randomly initialised {ARCHITECTURES[random_init]['name']}-shaped Llama ({torch_dtype}); real "
            "weights could not be carried to this machine: timings reflect the architecture's cost, acceptance "
            "rates and texts do not reflect a trained model"
        )
        return BenchModel(model, None, desc, True)
    from langchain_persona_judge import load_model

    handle = load_model(name, device=device, dtype=torch_dtype, prepack=prepack, backend="transformers")
    model, tokenizer = handle.model, handle.tokenizer
    model.eval()
    label = name or "SmolLM2-135M-Instruct (embedded, de-quantised from Q4_1 GGUF)"
    return BenchModel(model, tokenizer, f"{label}, {torch_dtype}", False)


# -- hooks and meters --------------------------------------------------------------------------------


class ForwardCounter:
    """Counts forward passes and token positions fed, from a hook on the model itself (not the engine's books)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.positions = 0
        self.rows = 0
        """Batch rows over all forwards (a one-sequence forward is one row; lockstep feeds one per persona, plus
        the reference prompt's under guidance)."""
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        # Every row of a batched forward counts (the lockstep schedule feeds one row per persona).
        if ids is None:
            self.positions += int(kwargs["inputs_embeds"].shape[:-1].numel())
            self.rows += int(kwargs["inputs_embeds"].shape[0])
        else:
            self.positions += int(ids.numel())
            self.rows += int(ids.shape[0]) if ids.dim() > 1 else 1
        self.calls += 1

    def reset(self) -> None:
        self.calls = self.positions = self.rows = 0

    def remove(self) -> None:
        self.handle.remove()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the peak so far (monotonic, so only a rough figure)
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryMeter:
    """Peak memory a run adds on top of what was in use when it started, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact). CPU: the process's resident set size, sampled every
    10 ms by a thread after returning freed heap memory to the OS (``malloc_trim``), so approximate.
    """

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self.cuda = device.startswith("cuda")
        self.interval = interval
        self._peak = 0
        self._base = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryMeter:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _malloc_trim()
            self._base = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, _rss_bytes())

    @property
    def peak_mib(self) -> float:
        return max(0, self._peak - self._base) / 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now(device: str) -> float:
    sync(device)
    return time.perf_counter()


# -- machine ------------------------------------------------------------------------------------------


def machine_info(device: str, threads: int | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def kv_cache_mib(model: Any, tokens: int) -> float:
    """Size of one sequence's KV cache of ``tokens`` positions, from the model's config."""
    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * itemsize * tokens / 2**20


# -- the results writer -------------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Versions of what a figure depends on (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name, dist in (("torch", "torch"), ("transformers", "transformers"), ("llama_cpp", "llama-cpp-python"),
                       ("numpy", "numpy"), ("langchain_persona_judge", "langchain-persona-judge")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    """The repository's commit and whether its tracked files had uncommitted changes (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def command_line(module: str, argv: list[str] | None) -> str:
    """How the run was started, as a command to paste: ``python -m benchmarks.X ARGS`` (``argv``: the script's
    arguments; None: this process's own)."""
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return shlex.join(["python", "-m", module, *args])


def provenance(module: str, argv: list[str] | None, backend: str | list[str] | None, device: str = "cpu",
               threads: int | None = None) -> dict[str, Any]:
    """What a results file records about how it was made: the command, backend(s), machine (CPU model, cores,
    load), library versions, commit and time."""
    return {
        "command": command_line(module, argv),
        "backend": backend,
        "machine": machine_info(device, threads),
        "libraries": library_versions(),
        "git": git_commit(),
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(path: Path, report: dict[str, Any], *, module: str, argv: list[str] | None,
                  backend: str | list[str] | None, device: str = "cpu", threads: int | None = None,
                  indent: int | None = 1, default: Any = None) -> Path:
    """Writes ``report`` as JSON to ``path`` (atomically: a temporary file, then a rename) with a ``provenance``
    entry (:func:`provenance`) in front. Every benchmark writes its results through this."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"provenance": provenance(module, argv, backend, device, threads),
            **{k: v for k, v in report.items() if k != "provenance"}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=indent, ensure_ascii=False, default=default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
