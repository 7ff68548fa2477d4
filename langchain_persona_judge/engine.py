"""Persona-judge decoding: token-level draft/judge speculative decoding between preference prompts.

Pure torch + transformers (no LangChain here). One model in memory, one ``DynamicCache`` per persona.

Each iteration, persona ``k`` drafts up to ``lookahead`` tokens from its own prompt, and persona ``k + 1``
judges them all in one forward over its own prompt; accepted drafts plus one residual or bonus token are
emitted, both caches are cropped back to what was emitted, and the roles rotate. Every emitted token is
distributed exactly as the judge's (tempered, truncated) distribution at its position.

Cache bookkeeping: a persona's cache holds a prefix of *its* sequence (its prompt followed by the shared
emitted tokens), possibly followed by speculative drafts during an iteration. The tokens of its sequence
that are not in the cache yet ("pending") are fed at the start of its next forward, so no forward after
a persona's first ever re-reads its prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from transformers import DynamicCache, PreTrainedModel

from .sampling import Verdict, build_warpers, greedy_verdict, sample_verdict, to_probs

TokenKind = Literal["accepted", "residual", "bonus"]
FinishReason = Literal["stop", "length"]
Schedule = Literal["speculative", "lockstep"]
SCHEDULES: tuple[Schedule, ...] = ("speculative", "lockstep")


class DecodingError(RuntimeError):
    """Decoding cannot go on (for example, the model produced non-finite logits)."""


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


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding options, validated on creation so bad values fail before any forward pass."""

    max_new_tokens: int = 256
    """Most tokens to emit (not counting the EOS that stops decoding)."""
    lookahead: int = 4
    """λ: drafts per iteration (the paper's default is 4)."""
    do_sample: bool = True
    """Sample (True) or take the argmax (False, deterministic)."""
    temperature: float = 1.0
    """Softmax temperature applied to both drafter and judge logits (sampling only)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None or 0: off)."""
    top_p: float | None = None
    """Nucleus sampling threshold in (0, 1] (None or 1: off)."""
    seed: int | None = None
    """Seed for the decoding RNG; the same seed gives the same tokens."""
    eos_token_id: int | list[int] | None = None
    """Token id(s) that end decoding; None takes the model's generation config."""
    draft_confidence: float = 0.0
    """Stop drafting early when the drafter's probability of the token it just drafted is below this (0: never).

    A draft the drafter itself doubts is likely to be rejected, and every draft after it is then wasted work.
    The rule looks only at the drafter's own distributions, so every emitted token still follows the judge's
    distribution exactly. ``lookahead`` stays the most drafts per iteration."""
    schedule: Schedule = "speculative"
    """How the forwards are laid out (the output's law is the same): ``speculative`` (the paper's: λ drafter
    forwards, then one judge forward over all drafts) or ``lockstep`` (all personas in one batched forward per
    emitted token, each draft verified as it is drafted; see :mod:`.lockstep`)."""

    def __post_init__(self) -> None:
        def fail(name: str, value: Any, need: str) -> None:
            raise ValueError(f"{name}={value!r} is invalid: {need}.")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            fail("max_new_tokens", self.max_new_tokens, "pass an integer >= 1")
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) or self.lookahead < 1:
            fail("lookahead", self.lookahead, "λ counts drafts per iteration; pass an integer >= 1 (the paper uses 4)")
        if not isinstance(self.temperature, (int, float)) or not (0 < self.temperature < float("inf")):
            fail("temperature", self.temperature, "pass a finite number > 0, or do_sample=False for greedy decoding")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            fail("top_k", self.top_k, "pass an integer >= 0 (0 or None turns it off)")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            fail("top_p", self.top_p, "pass a number in (0, 1] (1 or None turns it off)")
        if not isinstance(self.draft_confidence, (int, float)) or not 0 <= self.draft_confidence < 1:
            fail("draft_confidence", self.draft_confidence, "pass a probability in [0, 1) (0 turns it off)")
        if self.schedule not in SCHEDULES:
            fail("schedule", self.schedule, f"pass one of {', '.join(map(repr, SCHEDULES))}")


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


