"""The acceptance rule of speculative sampling, as pure tensor functions.

Kept apart from the decoding loop so that the rule itself can be tested on exact distributions
with hundreds of thousands of draws, without running a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

_NO_INPUT_IDS = torch.empty((0, 0), dtype=torch.long)


def build_warpers(temperature: float, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """The transformers warpers that turn raw logits into the tempered, truncated scores we sample from.

    The same list is applied to the drafter's and the judge's logits, which is what keeps the
    speculative-sampling theorem true for the truncated distribution.
    """
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(NucleusWarper(top_p))
    return warpers


class NucleusWarper(TopPLogitsWarper):
    """transformers' top-p warper without its sort of the whole vocabulary on every token.

    Keeps the same tokens: a token survives when the mass of the tokens scored above it is below ``top_p`` (the
    highest-scored token always does). The tokens that can survive lie among the ``k`` highest whenever those hold
    at least ``top_p`` of the mass, so a top-k of a few hundred (0.3 ms on a 49k vocabulary, against 2.8 ms per
    row for the sort) decides it; a flatter row falls back to transformers' full sort. The prefix sums are taken
    in float64, so only a token whose preceding mass lies within rounding of ``top_p`` can be decided
    differently from transformers' fp32 sums (which are the less exact of the two).
    """

    candidates = 256
    """How many of the highest-scored tokens the fast path looks at."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.candidates, scores.shape[-1])
        # Ranked by score, as transformers ranks them (probabilities can tie where the scores do not).
        order = scores.topk(k, dim=-1).indices
        top = torch.softmax(scores.double(), dim=-1).gather(-1, order)
        before = top.cumsum(dim=-1) - top  # the mass above each candidate
        # Every row must reach top_p within its candidates (NaN rows never do): then nothing beyond them survives.
        if k == scores.shape[-1] or bool(((before[..., -1] + top[..., -1]) >= self.top_p).all()):
            keep = before < self.top_p
            keep[..., : self.min_tokens_to_keep] = True
            kept = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, keep)
            return scores.masked_fill(~kept, self.filter_value)
        return super().__call__(input_ids, scores)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn from ``probs`` ((V,), non-negative, any positive total) by inversion of its float64 CDF.

    ``torch.multinomial`` draws as many exponentials as the vocabulary has tokens (0.9 ms on a 49k vocabulary);
    this draws one uniform ``u`` and returns the first token whose cumulative mass exceeds ``u`` times the
    total (0.03 ms). A token of zero probability is never returned: the cumulative mass does not rise at it.
    """
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand((), generator=generator, device=probs.device, dtype=torch.float64)
    token = int(torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True))
    if token >= probs.shape[-1]:  # u * total rounded up to the total: the last token with mass
        token = int((probs > 0).nonzero()[-1])
    return token


class EosBias(LogitsProcessor):
    """Adds ``bias`` to the logits of the end-of-turn tokens (the same at every position and in every row).

    Every rule is a log-linear combination of rows that carry the same bias, with weights that sum to 1 (the
    reference row takes the rest, :mod:`.combine`), so the combined distribution's log-odds of stopping shift by
    exactly ``bias``."""

    def __init__(self, bias: float, eos: frozenset[int]) -> None:
        self.bias = float(bias)
        self.eos = sorted(eos)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ids = [t for t in self.eos if t < scores.shape[-1]]
        if ids:
            scores = scores.clone()
            scores[..., ids] += self.bias
        return scores


def build_processors(
    repetition_penalty: float | None,
    no_repeat_ngram_size: int | None,
    eos_bias: float = 0.0,
    eos: frozenset[int] = frozenset(),
) -> LogitsProcessorList:
    """transformers' repetition controls and the end-of-turn bias, applied to every persona's logits alike
    before any rule combines them.

    They read the answer's tokens so far (the context every row shares), so at a given position every row is
    changed by the same function and each emitted token still follows the rule's (processed) distribution exactly.
    """
    processors = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if eos_bias and eos:
        processors.append(EosBias(eos_bias, eos))
    return processors


def process(logits: torch.Tensor, processors: LogitsProcessorList, contexts: list[list[int]]) -> torch.Tensor:
    """``logits`` (rows, V) with ``processors`` applied, row ``r`` after the answer tokens ``contexts[r]``."""
    if not processors:
        return logits
    scores = logits.float().clone()
    for row, context in enumerate(contexts):
        ids = torch.tensor([context], dtype=torch.long, device=scores.device)
        one = scores[row : row + 1]
        for processor in processors:
            one = processor(ids, one)
        scores[row] = one[0]
    return scores


_FP32_TEMPERATURES = (2.0**-100, 2.0**100)
"""Temperatures whose fp32 value and reciprocal are normal numbers: dividing fp32 scores by them is safe."""


def _fp32_safe(warpers: LogitsProcessorList) -> bool:
    """Whether every temperature among ``warpers`` lies in :data:`_FP32_TEMPERATURES`."""
    low, high = _FP32_TEMPERATURES
    return all(low <= w.temperature <= high for w in warpers if isinstance(w, TemperatureLogitsWarper))


def to_probs(logits: torch.Tensor, warpers: LogitsProcessorList) -> torch.Tensor:
    """Warped logits (any dtype) -> fp32 probabilities, one row per position; any finite temperature > 0.

    Each row is first shifted so that its largest score is 0, which changes neither the softmax nor top-k nor top-p
    but keeps the temperature from overflowing: every other score is finite-negative or -inf, so dividing by the
    temperature gives finite or -inf scores and a row that still has its 0 (ties share it).

    In fp32 a temperature below about 1e-45 rounds to 0 and one above about 3e38 to inf, and then ``0 / 0`` or
    ``-inf / inf`` is NaN; a temperature outside :data:`_FP32_TEMPERATURES` is applied in float64 instead (where
    every Python float is exact), with the other warpers and the softmax: quotients that overflow become -inf and
    the limits come out (all mass on the top score(s) as the temperature goes to 0, uniform as it goes to inf, with
    the scores' order kept for top-k and top-p as long as float64 can tell the quotients apart).
    """
    scores = logits.float()
    top = scores.amax(dim=-1, keepdim=True)
    scores = scores - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    if not _fp32_safe(warpers):
        scores = scores.double()
    # Called one by one: LogitsProcessorList.__call__ inspects each signature on every call (slow per token).
    for warper in warpers:
        scores = warper(_NO_INPUT_IDS, scores)
    return torch.softmax(scores, dim=-1).float()


@dataclass(frozen=True)
class Verdict:
    """The outcome of one judge pass over a run of drafts."""

    accepted: int
    """How many leading drafts the judge accepted."""
    next_token: int
    """The token emitted after the accepted drafts: a residual resample or a bonus token."""

    def is_bonus(self, drafted: int) -> bool:
        """Whether `next_token` came from the judge's last position (every draft accepted)."""
        return self.accepted == drafted


def sample_verdict(
    drafts: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None,
) -> Verdict:
    """Speculative sampling (Leviathan et al. 2023, Algorithm 1) for one run of drafts.

    Args:
        drafts: (n,) token ids the drafter sampled, ``drafts[i] ~ q[i]``.
        q: (n, V) fp32 draft distributions.
        p: (n + 1, V) fp32 judge distributions; ``p[n]`` is the bonus position.
        generator: the RNG for the uniforms and the resample.

    Draft i is accepted while ``u_i < p_i(t_i) / q_i(t_i)``; at the first rejection the next token is drawn
    from ``norm(max(0, p_i - q_i))``, and when every draft is accepted from ``p[n]``. The emitted token is
    then distributed exactly as ``p`` at its position.
    """
    n = drafts.shape[0]
    if n:
        rows = torch.arange(n, device=drafts.device)
        p_t, q_t = p[rows, drafts], q[rows, drafts]
        u = torch.rand(n, generator=generator, device=p.device, dtype=torch.float32)
        # u < p/q written without the division; q_t > 0 because the draft was sampled from q.
        rejected = (u * q_t >= p_t).nonzero()
        accepted = int(rejected[0, 0]) if rejected.numel() else n
    else:
        accepted = 0
    dist = residual_distribution(p[accepted], q[accepted]) if accepted < n else p[n]
    next_token = sample(dist, generator)
    return Verdict(accepted=accepted, next_token=next_token)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``: the law of the token emitted after a rejected draft."""
    residual = torch.clamp(p - q, min=0.0)
    total = residual.sum()
    # A rejection implies p(t) < q(t), so the residual has mass >= q(t) - p(t) > 0 in exact arithmetic;
    # if rounding ever empties it, p itself is the right law (the residual's limit as p -> q).
    return residual / total if total > 0 else p


def verify_one(draft: int, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None) -> tuple[bool, int]:
    """The rule for a single draft ``draft ~ q`` judged by ``p`` (both (V,) fp32).

    Returns ``(True, draft)`` with probability ``min(1, p(draft) / q(draft))``, else ``(False, t)`` with ``t``
    drawn from ``norm(max(0, p - q))``: the emitted token is distributed exactly as ``p``.
    """
    u = float(torch.rand((), generator=generator, device=p.device, dtype=torch.float32))
    if u * float(q[draft]) < float(p[draft]):
        return True, draft
    return False, sample(residual_distribution(p, q), generator)


def greedy_verdict(drafts: torch.Tensor, judge_logits: torch.Tensor) -> Verdict:
    """The same rule with one-hot distributions: accept while the judge's argmax equals the draft."""
    n = drafts.shape[0]
    choice = judge_logits.argmax(dim=-1)
    mismatch = (choice[:n] != drafts).nonzero()
    accepted = int(mismatch[0, 0]) if mismatch.numel() else n
    return Verdict(accepted=accepted, next_token=int(choice[accepted]))
