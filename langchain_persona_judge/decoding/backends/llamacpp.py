"""The llama.cpp backend: a GGUF model run by llama.cpp (through ``llama-cpp-python``'s C API bindings).

Every sequence a rule needs (a persona, the reference prompt) is one sequence id of one llama.cpp context per
request, so a batch of rows needs no padding: the lockstep schedule feeds one token per row with that row's own
position in a single ``llama_decode``, and the speculative schedule's judge reads its ``λ + 1`` tokens in one
``llama_decode`` too; a rejection crops a sequence with ``llama_memory_seq_rm``. Logits are copied out as fp32
torch tensors on the CPU; everything the rules do with them (warping, masks, acceptance) is the same code as on
the transformers backend.

Quantised weights: llama.cpp multiplies quantised weights with activations it quantises to 8 bits on the fly,
so its logits differ slightly from a transformers model de-quantised from the same GGUF (enough to change a
near-tie greedy choice now and then); on unquantised (F32) weights the two backends agree.

Install: ``pip install 'langchain-persona-judge[llamacpp]'`` (builds llama.cpp; see the README for the flags
this project uses on CPUs without AVX-512).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import DecodingError, ModelLoadError
from ..options import DecodingStats
from .base import LockstepBatch, ModelBackend, Sequences, check_finite

INSTALL_HINT = (
    "the llama.cpp backend needs llama-cpp-python: pip install 'langchain-persona-judge[llamacpp]' "
    "(on CPUs where a native build fails with 'Illegal instruction', set "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_LLAMAFILE=OFF')"
)

_INIT = threading.Lock()
_BACKEND_READY = False


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _lib() -> Any:
    global _BACKEND_READY
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(INSTALL_HINT) from exc
    with _INIT:
        if not _BACKEND_READY:
            # llama-cpp-python prints llama.cpp's log at or above its logger's level: keep errors only, unless the
            # application set that logger's level itself.
            llama_log = logging.getLogger("llama-cpp-python")
            if llama_log.level == logging.NOTSET:
                llama_log.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _BACKEND_READY = True
    return llama_cpp


class LlamaCppModel(ModelBackend):
    """A GGUF model loaded by llama.cpp: pass it wherever a model goes (``generate``, ``ChatPersonaJudge``).

    Args:
        path: the ``.gguf`` file.
        tokenizer: its transformers tokenizer (``load_model`` reads it from the GGUF; the decoding rules need none).
        n_threads: CPU threads per decode (default: torch's thread count, so one setting governs both backends).
        n_gpu_layers: layers offloaded to a GPU when llama.cpp was built with one (default 0: CPU).
    """

    kind = "llamacpp"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tokenizer: Any = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        lib = _lib()
        self.path = Path(path)
        self.name = str(self.path)
        self.tokenizer = tokenizer
        if not self.path.is_file():
            raise ModelLoadError(f"GGUF file {self.path} does not exist; check the path.")
        params = lib.llama_model_default_params()
        params.n_gpu_layers = int(n_gpu_layers)
        self._lib = lib
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path}: the file is damaged or incomplete (an interrupted download "
                "or copy?), or not a GGUF model llama.cpp supports; download or convert it again."
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._n_ctx_train = int(lib.llama_model_n_ctx_train(self._model))
        self.n_threads = int(n_threads or torch.get_num_threads())
        self.device = torch.device("cpu")  # logits are copied to CPU tensors
        # The file's own end-of-sequence (and end-of-turn, when it declares one) ids, as transformers reads them
        # from the same file: not the end-of-turn token llama.cpp guesses from token texts when none is declared.
        eos = {int(lib.llama_vocab_eos(self._vocab))}
        if self.meta("tokenizer.ggml.eot_token_id") is not None:
            eos.add(int(lib.llama_vocab_eot(self._vocab)))
        self._eos = frozenset(t for t in eos if 0 <= t < self._n_vocab)

    # -- facts -------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def context_length(self) -> int | None:
        return self._n_ctx_train or None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (``general.architecture``, ``llama.block_count``...), or None."""
        import ctypes

        buffer = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace") if n >= 0 else None

    def fingerprint_parts(self) -> tuple[dict[str, Any], torch.Tensor]:
        """What identifies these weights as a transformers model of the same GGUF sees them: the config's shape
        (transformers' names) and the first 64 rows of the input embeddings (de-quantised), so that a profile
        learned on either backend is recognised on the other."""
        import gguf

        arch = self.meta("general.architecture") or ""

        def number(key: str) -> int | None:
            value = self.meta(f"{arch}.{key}")
            return int(value) if value is not None and value.lstrip("-").isdigit() else None

        shape = {
            "model_type": arch, "vocab_size": self.vocab_size, "hidden_size": number("embedding_length"),
            "num_hidden_layers": number("block_count"), "num_attention_heads": number("attention.head_count"),
            "intermediate_size": number("feed_forward_length"),
        }
        tensor = next(t for t in gguf.GGUFReader(str(self.path)).tensors if t.name == "token_embd.weight")
        rows = gguf.quants.dequantize(tensor.data[:64], tensor.tensor_type)
        return shape, torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    def __repr__(self) -> str:
        return f"LlamaCppModel({str(self.path)!r}, n_threads={self.n_threads})"

    # -- contexts ----------------------------------------------------------------------------------------

    def context(self, n_seqs: int, n_ctx: int, *, unified: bool = True) -> _Context:
        """A fresh llama.cpp context holding ``n_seqs`` sequences of up to ``n_ctx`` positions in all
        (``unified=False``: each sequence its own ``n_ctx / n_seqs`` positions, and its tokens attend to those
        alone rather than to the whole shared buffer: far cheaper for many long sequences)."""
        return _Context(self, n_seqs, n_ctx, unified)

    def sequences(self, prompt_lengths: list[int], capacity: int, stats: DecodingStats) -> LlamaCppSequences:
        return LlamaCppSequences(self, prompt_lengths, capacity, stats)

    def batch(self, rows: list[list[int]], capacity: int, stats: DecodingStats) -> LlamaCppBatch:
        return LlamaCppBatch(self, rows, capacity, stats)

    def prefers_lockstep(self) -> bool:
        # Measured on the embedded GGUF, one CPU thread (benchmarks/README.md, "Backends"): a decode of n tokens
        # costs about n single-token decodes in either layout, so the speculative schedule's λ drafter decodes
        # plus a (λ + 1)-token judge decode cost more per emitted token than one 2-row lockstep decode unless
        # nearly every draft is accepted: lockstep 61 tokens/s, speculative 49.
        return True

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


class _Context:
    """One llama.cpp context (KV cache for ``n_seqs`` sequences) and a reusable batch."""

    def __init__(self, model: LlamaCppModel, n_seqs: int, n_ctx: int, unified: bool = True) -> None:
        lib = model._lib
        self.lib, self.model = lib, model
        params = lib.llama_context_default_params()
        # Every sequence shares one KV buffer (kv_unified), sized for all of them; a batch holds a whole prompt.
        n_ctx = max(64, int(n_ctx))
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_ctx, 2048)
        params.n_seq_max = max(1, int(n_seqs))
        params.n_threads = params.n_threads_batch = model.n_threads
        if hasattr(params, "kv_unified"):
            params.kv_unified = unified
        if hasattr(params, "no_perf"):
            params.no_perf = True
        self.n_ctx, self.n_batch = n_ctx, params.n_batch
        self.ctx = lib.llama_init_from_model(model._model, params)
        if not self.ctx:
            raise DecodingError(f"llama.cpp could not create a context of {n_ctx} positions for {n_seqs} sequences.")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, params.n_seq_max)

    def decode(self, items: list[tuple[int, int, int, bool]], stats: DecodingStats) -> torch.Tensor:
        """Decode ``(token, position, sequence, wants_logits)`` items (in chunks of ``n_batch``); the logits of
        the items that want them, in order, ``(n, vocab)`` fp32."""
        out: list[np.ndarray] = []
        n_vocab = self.model.vocab_size
        for start in range(0, len(items), self.n_batch):
            chunk = items[start : start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            n_out = 0
            for i, (token, pos, seq, logits) in enumerate(chunk):
                b.token[i] = token
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = 1 if logits else 0
                n_out += bool(logits)
            status = self.lib.llama_decode(self.ctx, b)
            if status != 0:
                raise DecodingError(
                    f"llama.cpp could not decode a batch of {len(chunk)} tokens (llama_decode returned {status}); "
                    "the context may be full: shorten the conversation or max_tokens."
                )
            stats.forward_calls += 1
            stats.positions += len(chunk)
            if n_out:
                ptr = self.lib.llama_get_logits(self.ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(n_out, n_vocab)).copy())
        if not out:
            return torch.empty(0, n_vocab)
        return check_finite(torch.from_numpy(np.concatenate(out)))

    def crop(self, seq: int, length: int) -> None:
        if not self.lib.llama_memory_seq_rm(self.memory, seq, length, -1):
            raise DecodingError(f"llama.cpp could not crop sequence {seq} to {length} positions.")

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


