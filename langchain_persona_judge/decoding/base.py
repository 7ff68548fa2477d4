"""What every schedule of Persona-judge decoding shares.

A schedule is one subclass of :class:`Decoder` that implements :meth:`Decoder._iterate` (one step of the loop,
returning the tokens it emits). Everything else lives here, once:

1. **input checks**: prompts, constraint, the token budget the context leaves;
2. **model calls**: through the model's backend (:mod:`.backends`: transformers or llama.cpp), which counts
   forwards and refuses non-finite logits; repetition controls on what it returns;
3. **masks**: a constraint's mask, applied to the drafter's and the judge's logits alike;
4. **roles and budget**: who drafts and who judges in iteration ``k``, how many drafts it may make;
5. **emit**: append a token, trace where it came from, finish at EOS or the budget;
6. **driving**: :meth:`Decoder.steps`, :meth:`Decoder.release` and :class:`TokenStream`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..errors import ContextLengthError, DecodingError, InvalidArgumentError, InvalidInputError, InvalidOptionError
from .acceptance import build_processors, build_warpers, process
from .backends import ForwardSignature, ModelBackend, TransformersBackend, as_backend
from .options import DecodingOptions, FinishReason, Generation, DecodingStats, TokenConstraint, TokenKind, TraceEntry


def as_prompt(tokens: Any, index: int) -> torch.Tensor:
    """One persona's prompt as a 1-D LongTensor, or a clear error."""
    if not isinstance(tokens, torch.Tensor):
        raise InvalidArgumentError(
            f"prompts[{index}] is a {type(tokens).__name__}; pass a 1-D torch.LongTensor of token ids "
            "(for example tokenizer.apply_chat_template(..., return_tensors='pt')[0])."
        )
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1 or tokens.dtype not in (torch.long, torch.int, torch.int32):
        raise InvalidInputError(
            f"prompts[{index}] has shape {tuple(tokens.shape)} and dtype {tokens.dtype}; "
            "pass a 1-D tensor of integer token ids."
        )
    if tokens.numel() == 0:
        raise InvalidInputError(f"prompts[{index}] is empty; a persona prompt needs at least one token.")
    return tokens.long()


def context_limit(model: Any) -> int | None:
    """The context length of ``model`` (a :class:`~.backends.ModelBackend` or a transformers model), when known."""
    return as_backend(model).context_length


FIT_HINT = "shorten the conversation or the preference text"


def context_budget(limit: int | None, lengths: Iterable[int], max_new_tokens: int, fix: str = FIT_HINT) -> int:
    """The tokens an answer may take after prompts of ``lengths`` in a context of ``limit`` tokens (None: no
    limit): ``max_new_tokens``, or less when the context is nearly full. The one place the context limit is
    checked: a prompt that leaves no room raises ContextLengthError, whose message ends with ``fix``."""
    longest = max(lengths)
    if limit is None:
        return max_new_tokens
    if longest >= limit:
        raise ContextLengthError(
            f"The longest prompt is {longest} tokens with its preferences, but the model's context holds {limit} "
            f"(and the answer needs room too); {fix}.",
            longest,
            limit,
        )
    return min(max_new_tokens, limit - longest)