class _Persona:
    """One preference prompt with its own KV cache."""

    def __init__(self, prompt: torch.Tensor, model: PreTrainedModel) -> None:
        self.prompt = prompt.tolist()
        self.cache = DynamicCache(config=model.config)

    @property
    def cached(self) -> int:
        return self.cache.get_seq_length()

    def pending(self, emitted: list[int]) -> list[int]:
        """Tokens of this persona's sequence (prompt + emitted) not yet in its cache."""
        cached, plen = self.cached, len(self.prompt)
        return self.prompt[cached:] + emitted if cached < plen else emitted[cached - plen :]

    def rollback(self, keep_speculative: int, speculative: int) -> None:
        """Drop the drafts the judge did not accept from this cache."""
        if speculative > keep_speculative:
            self.cache.crop(keep_speculative - speculative)


def _as_prompt(tokens: Any, index: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(
            f"prompts[{index}] is a {type(tokens).__name__}; pass a 1-D torch.LongTensor of token ids "
            "(for example tokenizer.apply_chat_template(..., return_tensors='pt')[0])."
        )
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1 or tokens.dtype not in (torch.long, torch.int, torch.int32):
        raise ValueError(
            f"prompts[{index}] has shape {tuple(tokens.shape)} and dtype {tokens.dtype}; "
            "pass a 1-D tensor of integer token ids."
        )
    if tokens.numel() == 0:
        raise ValueError(f"prompts[{index}] is empty; a persona prompt needs at least one token.")
    return tokens.long()


def _eos_ids(model: PreTrainedModel, eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        gen_cfg = getattr(model, "generation_config", None)
        eos_token_id = getattr(gen_cfg, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


def context_limit(model: PreTrainedModel) -> int | None:
    """The model's context length in tokens, when its config says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class PersonaJudgeDecoder:
    """Runs Persona-judge decoding for one request. Iterate it (``steps()``) to drive it.

    Attributes after (or during) a run: ``token_ids``, ``finish_reason``, ``stats``, ``personas``
    (the per-persona caches, exposed for tests and diagnostics).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: Sequence[torch.Tensor],
        options: DecodingOptions,
        constraint: TokenConstraint | None = None,
    ) -> None:
        if isinstance(prompts, torch.Tensor):
            raise TypeError("prompts must be a sequence of 1-D tensors, one per persona, not a single tensor.")
        if not prompts:
            raise ValueError("prompts is empty; pass one token tensor per persona (two or more for Persona-judge).")
        if constraint is not None and not isinstance(constraint, TokenConstraint):
            raise TypeError("constraint must have allowed(), advance(token_id) and rollback(count) methods.")
        self.model = model
        self.options = options
        self.constraint = constraint
        self.device = model.device
        self.personas = [_Persona(_as_prompt(p, i).to("cpu"), model) for i, p in enumerate(prompts)]
        self.eos = _eos_ids(model, options.eos_token_id)
        self.warpers = build_warpers(options.temperature, options.top_k, options.top_p)
        self.generator: torch.Generator | None = None
        if options.do_sample:
            self.generator = torch.Generator(device=self.device)
            if options.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(options.seed)
        self.token_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.stats = DecodingStats()
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.max_new_tokens = self._budget()

    def _budget(self) -> int:
        limit = context_limit(self.model)
        longest = max(len(p.prompt) for p in self.personas)
        if limit is None:
            return self.options.max_new_tokens
        if longest >= limit:
            raise ValueError(
                f"A persona prompt is {longest} tokens long but the model's context holds {limit}; "
                "shorten the conversation or the preference text."
            )
        return min(self.options.max_new_tokens, limit - longest)

    # -- model calls -----------------------------------------------------------------------------

    def _forward(self, persona: _Persona, tokens: list[int], keep: int) -> torch.Tensor:
        """Feed ``tokens`` to ``persona``'s cache; return fp32-castable logits of the last ``keep`` positions."""
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "past_key_values": persona.cache, "use_cache": True}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits[0, -keep:]
        self.stats.forward_calls += 1
        self.stats.positions += len(tokens)
        if not torch.isfinite(logits).any(dim=-1).all() or torch.isnan(logits).any():
            raise DecodingError(
                "The model produced NaN or all-infinite logits; check the model's dtype (try dtype=torch.float32) "
                "and weights."
            )
        return logits

    def _mask(self) -> torch.Tensor | None:
        """The constraint's mask for the next position, sized to the model's vocabulary."""
        if self.constraint is None:
            return None
        mask = self.constraint.allowed()
        if mask is None:
            return None
        vocab = self.model.config.vocab_size if hasattr(self.model.config, "vocab_size") else mask.numel()
        mask = mask.to(device=self.device, dtype=torch.bool).flatten()
        if mask.numel() < vocab:  # the model's vocabulary is often padded past the tokenizer's
            mask = torch.cat([mask, mask.new_zeros(vocab - mask.numel())])
        if not mask.any():
            raise DecodingError("The token constraint allows no token at this position; check the grammar or schema.")
        return mask[:vocab]

    @staticmethod
    def _apply(logits: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
        """Disallowed tokens get -inf, row by row, before warping (so drafter and judge share the support)."""
        if all(m is None for m in masks):
            return logits
        logits = logits.float().clone()
        for row, mask in enumerate(masks):
            if mask is not None:
                logits[row, : mask.numel()].masked_fill_(~mask, float("-inf"))
        return logits

    def _draft(self, drafter: _Persona, count: int) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor | None]]:
        """Sample (or argmax) up to ``count`` drafts; stop early at an EOS draft.

        Returns the drafts, their distributions (sampling only) and the constraint mask of every position,
        the bonus position included.
        """
        drafts: list[int] = []
        dists: list[torch.Tensor] = []
        masks: list[torch.Tensor | None] = []
        for i in range(count):
            feed = drafter.pending(self.token_ids) if i == 0 else [drafts[-1]]
            masks.append(self._mask())
            logits = self._apply(self._forward(drafter, feed, keep=1), masks[-1:])
            if self.generator is None:
                token = int(logits[-1].argmax())
                doubt = self.options.draft_confidence > 0 and (
                    float(torch.softmax(logits[-1].float(), dim=-1)[token]) < self.options.draft_confidence
                )
            else:
                q = to_probs(logits, self.warpers)[-1]
                token = int(torch.multinomial(q, 1, generator=self.generator))
                dists.append(q)
                doubt = float(q[token]) < self.options.draft_confidence
            drafts.append(token)
            if self.constraint is not None:
                self.constraint.advance(token)
            if token in self.eos or doubt:
                break
        masks.append(self._mask() if not (drafts and drafts[-1] in self.eos) else None)
        return drafts, dists, masks

    # -- one iteration -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _iterate(self) -> list[int]:
        """Run one draft/judge iteration; return the tokens it emits (EOS included if hit)."""
        n_personas = len(self.personas)
        k = self.stats.iterations
        drafter_idx, judge_idx = k % n_personas, (k + 1) % n_personas
        drafter, judge = self.personas[drafter_idx], self.personas[judge_idx]
        remaining = self.max_new_tokens - len(self.token_ids)
        # A single persona decodes plainly; otherwise never draft past the token budget.
        count = 0 if n_personas == 1 else min(self.options.lookahead, remaining - 1)

        drafts, dists, masks = self._draft(drafter, count)
        judge_logits = self._forward(judge, judge.pending(self.token_ids) + drafts, keep=len(drafts) + 1)
        judge_logits = self._apply(judge_logits, masks)
        draft_ids = torch.tensor(drafts, dtype=torch.long, device=self.device)
        verdict: Verdict
        if self.generator is None:
            verdict = greedy_verdict(draft_ids, judge_logits)
        else:
            p = to_probs(judge_logits, self.warpers)
            q = torch.stack(dists) if dists else p[:0]
            verdict = sample_verdict(draft_ids, q, p, self.generator)

        # Crop both caches back to the accepted drafts (the drafter never fed its last draft).
        judge.rollback(verdict.accepted, len(drafts))
        if drafts and drafter is not judge:
            drafter.rollback(verdict.accepted, len(drafts) - 1)
        if self.constraint is not None:
            self.constraint.rollback(len(drafts) - verdict.accepted)
            if not any(t in self.eos for t in drafts[: verdict.accepted]):
                self.constraint.advance(verdict.next_token)

        emitted = drafts[: verdict.accepted]
        kinds: list[TokenKind] = ["accepted"] * verdict.accepted
        if not any(t in self.eos for t in emitted):
            emitted.append(verdict.next_token)
            kinds.append("bonus" if verdict.is_bonus(len(drafts)) else "residual")

        self.stats.iterations += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += verdict.accepted
        out: list[int] = []
        for token, kind in zip(emitted, kinds):
            if token in self.eos:
                self.finish_reason = "stop"
                out.append(token)
                break
            self.token_ids.append(token)
            self.stats.trace.append(TraceEntry(token, drafter_idx, judge_idx, kind, k))
            out.append(token)
            if len(self.token_ids) >= self.max_new_tokens:
                self.finish_reason = "length"
                break
        return out

    def steps(self) -> Iterator[list[int]]:
        """Yield the tokens each iteration emits (EOS excluded), until EOS or the token budget."""
        try:
            while self.finish_reason is None:
                tokens = self._iterate()
                visible = [t for t in tokens if t not in self.eos]
                if visible:
                    yield visible
        finally:
            self.release()

    def release(self) -> None:
        """Free the KV caches (called when the run ends or its consumer stops early)."""
        for persona in self.personas:
            persona.cache = DynamicCache(config=self.model.config)

    @property
    def generation(self) -> Generation:
        return Generation(list(self.token_ids), self.finish_reason, self.stats)


