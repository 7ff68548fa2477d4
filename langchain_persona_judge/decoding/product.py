"""The weighted product of the personas' distributions (MOD, Shi et al. 2024), one batched forward per token.

Each token is drawn from ``log p̃ = log p_0 + γ Σ_i w_i (log p_i − log p_0)`` (:func:`.combine.product`): with
``γ = 1`` and weights summing to 1 that is ``Σ_i w_i log p_i`` and no reference row is read; a token must be
likely under every persona, where Persona-judge lets each judge in turn decide alone. Temperature, top-k, top-p
and grammar masks apply to the combined distribution, as they do to a judge's.
"""

from __future__ import annotations

import torch

from . import combine
from .acceptance import sample, to_probs
from .batch import BatchedDecoder


class ProductDecoder(BatchedDecoder):
    """One token per step from the combined distribution; the trace names no drafter or judge (``-1``)."""

    schedule = "lockstep"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        weights = self.options.weights or [1.0 / self.n_personas] * self.n_personas
        self.weights = torch.tensor(weights, dtype=torch.float32)

    @torch.inference_mode()
    def _iterate(self) -> list[int]:
        """1. read every row, 2. combine, 3. mask and draw, 4. emit."""
        logits = self._processed_batch()
        reference = logits[self.n_personas] if self.reference is not None else None
        scores = combine.product(logits[: self.n_personas], self.weights, reference, self.options.gamma)
        scores = self._apply(scores.unsqueeze(0), [self._mask()])
        if self.generator is None:
            token = int(scores[0].argmax())
        else:
            token = sample(to_probs(scores, self.warpers)[0], self.generator)
        iteration = self.stats.iterations
        self.stats.iterations += 1
        self._emit(token, -1, -1, "combined", iteration)
        self._accept(token)
        return [token]


__all__ = ["ProductDecoder"]
