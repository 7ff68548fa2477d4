"""What the batched rules share: every persona (and the reference prompt, when the rule reads one) as one row
of the backend's :class:`~.backends.LockstepBatch`, advanced together by one forward per emitted token.

:class:`~.lockstep.LockstepDecoder` (Persona-judge) and
:class:`~.product.ProductDecoder` (the weighted product) build on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import combine
from .base import Decoder
from .options import DecodingOptions, TokenConstraint


class BatchRow:
    """One persona's row of the batch cache, seen like a speculative persona's own cache (tests, diagnostics)."""

    def __init__(self, decoder: LockstepDecoder, row: int) -> None:
        self._decoder = decoder
        self.row = row
        self.prompt = decoder.prompts[row]

    @property
    def cached(self) -> int:
        """Positions of the batch cache (the same for every row: left padding included); 0 once released."""
        return self._decoder._batch.length


class BatchedDecoder(Decoder):
    """Rows ``0..K-1`` are the personas, row ``K`` the reference prompt (when the rule reads one); one batched
    batch of the backend holds them all."""

    def __init__(
        self,
        model: Any,
        prompts: Sequence[torch.Tensor],
        options: DecodingOptions,
        constraint: TokenConstraint | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        super().__init__(model, prompts, options, constraint, reference)
        rows = [*self.prompts, *([self.reference] if self.reference is not None else [])]
        self._batch = self.backend.batch(rows, self.max_new_tokens, self.stats)
        self._logits: torch.Tensor | None = None
        """Next-token logits of every row, once the prompts are read."""
        self._unfed: int | None = None
        """The last emitted token, fed to every row at the start of the next step."""

    @property
    def personas(self) -> list[BatchRow]:
        """Each persona's row of the batch cache."""
        return [BatchRow(self, row) for row in range(self.n_personas)]

    def _advance_batch(self) -> torch.Tensor:
        """The logits of every row for the next position: read the prompts first, or feed the last token."""
        if self._logits is None:
            self._logits = self._batch.prefill()
        elif self._unfed is not None:
            self._logits = self._batch.step(self._unfed)
            self._unfed = None
        return self._logits

    def _processed_batch(self) -> torch.Tensor:
        """Every row's next-token logits, with the repetition controls applied (every row shares the answer)."""
        logits = self._advance_batch()
        return self._process(logits, [self.token_ids] * logits.shape[0]) if self.processors else logits

    def _persona_scores(self, rows: list[int]) -> torch.Tensor:
        """The next-token scores of persona ``rows``: repetition controls applied, then guided against the
        reference row when the rule reads one (``guidance``), else the raw logits."""
        logits = self._processed_batch()
        chosen = logits[rows]
        if self.reference is None:
            return chosen
        return combine.guided(chosen, logits[self.n_personas], self.options.gamma)

    def _accept(self, token: int) -> None:
        """After ``_emit``: advance the constraint and feed the token to every row at the next step."""
        if token not in self.eos:
            if self.constraint is not None:
                self.constraint.advance(token)
            self._unfed = token

    def release(self) -> None:
        self._batch.release()
        self._logits = None


__all__ = ["BatchRow", "BatchedDecoder"]
