"""What a decoding run is asked for and what it reports: options (validated once), trace, stats, result.

Pure data: no model calls here. Defaults come from :mod:`langchain_persona_judge.defaults`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from .. import defaults

TokenKind = Literal["accepted", "residual", "bonus", "combined"]
FinishReason = Literal["stop", "length"]
Schedule = Literal["speculative", "lockstep"]
SCHEDULES: tuple[Schedule, ...] = ("speculative", "lockstep")
"""The concrete schedules; ``DecodingOptions.schedule`` also takes ``"auto"`` (see :func:`.preferred_schedule`)."""
Combine = Literal["judge", "product"]
COMBINE_RULES: tuple[Combine, ...] = ("judge", "product")
"""How the personas' distributions make the emitted token's: Persona-judge, or the weighted product."""


@runtime_checkable
class TokenConstraint(Protocol):
    """Restricts which tokens may come next (a grammar, a JSON schema...), following the emitted text.

    The engine asks for the mask before each draft, advances the constraint with every draft, asks again
    after the last draft (the bonus position), and rolls the rejected drafts back. The SAME mask is applied
    to the drafter's and the judge's distribution at a position, so every emitted token follows the judge's
    distribution restricted to the allowed tokens, exactly.
    """

    def allowed(self) -> torch.Tensor | None:
        """A bool mask over the vocabulary of the tokens allowed next (None: no restriction)."""

    def advance(self, token_id: int) -> None:
        """Consume one token."""

    def rollback(self, count: int) -> None:
        """Undo the last ``count`` advances."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding options, validated on creation so bad values fail before any forward pass.

    The one configuration object of a decode: the chat model builds it from its fields, the CLI through the
    chat model, and :func:`~langchain_persona_judge.decoding.generate` from its keyword arguments.
    """

    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    """Most tokens to emit (not counting the EOS that stops decoding)."""
    lookahead: int = defaults.LOOKAHEAD
    """λ: drafts per iteration (the paper's default is 4)."""
    do_sample: bool = True
    """Sample (True) or take the argmax (False, deterministic)."""
    temperature: float = defaults.ENGINE_TEMPERATURE
    """Softmax temperature applied to both drafter and judge logits (sampling only)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None or 0: off)."""
    top_p: float | None = None
    """Nucleus sampling threshold in (0, 1] (None or 1: off)."""
    seed: int | None = None
    """Seed for the decoding RNG; the same seed gives the same tokens."""
    eos_token_id: int | list[int] | None = None
    """Token id(s) that end decoding; None takes the model's generation config."""
    draft_confidence: float | None = defaults.ENGINE_DRAFT_CONFIDENCE
    """Stop drafting early when the drafter's probability of the token it just drafted is below this (0: never;
    None: the schedule's default, see :func:`langchain_persona_judge.defaults.draft_confidence_for`).

    A draft the drafter itself doubts is likely to be rejected, and every draft after it is then wasted work.
    The rule looks only at the drafter's own distributions, so every emitted token still follows the judge's
    distribution exactly. ``lookahead`` stays the most drafts per iteration."""
    schedule: Schedule | Literal["auto"] = defaults.ENGINE_SCHEDULE  # type: ignore[assignment]
    """How the forwards are laid out (the output's law is the same): ``speculative`` (the paper's: λ drafter
    forwards, then one judge forward over all drafts), ``lockstep`` (all personas in one batched forward per
    emitted token, each draft verified as it is drafted; see :mod:`.lockstep`), or ``auto`` (lockstep where a
    few batch rows cost about one row, see :func:`~langchain_persona_judge.decoding.preferred_schedule`)."""

    combine: Combine = "judge"
    """``judge``: Persona-judge (the paper's rule; every token follows the current judge's distribution) or
    ``product``: the weighted product of the personas' distributions (``Σ w_i log p_i``; MOD), one batched
    forward per token. See :mod:`.combine`."""
    weights: tuple[float, ...] | None = None
    """One weight per persona, for ``combine="product"`` (None: uniform, summing to 1). Negative weights steer
    away from a persona. Persona-judge takes none (its roles rotate evenly)."""
    guidance: float = 1.0
    """γ: each persona's distribution becomes ``log p_0 + γ (log p_i − log p_0)`` against the reference prompt
    (passed as ``reference=``); 1 is the persona itself, above 1 amplifies the preference, below 0 steers away."""
    repetition_penalty: float | None = None
    """transformers' repetition penalty over the answer's tokens, applied to every persona's row alike before
    the rule combines them (None or 1: off; 1.1–1.3 is usual)."""
    no_repeat_ngram_size: int | None = None
    """Forbid repeating any n-gram of the answer of this size (None or 0: off), every row alike."""

    def __post_init__(self) -> None:
        def fail(name: str, value: Any, need: str) -> None:
            raise ValueError(f"{name}={value!r} is invalid: {need}.")

        if self.weights is not None and not isinstance(self.weights, tuple):
            if isinstance(self.weights, (str, bytes)) or not hasattr(self.weights, "__iter__"):
                fail("weights", self.weights, "pass a sequence of numbers, one per persona")
            object.__setattr__(self, "weights", tuple(self.weights))

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            fail("max_new_tokens", self.max_new_tokens, "pass an integer >= 1")
        if not _is_int(self.lookahead) or self.lookahead < 1:
            fail("lookahead", self.lookahead, "λ counts drafts per iteration; pass an integer >= 1 (the paper uses 4)")
        if not isinstance(self.do_sample, bool):
            fail("do_sample", self.do_sample, "pass True (sample) or False (greedy)")
        if not _is_real(self.temperature) or not (0 < self.temperature < math.inf):
            fail("temperature", self.temperature, "pass a finite number > 0, or do_sample=False for greedy decoding")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            fail("top_k", self.top_k, "pass an integer >= 0 (0 or None turns it off)")
        if self.top_p is not None and not (_is_real(self.top_p) and 0 < self.top_p <= 1):
            fail("top_p", self.top_p, "pass a number in (0, 1] (1 or None turns it off)")
        if self.seed is not None and (not _is_int(self.seed) or not -(2**63) <= self.seed < 2**64):
            fail("seed", self.seed, "pass an integer in [-2**63, 2**64) (torch's seed range) or None")
        if self.draft_confidence is not None and not (
            _is_real(self.draft_confidence) and 0 <= self.draft_confidence < 1
        ):
            fail("draft_confidence", self.draft_confidence, "pass a probability in [0, 1) (0 turns it off) or None")
        if self.schedule not in (*SCHEDULES, "auto"):
            fail("schedule", self.schedule, f"pass one of {', '.join(map(repr, (*SCHEDULES, 'auto')))}")
        if self.combine not in COMBINE_RULES:
            fail("combine", self.combine, f"pass one of {', '.join(map(repr, COMBINE_RULES))}")
        if not _is_real(self.guidance) or not math.isfinite(self.guidance):
            fail("guidance", self.guidance, "pass a finite number (1: the personas themselves, above 1: stronger)")
        if self.weights is not None:
            if not self.weights or not all(_is_real(w) and math.isfinite(w) for w in self.weights):
                fail("weights", self.weights, "pass one finite number per persona")
            if self.combine == "judge":
                fail("weights", self.weights, "weights apply to combine='product'; Persona-judge rotates its "
                     "roles evenly (pass combine='product', or leave weights unset)")
        if self.combine == "product" and self.schedule == "speculative":
            fail("schedule", self.schedule, "combine='product' reads every persona in one batched forward per "
                 "token; pass schedule='lockstep' or 'auto'")
        if self.guidance != 1.0 and self.schedule == "speculative":
            fail("schedule", self.schedule, "guidance reads the reference prompt in the same batched forward as "
                 "the personas; pass schedule='lockstep' or 'auto'")
        if self.repetition_penalty is not None and not (
            _is_real(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf
        ):
            fail("repetition_penalty", self.repetition_penalty, "pass a finite number > 0 (1 or None: off)")
        if self.no_repeat_ngram_size is not None and (
            not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0
        ):
            fail("no_repeat_ngram_size", self.no_repeat_ngram_size, "pass an integer >= 0 (0 or None: off)")

    @property
    def needs_reference(self) -> bool:
        """Whether the rule reads a reference prompt (γ ≠ 1, or product weights that do not sum to 1)."""
        if self.guidance != 1.0:
            return True
        return self.combine == "product" and self.weights is not None and abs(sum(self.weights) - 1.0) > 1e-9

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> DecodingOptions:
        """Options from keyword arguments; an unknown name is refused with the list of known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"Unknown decoding option(s) {unknown}; the options are {sorted(known)}.")
        return cls(**options)


@dataclass(frozen=True)
class TraceEntry:
    """Where one emitted token came from."""

    token_id: int
    drafter: int
    """Index of the persona that drafted in this token's iteration."""
    judge: int
    """Index of the persona whose distribution this token follows."""
    kind: TokenKind
    """``accepted`` draft, ``residual`` resample after a rejection, or ``bonus`` after all were accepted."""
    iteration: int


@dataclass
class DecodingStats:
    """Counters of one decoding run."""

    iterations: int = 0
    drafted: int = 0
    """Drafts proposed (over all iterations)."""
    accepted: int = 0
    """Drafts the judge accepted."""
    forward_calls: int = 0
    """Model forward passes, drafter and judge together."""
    positions: int = 0
    """Token positions fed to the model over all forwards (prompt reads included)."""
    trace: list[TraceEntry] = field(default_factory=list)
    """One entry per token in ``Generation.token_ids``."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def emitted(self) -> int:
        return len(self.trace)

    @property
    def tokens_per_iteration(self) -> float:
        return self.emitted / self.iterations if self.iterations else 0.0

    @property
    def forward_calls_per_token(self) -> float:
        return self.forward_calls / self.emitted if self.emitted else 0.0

    def to_dict(self, *, with_trace: bool = False) -> dict[str, Any]:
        """Plain numbers (and optionally the trace as dicts), for JSON and response metadata."""
        out: dict[str, Any] = {
            "iterations": self.iterations,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "forward_calls": self.forward_calls,
            "positions": self.positions,
            "emitted": self.emitted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "tokens_per_iteration": round(self.tokens_per_iteration, 4),
            "forward_calls_per_token": round(self.forward_calls_per_token, 4),
        }
        if with_trace:
            out["trace"] = [asdict(entry) for entry in self.trace]
        return out


@dataclass
class Generation:
    """The result of a decoding run."""

    token_ids: list[int]
    """Emitted ids, without the EOS that stopped decoding."""
    finish_reason: FinishReason | None
    """``stop`` (EOS), ``length`` (max_new_tokens or the context limit), None while still running."""
    stats: DecodingStats


__all__ = [
    "COMBINE_RULES",
    "SCHEDULES",
    "Combine",
    "DecodingOptions",
    "DecodingStats",
    "FinishReason",
    "Generation",
    "Schedule",
    "TokenConstraint",
    "TokenKind",
    "TraceEntry",
]