def eos_ids(model: Any, eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    """The token ids that end decoding: the option's, else the model's own (its generation config's, else its
    config's; a llama.cpp model's vocabulary's)."""
    if eos_token_id is None:
        return as_backend(model).eos_token_ids
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


class Decoder(ABC):
    """One request's Persona-judge decode. Iterate :meth:`steps` (or wrap it in a :class:`TokenStream`).

    Attributes after (or during) a run: ``token_ids``, ``finish_reason``, ``stats``, ``prompts``.
    """

    schedule: str = ""
    """The schedule's name (``DecodingOptions.schedule``)."""

    def __init__(
        self,
        model: Any,
        prompts: Sequence[torch.Tensor],
        options: DecodingOptions,
        constraint: TokenConstraint | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        if isinstance(prompts, torch.Tensor):
            raise InvalidArgumentError("prompts must be a sequence of 1-D tensors, one per persona, not a single tensor.")
        if not prompts:
            raise InvalidInputError("prompts is empty; pass one token tensor per persona (two or more for Persona-judge).")
        if constraint is not None and not isinstance(constraint, TokenConstraint):
            raise InvalidArgumentError("constraint must have allowed(), advance(token_id) and rollback(count) methods.")
        self.model = model
        self.backend: ModelBackend = as_backend(model)
        """What runs the forwards (:mod:`.backends`): transformers, or llama.cpp."""
        self.options = options
        self.constraint = constraint
        self.device = self.backend.device
        self.prompts: list[list[int]] = [as_prompt(p, i).tolist() for i, p in enumerate(prompts)]
        if options.needs_reference and reference is None:
            raise InvalidInputError(
                f"guidance={options.gamma}"
                + (f" with weights summing to {sum(options.weights or ())}" if options.gamma == 1.0 else "")
                + " reads a reference prompt; pass reference= (the token ids of the conversation with no "
                "preference, or with a negative one)."
            )
        self.reference: list[int] | None = (
            as_prompt(reference, len(self.prompts)).tolist() if reference is not None and options.needs_reference
            else None
        )
        """The reference prompt's ids, when the rule reads one (see :mod:`.combine`)."""
        if options.weights is not None and len(options.weights) != len(self.prompts):
            raise InvalidOptionError(
                f"weights has {len(options.weights)} value(s) but there are {len(self.prompts)} persona prompts; "
                "pass one weight per persona."
            )
        self.eos = eos_ids(self.backend, options.eos_token_id)
        self.processors = build_processors(options.repetition_penalty, options.no_repeat_ngram_size,
                                           options.eos_bias, self.eos)
        self.warpers = build_warpers(options.temperature, options.top_k, options.top_p)
        self.draft_confidence = options.draft_confidence or 0.0
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
        self.max_new_tokens = self._budget()

    @property
    def n_personas(self) -> int:
        return len(self.prompts)

    def _budget(self) -> int:
        rows = [*self.prompts, *([self.reference] if self.reference else [])]
        return context_budget(self.backend.context_length, [len(p) for p in rows], self.options.max_new_tokens)

    # -- 2. model calls (the backend runs them) -----------------------------------------------------------

    @property
    def forward_signature(self) -> ForwardSignature | None:
        """How the transformers model takes a cache (None on another backend)."""
        return self.backend.signature if isinstance(self.backend, TransformersBackend) else None

    def _process(self, logits: torch.Tensor, contexts: list[list[int]]) -> torch.Tensor:
        """Repetition controls on each row, after that row's answer tokens (see :func:`.acceptance.process`)."""
        return process(logits, self.processors, contexts) if self.processors else logits

    # -- 3. masks -----------------------------------------------------------------------------------------

    def _mask(self) -> torch.Tensor | None:
        """The constraint's mask for the next position, sized to the model's vocabulary."""
        if self.constraint is None:
            return None
        mask = self.constraint.allowed()
        if mask is None:
            return None
        vocab = self.backend.vocab_size
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

    # -- 4. roles and budget ------------------------------------------------------------------------------

    def _roles(self, iteration: int) -> tuple[int, int]:
        """(drafter, judge) of an iteration: persona ``k`` drafts, persona ``k + 1`` judges; roles rotate."""
        return iteration % self.n_personas, (iteration + 1) % self.n_personas

    def _draft_budget(self) -> int:
        """Drafts the next iteration may make: none with a single persona (it decodes plainly), and never
        past the token budget (the last token of the budget is the judge's)."""
        if self.n_personas == 1:
            return 0
        return min(self.options.lookahead, self.max_new_tokens - len(self.token_ids) - 1)

    def _doubts(self, probability: float) -> bool:
        """Whether a draft the drafter gave ``probability`` ends the drafting (``draft_confidence``)."""
        return probability < self.draft_confidence

    # -- 5. emit ------------------------------------------------------------------------------------------

    def _emit(self, token: int, drafter: int, judge: int, kind: TokenKind, iteration: int) -> bool:
        """Emit one decided token; True when decoding is over (an EOS, or the budget is spent)."""
        if token in self.eos:
            self.finish_reason = "stop"
            return True
        self.token_ids.append(token)
        self.stats.trace.append(TraceEntry(token, drafter, judge, kind, iteration))
        if len(self.token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            return True
        return False

    # -- 6. driving ---------------------------------------------------------------------------------------

    @abstractmethod
    def _iterate(self) -> list[int]:
        """One step of the schedule; the tokens it emits (an EOS that ends decoding included)."""

    def steps(self) -> Iterator[list[int]]:
        """Yield the tokens each step emits (EOS excluded), until EOS or the token budget."""
        try:
            while self.finish_reason is None:
                tokens = self._iterate()
                visible = [t for t in tokens if t not in self.eos]
                if visible:
                    yield visible
        finally:
            self.release()

    @abstractmethod
    def release(self) -> None:
        """Free the KV caches (called when the run ends or its consumer stops early)."""

    @property
    def generation(self) -> Generation:
        return Generation(list(self.token_ids), self.finish_reason, self.stats)


class TokenStream(Iterator[int]):
    """Iterator over emitted token ids, yielded as soon as each iteration decides them.

    ``generation`` holds the tokens, finish reason and stats so far (complete once exhausted).
    ``close()`` stops decoding and frees the caches.
    """

    def __init__(self, decoder: Decoder) -> None:
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


__all__ = ["Decoder", "TokenStream", "as_prompt", "context_budget", "context_limit", "eos_ids"]
