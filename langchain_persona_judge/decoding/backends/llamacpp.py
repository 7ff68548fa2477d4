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

from ...defaults import PROMPT_CACHE_DEFAULT, PROMPT_CACHE_ENV
from ...errors import DecodingError, ModelLoadError
from ..options import DecodingStats
from .base import LockstepBatch, ModelBackend, Sequences, check_finite, common_prefix, count_setting

INSTALL_HINT = (
    "the llama.cpp backend needs llama-cpp-python: pip install 'langchain-persona-judge[llamacpp]' "
    "(on CPUs where a native build fails with 'Illegal instruction', set "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_LLAMAFILE=OFF')"
)

UBATCH = 32
"""Tokens per llama.cpp micro-batch. llama.cpp's CPU flash attention reads 64 or more queries of a sequence with
another kernel, whose numbers differ (a position's logits up to 1.05 apart on the embedded model, two threads):
the logits of a prompt's positions then depended on how long the prompt was, so a prefix read from the prompt
cache (where a longer request had read it) did not give what a fresh context gives, and a seeded request decoded
another answer (``benchmarks/load.py``: 18 of 32 answers). Micro-batches under 64 tokens keep every position on
one kernel: cached and fresh are equal bit for bit, and decode steps keep flash attention's speed (26.0 ms a
2-row step, one thread, against 30.4 ms without flash attention); only long prompts read slower (2 x 500 tokens:
7.6 s against 6.3 s). Figures: ``benchmarks/results/llamacpp_flash_attention.json``."""

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
        prompt_cache: released contexts kept for their prompts' KV cache (:attr:`prompt_cache`; default
            ``$PERSONA_JUDGE_PROMPT_CACHE``, else 2; 0 turns it off).
    """

    kind = "llamacpp"

    flash_attention: bool = True
    """Whether contexts let llama.cpp use flash attention where it would (its default, ``auto``: on for a CPU);
    its decode steps are 15% faster here than without (:data:`UBATCH`)."""
    ubatch: int = UBATCH
    """Tokens per llama.cpp micro-batch of the lockstep contexts, the ones the prompt cache keeps (see
    :data:`UBATCH`): what keeps a position's logits independent of its batch, so that a cached prefix decodes what
    a fresh context decodes. Other contexts (the speculative schedule's, the profile scorer's) read whole
    batches."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tokenizer: Any = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        prompt_cache: int | None = None,
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
        self._idle: list[_Context] = []
        """Released lockstep contexts kept with their KV cache, most recent last (:meth:`lockstep_context`)."""
        self._idle_lock = threading.Lock()
        self.prompt_cache = _prompt_cache_setting() if prompt_cache is None else int(prompt_cache)

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

    def context(self, n_seqs: int, n_ctx: int, *, unified: bool = True, ubatch: int | None = None) -> _Context:
        """A fresh llama.cpp context holding ``n_seqs`` sequences of up to ``n_ctx`` positions in all
        (``unified=False``: each sequence its own ``n_ctx / n_seqs`` positions, and its tokens attend to those
        alone rather than to the whole shared buffer: far cheaper for many long sequences), reading ``ubatch``
        tokens per micro-batch (None: a whole batch, up to 2048)."""
        return _Context(self, n_seqs, n_ctx, unified, ubatch)

    prompt_cache: int
    """Released lockstep contexts kept for their prompts' KV cache (0: none). A new request whose rows begin with
    tokens such a context already holds (the same system prompt and persona, the earlier turns of the same
    conversation) decodes only the rest, as llama.cpp's own server does; its logits are bit-for-bit those of a
    fresh context (each sequence has its own part of the cache, so what is kept is laid out as a fresh decode
    would lay it out, and micro-batches of :data:`UBATCH` tokens keep every position on one attention kernel).
    Memory: each kept context holds up to ``rows x (prompt + max_tokens)`` positions."""

    def lockstep_context(self, rows: list[list[int]], capacity: int) -> tuple[_Context, list[int]]:
        """A context for ``rows`` that grow by ``capacity`` tokens, and how many leading tokens of each row it
        already holds: an idle context whose sequences share the longest prefixes with ``rows`` (cropped to
        them; at least each row's last token is left to decode, for its logits), else a fresh one."""
        need = max(len(r) for r in rows) + capacity + 16
        limit = self.context_length
        per_sequence = -(-need // 256) * 256  # whole 256s, so that contexts of similar requests are interchangeable
        if limit is not None:
            per_sequence = max(min(per_sequence, limit), min(need, limit))
        best, best_held = None, [-1]
        with self._idle_lock:
            for ctx in self._idle:
                if ctx.n_seqs < len(rows) or ctx.per_sequence < per_sequence:
                    continue
                # At least each row's last token is left to decode: its logits are the first step's.
                held = [min(common_prefix(ctx.tokens[r], row), len(row) - 1) for r, row in enumerate(rows)]
                if sum(held) >= sum(best_held):  # ties: the most recently released
                    best, best_held = ctx, held
            if best is not None:
                self._idle.remove(best)
        if best is None:
            # Micro-batches of UBATCH tokens: a prefix this context reads is what any later request would read.
            return self.context(len(rows), per_sequence * len(rows), unified=False, ubatch=self.ubatch), \
                [0] * len(rows)
        for r in range(best.n_seqs):  # the sequences beyond the rows are emptied
            best.crop(r, best_held[r] if r < len(rows) else 0)
        return best, best_held

    def release_context(self, ctx: _Context) -> None:
        """Keep ``ctx`` for :meth:`lockstep_context` (dropping the least recently released beyond
        :attr:`prompt_cache`), or free it when it is unusable or nothing is kept."""
        if not ctx.reusable or self.prompt_cache <= 0 or not getattr(self, "_model", None):
            ctx.close()
            return
        with self._idle_lock:
            self._idle.append(ctx)
            dropped = self._idle[: -self.prompt_cache]
            del self._idle[: -self.prompt_cache]
        for old in dropped:
            old.close()

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
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for ctx in idle:
            ctx.close()
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

    def __init__(self, model: LlamaCppModel, n_seqs: int, n_ctx: int, unified: bool = True,
                 ubatch: int | None = None) -> None:
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
        if ubatch is not None:  # else llama.cpp reads a whole batch at once (the scorer's large blocks)
            params.n_ubatch = min(params.n_batch, max(1, int(ubatch)))
        if hasattr(params, "flash_attn_type"):
            params.flash_attn_type = -1 if model.flash_attention else 0  # LLAMA_FLASH_ATTN_TYPE_AUTO / _DISABLED
        if hasattr(params, "no_perf"):
            params.no_perf = True
        self.n_ctx, self.n_batch = n_ctx, params.n_batch
        self.n_seqs = params.n_seq_max
        self.per_sequence = n_ctx if unified else n_ctx // self.n_seqs
        self.tokens: list[list[int]] = [[] for _ in range(self.n_seqs)]
        """Each sequence's tokens in the cache, by position (what a later request may reuse)."""
        self.reusable = not unified
        """Whether the cache is known to hold exactly :attr:`tokens` (False after a failed decode)."""
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
                self.reusable = False
                raise DecodingError(
                    f"llama.cpp could not decode a batch of {len(chunk)} tokens (llama_decode returned {status}); "
                    "the context may be full: shorten the conversation or max_tokens."
                )
            stats.forward_calls += 1
            stats.positions += len(chunk)
            for token, pos, seq, _ in chunk:
                held = self.tokens[seq]
                if pos != len(held):  # not the next position: the record no longer describes the cache
                    self.reusable = False
                    del held[pos:]
                held.append(token)
            if n_out:
                ptr = self.lib.llama_get_logits(self.ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(n_out, n_vocab)).copy())
        if not out:
            return torch.empty(0, n_vocab)
        return check_finite(torch.from_numpy(np.concatenate(out)))

    def crop(self, seq: int, length: int) -> None:
        if not self.lib.llama_memory_seq_rm(self.memory, seq, length, -1):
            self.reusable = False
            raise DecodingError(f"llama.cpp could not crop sequence {seq} to {length} positions.")
        del self.tokens[seq][length:]

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


