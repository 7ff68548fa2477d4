"""The lockstep schedule of Persona-judge decoding: every persona reads each token in one batched forward.

The paper's schedule (``schedule="speculative"``, :class:`~.speculative.SpeculativeDecoder`) runs λ one-token
forwards of the drafter, then one (λ + 1)-token forward of the judge, and crops both caches after a rejection:
``λ + 1`` forwards per iteration for ``accepted + 1`` tokens. This schedule instead puts the personas in one
batch (left-padded to the longest prompt) and advances them together: each forward gives the drafter's ``q``
and the judge's ``p`` at the same position, so the draft is sampled from ``q`` and verified against ``p`` at
once, and the emitted token is fed to every persona in the next forward. Same rule, same iterations (drafts,
acceptance, residual, bonus, role rotation), hence the same law of the output, and in greedy mode the same
tokens, but:

* one forward per emitted token, and no draft is ever computed past a rejection (nothing to crop);
* each forward has one row per persona. Where a few rows cost about what one row costs (a GPU, or a CPU with
  prepacked weights, see :mod:`.cpu_kernels`), that is close to plain decoding's cost per token.

The trade: the judge no longer scores the λ drafts in one forward of its own; it scores each as it is drafted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .acceptance import to_probs, verify_one
from .base import Decoder
from .options import DecodingOptions, TokenConstraint, TokenKind


class BatchRow:
    """One persona's row of the batch cache, seen like a speculative persona's own cache (tests, diagnostics)."""

    def __init__(self, decoder: LockstepDecoder, row: int) -> None:
        self._decoder = decoder
        self.row = row
        self.prompt = decoder.prompts[row]

    @property
    def cached(self) -> int:
        """Positions of the batch cache (the same for every row: left padding included); 0 once released."""
        return self._decoder._batch_cache.get_seq_length()


class LockstepDecoder(Decoder):
    """Persona-judge decoding with all personas in one batch; one batched forward per emitted token.

    ``_iterate`` emits exactly one token per call (drafts are verified as they are drafted), so a stream
    yields every token as soon as it is decided. One batched ``DynamicCache`` holds every persona's sequence,
    row ``i`` for ``prompts[i]``.
    """

    schedule = "lockstep"

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: Sequence[torch.Tensor],
        options: DecodingOptions,
        constraint: TokenConstraint | None = None,
    ) -> None:
        super().__init__(model, prompts, options, constraint)
        lengths = [len(p) for p in self.prompts]
        width = max(lengths)
        rows = len(self.prompts)
        # Left padding keeps every row's last token in the last column, so one new column serves all rows.
        self._ids = torch.zeros(rows, width, dtype=torch.long)
        self._attention = torch.zeros(rows, width + self.max_new_tokens, dtype=torch.long, device=self.device)
        for row, prompt in enumerate(self.prompts):
            self._ids[row, width - lengths[row] :] = torch.tensor(prompt)
            self._attention[row, width - lengths[row] :] = 1
        self._columns = width
        self._batch_cache = DynamicCache(config=model.config)
        self._logits: torch.Tensor | None = None
        """Next-token logits of every persona (rows), once the prompts are read."""
        self._unfed: int | None = None
        """The last emitted token, fed to every persona at the start of the next step."""
        self._drafts_left: int | None = None
        """Drafts still allowed in the current iteration (None: the next step starts an iteration)."""
        self._roles_now = (0, 0)

    @property
    def personas(self) -> list[BatchRow]:
        """Each persona's row of the batch cache."""
        return [BatchRow(self, row) for row in range(self.n_personas)]

    # -- the batched forward -------------------------------------------------------------------------

    def _batch_forward(self, ids: torch.Tensor, columns: int) -> None:
        """Feed ``ids`` (rows x new columns) to the batch cache; keep every row's next-token logits."""
        self._columns += columns
        attention = self._attention[:, : self._columns]
        extra = {"attention_mask": attention}
        if self.forward_signature.takes_positions:
            # Each row counts positions from its own first real token, whatever its padding.
            extra["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)[:, -columns:]
        self._logits = self._call_model(ids.to(self.device), self._batch_cache, 1, **extra)[:, -1]

    def _advance_batch(self) -> torch.Tensor:
        """The logits for the next position: read the prompts first, or feed the last emitted token."""
        if self._logits is None:
            self._columns = 0
            self._batch_forward(self._ids, self._ids.shape[1])
        elif self._unfed is not None:
            ids = torch.full((self.n_personas, 1), self._unfed, dtype=torch.long)
            self._unfed = None
            self._batch_forward(ids, 1)
        assert self._logits is not None
        return self._logits

    # -- one step: one emitted token -------------------------------------------------------------------

    def _decide(self, logits: torch.Tensor) -> tuple[int, TokenKind]:
        """Draft and verify (or, when no draft is left, take the bonus) from rows [drafter, judge]."""
        assert self._drafts_left is not None
        if self._drafts_left == 0:
            if self.generator is None:
                return int(logits[1].argmax()), "bonus"
            p = to_probs(logits[1:], self.warpers)[0]
            return int(torch.multinomial(p, 1, generator=self.generator)), "bonus"

        self.stats.drafted += 1
        self._drafts_left -= 1
        if self.generator is None:
            draft, choice = logits.argmax(dim=-1).tolist()
            accepted, token = draft == choice, choice
            doubt = self.draft_confidence > 0 and self._doubts(float(torch.softmax(logits[0].float(), dim=-1)[draft]))
        else:
            probs = to_probs(logits, self.warpers)
            draft = int(torch.multinomial(probs[0], 1, generator=self.generator))
            doubt = self._doubts(float(probs[0, draft]))
            accepted, token = verify_one(draft, probs[0], probs[1], self.generator)
        if not accepted:
            self._drafts_left = None  # a rejection ends the iteration
            return token, "residual"
        self.stats.accepted += 1
        if doubt or token in self.eos:
            self._drafts_left = 0  # what the speculative drafter does: stop drafting, the judge's bonus follows
        return token, "accepted"

    @torch.inference_mode()
    def _iterate(self) -> list[int]:
        """1. start an iteration if none is open, 2. read the batch, 3. decide one token, 4. emit it."""
        if self._drafts_left is None:
            k = self.stats.iterations
            self.stats.iterations += 1
            self._roles_now = self._roles(k)
            self._drafts_left = self._draft_budget()
        drafter, judge = self._roles_now
        logits = self._advance_batch()[[drafter, judge]]
        mask = self._mask()
        token, kind = self._decide(self._apply(logits, [mask, mask]))
        if kind == "bonus":
            self._drafts_left = None
        self._emit(token, drafter, judge, kind, self.stats.iterations - 1)
        if token not in self.eos:
            if self.constraint is not None:
                self.constraint.advance(token)
            self._unfed = token
        return [token]

    def release(self) -> None:
        self._batch_cache = DynamicCache(config=self.model.config)
        self._logits = None


__all__ = ["BatchRow", "LockstepDecoder"]
