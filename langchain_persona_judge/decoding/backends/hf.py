"""The transformers backend: a ``PreTrainedModel``, one ``DynamicCache`` per sequence, a left-padded batch cache.

Left padding keeps every row's last token in the batch's last column, so one new column serves all rows; each
row counts positions from its own first real token.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from ...defaults import PREFILL_CHUNK_ACCELERATOR, PREFILL_CHUNK_CPU, PREFILL_CHUNK_ENV
from ...errors import InvalidOptionError
from ..options import DecodingStats
from .base import LockstepBatch, ModelBackend, Sequences, check_finite, count_setting


class ForwardSignature:
    """How this model's ``forward`` takes what decoding passes, probed once per model.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and is to go in 5.40, where
    passing it would silently decode without a cache); we pass whichever name the model declares.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_logits = "logits_to_keep" in parameters
        self.takes_positions = "position_ids" in parameters


def config_context_length(model: Any) -> int | None:
    """A transformers model's context length in tokens, when its config says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _ids(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset()
    return frozenset([int(value)]) if isinstance(value, int) else frozenset(int(t) for t in value)


class TransformersBackend(ModelBackend):
    """A transformers causal LM (``model``), unchanged; any device and dtype.

    Args:
        model: the ``PreTrainedModel``.
        tokenizer: its tokenizer (what the runtime encodes with; the decoding rules need none).
        name: how the model is named to people (default: its config's ``_name_or_path``).
        prefill_chunk: prompt columns per prefill forward of a lockstep batch (:attr:`prefill_chunk`; default
            ``$PERSONA_JUDGE_PREFILL_CHUNK``, else 128 on a CPU and 512 on an accelerator; 0: the whole prompt in
            one forward).
    """

    kind = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None, name: str | None = None,
                 prefill_chunk: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.device = model.device
        self.signature = ForwardSignature(model)
        self.prefill_chunk = (_prefill_chunk_setting(self.device.type) if prefill_chunk is None
                              else _checked_chunk(prefill_chunk))

    prefill_chunk: int
    """A lockstep batch reads its prompts this many columns per forward (0: all at once). Under continuous
    batching the other requests' steps run between a newcomer's chunks, so a long prompt stalls them for one
    chunk at a time, not for the whole prefill. A lone request reads its prompt in the same chunks, so its tokens
    are the same alone or batched; chunked and whole prefills agree to float rounding."""

    @property
    def weights(self) -> PreTrainedModel:
        return self.model

    @property
    def vocab_size(self) -> int:
        return int(getattr(self.model.config, "vocab_size", 0) or self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int | None:
        return config_context_length(self.model)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The generation config's EOS ids, else the model config's, else the tokenizer's."""
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None and eos != []:
                return _ids(eos)
        return _ids(getattr(self.tokenizer, "eos_token_id", None))

    def __repr__(self) -> str:
        return f"TransformersBackend({self.name!r}, device={self.device})"

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def call(self, ids: torch.Tensor, cache: Any, keep: int, stats: DecodingStats, check: bool = True,
             **extra: Any) -> torch.Tensor:
        """One forward over ``ids`` (rows x new tokens) with ``cache``; logits of the last ``keep`` positions."""
        kwargs: dict[str, Any] = {"input_ids": ids, self.signature.cache_argument: cache, "use_cache": True}
        if self.signature.keeps_logits:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs, **extra).logits[:, -keep:]
        stats.forward_calls += 1
        stats.positions += ids.numel()
        return check_finite(logits) if check else logits

    def sequences(self, prompt_lengths: list[int], capacity: int, stats: DecodingStats) -> TransformersSequences:
        return TransformersSequences(self, len(prompt_lengths), stats)

    def batch(self, rows: list[list[int]], capacity: int, stats: DecodingStats) -> TransformersBatch:
        return TransformersBatch(self, rows, capacity, stats)

    def prefers_lockstep(self) -> bool:
        # Where a few rows cost about one: an accelerator, or a CPU with prepacked fp32 weights.
        from ..cpu_kernels import is_prepacked

        return self.device.type != "cpu" or is_prepacked(self.model)

    def shared_batch(self) -> Any | None:
        from .hf_shared import TransformersSharedBatch, supports_shared_batch

        return TransformersSharedBatch(self) if supports_shared_batch(self) else None


