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

import torch

from .acceptance import sample, to_probs, verify_one
from .batch import BatchedDecoder
from .options import TokenKind


class LockstepDecoder(BatchedDecoder):
    """Persona-judge decoding with all personas in one batch; one batched forward per emitted token.

    ``_iterate`` emits exactly one token per call (drafts are verified as they are drafted), so a stream
    yields every token as soon as it is decided. With ``guidance`` the batch also holds the reference row and
    each persona's distribution is its guided one (:func:`.combine.guided`).
    """

    schedule = "lockstep"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._drafts_left: int | None = None
        """Drafts still allowed in the current iteration (None: the next step starts an iteration)."""
        self._roles_now = (0, 0)

    # -- one step: one emitted token -------------------------------------------------------------------

    def _decide(self, logits: torch.Tensor) -> tuple[int, TokenKind]:
        """Draft and verify (or, when no draft is left, take the bonus) from rows [drafter, judge]."""
        assert self._drafts_left is not None
        if self._drafts_left == 0:
            if self.generator is None:
                return int(logits[1].argmax()), "bonus"
            p = to_probs(logits[1:], self.warpers)[0]
            return sample(p, self.generator), "bonus"

        self.stats.drafted += 1
        self._drafts_left -= 1
        if self.generator is None:
            draft, choice = logits.argmax(dim=-1).tolist()
            accepted, token = draft == choice, choice
            doubt = self.draft_confidence > 0 and self._doubts(float(torch.softmax(logits[0].float(), dim=-1)[draft]))
        else:
            if self._roles_now[0] == self._roles_now[1]:  # one persona drafts and judges: warp its row once
                probs = to_probs(logits[:1], self.warpers).expand(2, -1)
            else:
                probs = to_probs(logits, self.warpers)
            draft = sample(probs[0], self.generator)
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
        logits = self._persona_scores([drafter, judge])
        mask = self._mask()
        token, kind = self._decide(self._apply(logits, [mask, mask]))
        if kind == "bonus":
            self._drafts_left = None
        self._emit(token, drafter, judge, kind, self.stats.iterations - 1)
        self._accept(token)
        return [token]


__all__ = ["LockstepDecoder"]