def _prompt_cache_setting() -> int:
    return count_setting(PROMPT_CACHE_ENV, PROMPT_CACHE_DEFAULT, "contexts (0 turns it off)")


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
        self.context: _Context | None
        self.context, self.held = model.lockstep_context(rows, capacity)
        """``held[r]``: leading tokens of row ``r`` already in the context's cache (a prompt cache hit)."""
        self.lengths = [0] * len(rows)

    def prefill(self) -> torch.Tensor:
        assert self.context is not None
        items = [(t, i, r, i == len(row) - 1) for r, row in enumerate(self.rows)
                 for i, t in enumerate(row) if i >= self.held[r]]
        self.stats.prompt_cached += sum(self.held)
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
            self.model.release_context(self.context)
            self.context = None
        self.lengths = [0] * len(self.rows)


def load_llamacpp(
    path: str | os.PathLike[str], *, tokenizer: Any = None, n_threads: int | None = None, n_gpu_layers: int = 0,
    prompt_cache: int | None = None,
) -> LlamaCppModel:
    """Load ``path`` (a ``.gguf`` file) with llama.cpp."""
    return LlamaCppModel(path, tokenizer=tokenizer, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         prompt_cache=prompt_cache)


__all__ = ["INSTALL_HINT", "LlamaCppModel", "llama_cpp_available", "load_llamacpp"]