class TransformersSequences(Sequences):
    def __init__(self, backend: TransformersBackend, count: int, stats: DecodingStats) -> None:
        super().__init__(stats)
        self.backend = backend
        self.caches = [backend.new_cache() for _ in range(count)]

    def length(self, seq: int) -> int:
        return self.caches[seq].get_seq_length()

    def forward(self, seq: int, tokens: list[int], keep: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.backend.device)
        return self.backend.call(ids, self.caches[seq], keep, self.stats)[0]

    def crop(self, seq: int, length: int) -> None:
        drop = self.length(seq) - length
        if drop > 0:  # a negative count drops that many (5.x takes no absolute length)
            self.caches[seq].crop(-drop)

    def release(self) -> None:
        self.caches = [self.backend.new_cache() for _ in self.caches]


class TransformersBatch(LockstepBatch):
    """Rows left-padded to the longest; one batched ``DynamicCache``."""

    def __init__(self, backend: TransformersBackend, rows: list[list[int]], capacity: int, stats: DecodingStats):
        super().__init__(rows, stats)
        self.backend = backend
        lengths = [len(p) for p in rows]
        width = max(lengths)
        self._ids = torch.zeros(len(rows), width, dtype=torch.long)
        self._attention = torch.zeros(len(rows), width + capacity, dtype=torch.long, device=backend.device)
        for row, prompt in enumerate(rows):
            self._ids[row, width - lengths[row] :] = torch.tensor(prompt)
            self._attention[row, width - lengths[row] :] = 1
        self._columns = 0
        self.cache = backend.new_cache()

    def _forward(self, ids: torch.Tensor, columns: int, check: bool = True) -> torch.Tensor:
        self._columns += columns
        attention = self._attention[:, : self._columns]
        extra = {"attention_mask": attention}
        if self.backend.signature.takes_positions:
            # Each row counts positions from its own first real token, whatever its padding.
            extra["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)[:, -columns:]
        return self.backend.call(ids.to(self.backend.device), self.cache, 1, self.stats, check=check,
                                 **extra)[:, -1]

    def prefill(self) -> torch.Tensor:
        for logits in self.prefill_chunks():
            pass
        assert logits is not None
        return logits

    def prefill_chunks(self) -> Iterator[torch.Tensor | None]:
        """Read the prompts :attr:`~TransformersBackend.prefill_chunk` columns per forward: None after each chunk
        but the last, then every row's next-token logits (the scheduler runs other steps in between)."""
        width = self._ids.shape[1]
        chunk = self.backend.prefill_chunk or width
        for start in range(0, width, chunk):
            ids = self._ids[:, start : start + chunk]
            if start + chunk < width:
                # A chunk's last column may be a row's left padding: its logits are neither kept nor checked.
                self._forward(ids, ids.shape[1], check=False)
                yield None
            else:
                yield self._forward(ids, ids.shape[1])

    def step(self, token: int) -> torch.Tensor:
        return self._forward(torch.full((self._ids.shape[0], 1), token, dtype=torch.long), 1)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def attention_mask(self) -> torch.Tensor:
        """(rows, positions held) of 1 where a row attends, 0 for its left padding."""
        return self._attention[:, : self._columns]

    def release(self) -> None:
        self.cache = self.backend.new_cache()


def _checked_chunk(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidOptionError(f"prefill_chunk={value!r}: pass a count of prompt columns (0: no chunking).")
    return value


def _prefill_chunk_setting(device_type: str) -> int:
    default = PREFILL_CHUNK_CPU if device_type == "cpu" else PREFILL_CHUNK_ACCELERATOR
    return count_setting(PREFILL_CHUNK_ENV, default, "prompt columns (0: no chunking)")


__all__ = ["ForwardSignature", "TransformersBackend", "config_context_length"]