def _budget(model: LlamaCppModel, lengths: list[int], capacity: int) -> int:
    """Positions a context needs for sequences of these prompt lengths that grow by ``capacity`` (+ drafts)."""
    total = sum(lengths) + len(lengths) * (capacity + 16)
    limit = model.context_length
    return total if limit is None else min(total, limit * len(lengths))


class LlamaCppSequences(Sequences):
    """Sequence ``i`` is sequence id ``i`` of one context."""

    def __init__(self, model: LlamaCppModel, prompt_lengths: list[int], capacity: int, stats: DecodingStats) -> None:
        super().__init__(stats)
        self.model = model
        self.lengths = [0] * len(prompt_lengths)
        self._context: _Context | None = model.context(len(prompt_lengths), _budget(model, prompt_lengths, capacity))

    def length(self, seq: int) -> int:
        return self.lengths[seq]

    def forward(self, seq: int, tokens: list[int], keep: int) -> torch.Tensor:
        if self._context is None:
            raise DecodingError("This decode was released; start a new one.")
        start, n = self.lengths[seq], len(tokens)
        logits = self._context.decode([(t, start + i, seq, i >= n - keep) for i, t in enumerate(tokens)], self.stats)
        self.lengths[seq] += n
        return logits

    def crop(self, seq: int, length: int) -> None:
        if length < self.lengths[seq] and self._context is not None:
            self._context.crop(seq, length)
            self.lengths[seq] = length

    def release(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        self.lengths = [0] * len(self.lengths)


class LlamaCppBatch(LockstepBatch):
    """Row ``r`` is sequence id ``r`` of one context; no padding (each row keeps its own positions)."""

    def __init__(self, model: LlamaCppModel, rows: list[list[int]], capacity: int, stats: DecodingStats) -> None:
        super().__init__(rows, stats)
        self.model = model
        self.context: _Context | None = model.context(len(rows), _budget(model, [len(r) for r in rows], capacity))
        self.lengths = [0] * len(rows)

    def prefill(self) -> torch.Tensor:
        assert self.context is not None
        items = [(t, i, r, i == len(row) - 1) for r, row in enumerate(self.rows) for i, t in enumerate(row)]
        logits = self.context.decode(items, self.stats)
        self.lengths = [len(row) for row in self.rows]
        return logits

    def step(self, token: int) -> torch.Tensor:
        assert self.context is not None
        logits = self.context.decode([(token, self.lengths[r], r, True) for r in range(len(self.rows))], self.stats)
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    @property
    def length(self) -> int:
        return max(self.lengths) if self.context is not None else 0

    def release(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = None
        self.lengths = [0] * len(self.rows)


def load_llamacpp(
    path: str | os.PathLike[str], *, tokenizer: Any = None, n_threads: int | None = None, n_gpu_layers: int = 0
) -> LlamaCppModel:
    """Load ``path`` (a ``.gguf`` file) with llama.cpp."""
    return LlamaCppModel(path, tokenizer=tokenizer, n_threads=n_threads, n_gpu_layers=n_gpu_layers)


__all__ = ["INSTALL_HINT", "LlamaCppModel", "llama_cpp_available", "load_llamacpp"]
