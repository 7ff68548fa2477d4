"""The model interface the decoding rules talk to.

A decoding rule needs three things from a model, whatever runs it:

* **sequences with their own caches** (the speculative schedule): feed tokens to one sequence and get the
  logits of its last ``keep`` positions; crop a sequence back to a prefix after a rejection;
* **a batch advanced in lockstep** (the lockstep schedule, the weighted product, guidance): read every row's
  prompt, then feed one shared token to every row per step and get every row's next-token logits;
* a few facts: the logits' width (the vocabulary), the context length, the end-of-sequence ids, the device.

:class:`ModelBackend` is that interface, and it is also the one handle a loaded model is known by from
``load_model`` to the forward: it carries the tokenizer and the model's name too, so no layer asks which kind of
model it holds. :mod:`.hf` implements it over a transformers model (per-sequence
``DynamicCache``\\ s, a left-padded batch cache) and :mod:`.llamacpp` over a llama.cpp context (one sequence id
per row of one context, ``llama_memory_seq_rm`` to crop). A third backend is one more file that subclasses these
three classes and one branch of ``load_model``.

Every backend counts its forwards and positions into the :class:`~..options.DecodingStats` it is given, and
refuses non-finite logits (:func:`check_finite`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from ...errors import DecodingError, InvalidOptionError
from ..options import DecodingStats


NON_FINITE = (
    "The model produced NaN or all-infinite logits; check the model's dtype (try dtype=torch.float32) and weights."
)


def check_finite(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` unchanged, or a DecodingError when a row is NaN or has no finite entry."""
    # Fast path: a row's maximum is NaN when the row holds one, and finite when the row is finite-topped.
    if not logits.numel() or bool(torch.isfinite(logits.amax(dim=-1)).all()):
        return logits
    if not torch.isfinite(logits).any(dim=-1).all() or torch.isnan(logits).any():
        raise DecodingError(NON_FINITE)
    return logits


class Sequences(ABC):
    """``count`` sequences, each with its own cache (positions ``0..length(seq) - 1``)."""

    def __init__(self, stats: DecodingStats) -> None:
        self.stats = stats

    @abstractmethod
    def length(self, seq: int) -> int:
        """Positions held in ``seq``'s cache (0 once released)."""

    @abstractmethod
    def forward(self, seq: int, tokens: list[int], keep: int) -> torch.Tensor:
        """Feed ``tokens`` to ``seq`` after what it holds; the logits of the last ``keep`` positions,
        ``(keep, vocab)``, float."""

    @abstractmethod
    def crop(self, seq: int, length: int) -> None:
        """Keep only the first ``length`` positions of ``seq``."""

    @abstractmethod
    def release(self) -> None:
        """Free every sequence's cache."""


class LockstepBatch(ABC):
    """Rows (token prompts) advanced together: after :meth:`prefill`, each :meth:`step` feeds one token to
    every row."""

    def __init__(self, rows: list[list[int]], stats: DecodingStats) -> None:
        self.rows = rows
        self.stats = stats

    @abstractmethod
    def prefill(self) -> torch.Tensor:
        """Read every row's prompt; every row's next-token logits, ``(rows, vocab)``, float."""

    def prefill_chunks(self) -> Iterator[torch.Tensor | None]:
        """:meth:`prefill` in pieces that other work may run between: None after each piece but the last, then
        what :meth:`prefill` returns. One piece, unless the backend reads prompts in chunks."""
        yield self.prefill()

    @abstractmethod
    def step(self, token: int) -> torch.Tensor:
        """Feed ``token`` to every row; every row's next-token logits."""

    @property
    @abstractmethod
    def length(self) -> int:
        """Positions held per row (left padding included where the backend pads); 0 once released."""

    @abstractmethod
    def release(self) -> None:
        """Free the batch's cache."""


class ModelBackend(ABC):
    """One loaded model: the handle ``load_model`` returns and every layer reads the model's facts from.

    Besides the forwards, it knows its backend (:attr:`kind`), its tokenizer, its name, the logits' width, the
    context length, the end-of-sequence ids and the device.
    """

    kind: ClassVar[str] = ""
    """The backend's name, as ``backend=`` takes it and ``response_metadata["backend"]`` reports it."""

    name: str = ""
    """How the model is named to people: its id or path (empty when nobody named it)."""

    tokenizer: Any = None
    """The model's tokenizer (None when the model was wrapped without one: the decoding rules need none)."""

    device: torch.device
    """Where logits come from (and where the decoder's random generator lives)."""

    @property
    def weights(self) -> Any:
        """The object holding the weights: what shares one admission queue (the transformers model itself for a
        wrapped one, so that two handles of the same weights share it)."""
        return self

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The logits' width."""

    @property
    @abstractmethod
    def context_length(self) -> int | None:
        """The model's context length in tokens, when known."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]:
        """The model's own end-of-sequence ids (used when the options name none; a constraint's stop ids)."""

    @abstractmethod
    def sequences(self, prompt_lengths: list[int], capacity: int, stats: DecodingStats) -> Sequences:
        """Empty sequences with their own caches, one per prompt; each will hold its prompt and up to
        ``capacity`` more positions (emitted tokens and drafts)."""

    @abstractmethod
    def batch(self, rows: list[list[int]], capacity: int, stats: DecodingStats) -> LockstepBatch:
        """A lockstep batch of ``rows`` that will take up to ``capacity`` steps."""

    def prefers_lockstep(self) -> bool:
        """Whether ``schedule="auto"`` should pick lockstep over speculative on this backend."""
        return False

    def shared_batch(self) -> Any | None:
        """An empty batch several requests' rows can share, one forward per step for all of them (continuous
        batching, :mod:`..batching`); None where this backend has none."""
        return None


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def count_setting(env: str, default: int, expected: str) -> int:
    """A non-negative count from the environment variable ``env`` (``default`` when unset); an
    InvalidOptionError saying ``expected a count of <expected>`` otherwise."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise InvalidOptionError(f"{env}={raw!r}: expected a count of {expected}.")
    return int(raw)


__all__ = ["NON_FINITE", "LockstepBatch", "ModelBackend", "Sequences", "check_finite", "common_prefix",
           "count_setting"]