class TokenStream(Iterator[int]):
    """Iterator over emitted token ids, yielded as soon as each iteration decides them.

    ``generation`` holds the tokens, finish reason and stats so far (complete once exhausted).
    ``close()`` stops decoding and frees the caches.
    """

    def __init__(self, decoder: PersonaJudgeDecoder) -> None:
        self.decoder = decoder
        self._steps = decoder.steps()
        self._buffer: list[int] = []

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        while not self._buffer:
            self._buffer = list(next(self._steps))
        return self._buffer.pop(0)

    def chunks(self) -> Iterator[list[int]]:
        """Iterate per decoding iteration instead of per token."""
        if self._buffer:
            yield self._buffer
            self._buffer = []
        yield from self._steps

    def close(self) -> None:
        self._buffer = []
        self._steps.close()

    @property
    def generation(self) -> Generation:
        return self.decoder.generation


def stream(
    model: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    *,
    constraint: TokenConstraint | None = None,
    **options: Any,
) -> TokenStream:
    """Stream Persona-judge decoding: ``prompts[0]`` drafts first, ``prompts[1]`` judges first.

    Options are the fields of :class:`DecodingOptions`. Bad options or prompts raise before any forward.
    ``constraint`` (a :class:`TokenConstraint`) restricts the allowed tokens, for drafter and judge alike.
    """
    return TokenStream(make_decoder(model, prompts, _options(options), constraint))


def make_decoder(
    model: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    options: DecodingOptions,
    constraint: TokenConstraint | None = None,
) -> PersonaJudgeDecoder:
    """The decoder of ``options.schedule``."""
    if options.schedule == "lockstep":
        from .lockstep import LockstepDecoder  # imported here: it subclasses this module's decoder

        return LockstepDecoder(model, prompts, options, constraint)
    return PersonaJudgeDecoder(model, prompts, options, constraint)


def generate(
    model: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    *,
    constraint: TokenConstraint | None = None,
    **options: Any,
) -> Generation:
    """Decode to the end (EOS or ``max_new_tokens``) and return the :class:`Generation`."""
    tokens = stream(model, prompts, constraint=constraint, **options)
    for _ in tokens.chunks():
        pass
    return tokens.generation


def _options(options: dict[str, Any]) -> DecodingOptions:
    known = DecodingOptions.__dataclass_fields__.keys()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"Unknown decoding option(s) {unknown}; the options are {sorted(known)}.")
    return DecodingOptions(**options)
