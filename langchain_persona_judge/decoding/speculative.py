"""The paper's schedule of Persona-judge decoding: λ drafter forwards, then one judge forward.

One model in memory, one cache per persona (a sequence of the backend's :class:`~.backends.Sequences`). Each iteration, persona ``k`` drafts up to ``lookahead``
tokens from its own prompt, and persona ``k + 1`` judges them all in one forward over its own prompt; accepted
drafts plus one residual or bonus token are emitted, both caches are cropped back to what was emitted, and the
roles rotate. Every emitted token is distributed exactly as the judge's (tempered, truncated) distribution at
its position.

Cache bookkeeping: a persona's cache holds a prefix of *its* sequence (its prompt followed by the shared
emitted tokens), possibly followed by speculative drafts during an iteration. The tokens of its sequence
that are not in the cache yet ("pending") are fed at the start of its next forward, so no forward after
a persona's first ever re-reads its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Any

import torch

from .acceptance import Verdict, greedy_verdict, sample, sample_verdict, to_probs
from .base import Decoder
from .options import DecodingOptions, TokenConstraint, TokenKind


class PersonaCache:
    """One persona's prompt and its sequence of the backend's caches."""

    def __init__(self, prompt: list[int], sequences: Any, index: int) -> None:
        self.prompt = prompt
        self.sequences = sequences
        self.index = index

    @property
    def cached(self) -> int:
        return self.sequences.length(self.index)

    @property
    def cache(self) -> Any:
        """The transformers ``DynamicCache`` of this persona (transformers backend only; tests, diagnostics)."""
        return self.sequences.caches[self.index]

    def pending(self, emitted: list[int]) -> list[int]:
        """Tokens of this persona's sequence (prompt + emitted) not yet in its cache."""
        cached, plen = self.cached, len(self.prompt)
        return self.prompt[cached:] + emitted if cached < plen else emitted[cached - plen :]

    def forward(self, tokens: list[int], keep: int) -> torch.Tensor:
        """Feed ``tokens`` to this persona's cache; the logits of the last ``keep`` positions."""
        return self.sequences.forward(self.index, tokens, keep)

    def rollback(self, keep_speculative: int, speculative: int) -> None:
        """Drop the drafts the judge did not accept from this cache."""
        if speculative > keep_speculative:
            self.sequences.crop(self.index, self.cached - (speculative - keep_speculative))


class SpeculativeDecoder(Decoder):
    """The paper's schedule: per iteration, λ one-token drafter forwards and one (λ + 1)-token judge forward.

    ``personas`` holds each persona's prompt and cache (exposed for tests and diagnostics).
    """

    schedule = "speculative"

    def __init__(
        self,
        model: Any,
        prompts: Sequence[torch.Tensor],
        options: DecodingOptions,
        constraint: TokenConstraint | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        super().__init__(model, prompts, options, constraint, reference)
        capacity = self.max_new_tokens + self.options.lookahead + 1  # emitted tokens, then the drafts past them
        self._sequences = self.backend.sequences([len(p) for p in self.prompts], capacity, self.stats)
        self.personas = [PersonaCache(prompt, self._sequences, i) for i, prompt in enumerate(self.prompts)]

    def _draft(
        self, drafter: PersonaCache, count: int
    ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor | None]]:
        """Sample (or argmax) up to ``count`` drafts; stop early at an EOS draft or a doubted one.

        Returns the drafts, their distributions (sampling only) and the constraint mask of every position,
        the bonus position included.
        """
        drafts: list[int] = []
        dists: list[torch.Tensor] = []
        masks: list[torch.Tensor | None] = []
        for i in range(count):
            feed = drafter.pending(self.token_ids) if i == 0 else [drafts[-1]]
            masks.append(self._mask())
            logits = self._process(drafter.forward(feed, keep=1), [self.token_ids + drafts])
            logits = self._apply(logits, masks[-1:])
            if self.generator is None:
                token = int(logits[-1].argmax())
                doubt = self.draft_confidence > 0 and self._doubts(
                    float(torch.softmax(logits[-1].float(), dim=-1)[token])
                )
            else:
                q = to_probs(logits, self.warpers)[-1]
                token = sample(q, self.generator)
                dists.append(q)
                doubt = self._doubts(float(q[token]))
            drafts.append(token)
            if self.constraint is not None:
                self.constraint.advance(token)
            if token in self.eos or doubt:
                break
        masks.append(self._mask() if not (drafts and drafts[-1] in self.eos) else None)
        return drafts, dists, masks

    def _judge(self, judge: PersonaCache, drafts: list[int], dists: list[torch.Tensor], masks) -> Verdict:
        """The judge reads every draft in one forward and accepts a prefix of them."""
        logits = judge.forward(judge.pending(self.token_ids) + drafts, keep=len(drafts) + 1)
        logits = self._apply(self._process(logits, [self.token_ids + drafts[:i] for i in range(len(drafts) + 1)]), masks)
        draft_ids = torch.tensor(drafts, dtype=torch.long, device=self.device)
        if self.generator is None:
            return greedy_verdict(draft_ids, logits)
        p = to_probs(logits, self.warpers)
        q = torch.stack(dists) if dists else p[:0]
        return sample_verdict(draft_ids, q, p, self.generator)

    @torch.inference_mode()
    def _iterate(self) -> list[int]:
        """1. draft, 2. judge, 3. crop the caches and the constraint back, 4. emit."""
        k = self.stats.iterations
        drafter_idx, judge_idx = self._roles(k)
        drafter, judge = self.personas[drafter_idx], self.personas[judge_idx]

        drafts, dists, masks = self._draft(drafter, self._draft_budget())
        verdict = self._judge(judge, drafts, dists, masks)

        # The drafter never fed its last draft, so it holds one speculative token fewer than the judge.
        judge.rollback(verdict.accepted, len(drafts))
        if drafts and drafter is not judge:
            drafter.rollback(verdict.accepted, len(drafts) - 1)
        ends_in_eos = any(t in self.eos for t in drafts[: verdict.accepted])
        if self.constraint is not None:
            self.constraint.rollback(len(drafts) - verdict.accepted)
            if not ends_in_eos:
                self.constraint.advance(verdict.next_token)

        emitted = drafts[: verdict.accepted]
        kinds: list[TokenKind] = ["accepted"] * verdict.accepted
        if not ends_in_eos:
            emitted.append(verdict.next_token)
            kinds.append("bonus" if verdict.is_bonus(len(drafts)) else "residual")
        self.stats.iterations += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += verdict.accepted
        out: list[int] = []
        for token, kind in zip(emitted, kinds):
            out.append(token)
            if self._emit(token, drafter_idx, judge_idx, kind, k):
                break
        return out

    def release(self) -> None:
        self._sequences.release()


__all__ = ["PersonaCache", "SpeculativeDecoder"]
