"""The decoding rules: Persona-judge over a causal LM's personas, on a transformers or llama.cpp backend.

Layer L1: imports only :mod:`langchain_persona_judge.errors` and :mod:`~langchain_persona_judge.defaults` from
the package, never LangChain, the persona registry or the runtime.

========================  =====================================================================================
``options``               :class:`DecodingOptions` (validated once), trace, stats, result
``acceptance``            the acceptance rule, logit warping and repetition controls, as pure tensor functions
``combine``               guidance and the weighted product: persona distributions → the one a token follows
``base``                  :class:`Decoder`: what every schedule shares (budget, RNG, roles, masks, emit, stream)
``speculative``           the paper's schedule: λ drafter forwards, then one judge forward
``batch``                 what the batched rules share: every persona (+ reference) as a row of one batch
``lockstep``              Persona-judge with every persona in one batched forward per emitted token
``product``               the weighted product of the personas' distributions, one batched forward per token
``batching``              continuous batching: the lockstep rows of concurrent requests in one forward per step
``backends``              the model interface the rules talk to: transformers (``hf``), llama.cpp (``llamacpp``)
``cpu_kernels``           prepacked linear weights for multi-row forwards on a CPU
``reference``             the paper's algorithm with no cache: the oracle for tests and benchmarks
========================  =====================================================================================

A new schedule or rule is one subclass of :class:`Decoder` in its own file plus one branch of
:func:`decoder_class`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .. import defaults
from ..errors import DecodingError, InvalidArgumentError
from .backends import BACKENDS, ModelBackend, as_backend, backend_name
from .base import Decoder, TokenStream, context_budget, context_limit
from .batching import BatchingBackend, BatchScheduler
from .cpu_kernels import is_prepacked, prepack_linear_weights, unpack_linear_weights
from .lockstep import LockstepDecoder
from .options import (
    COMBINE_RULES,
    SCHEDULES,
    Combine,
    DecodingOptions,
    DecodingStats,
    FinishReason,
    Generation,
    Schedule,
    TokenConstraint,
    TokenKind,
    TraceEntry,
)
from .product import ProductDecoder
from .speculative import SpeculativeDecoder

DECODERS: dict[str, type[Decoder]] = {"speculative": SpeculativeDecoder, "lockstep": LockstepDecoder}
"""Persona-judge's schedules, by ``DecodingOptions.schedule``."""


def decoder_class(options: DecodingOptions) -> type[Decoder]:
    """The decoder of resolved ``options``: the weighted product, or Persona-judge on its schedule."""
    if options.combine == "product":
        return ProductDecoder
    return DECODERS[options.schedule]


def preferred_schedule(model: Any) -> Schedule:
    """``lockstep`` where a forward of a few rows costs about one of a single row, else ``speculative``.

    On transformers that holds on an accelerator (one row cannot fill it) and on a CPU whose fp32 linear weights
    are prepacked (:mod:`.cpu_kernels`); with PyTorch's default CPU kernels extra rows cost much more, and the
    speculative schedule's one-row drafter forwards come out cheaper. Each backend says
    (:meth:`.backends.ModelBackend.prefers_lockstep`; figures: ``benchmarks/README.md``).
    """
    return "lockstep" if as_backend(model).prefers_lockstep() else "speculative"


def resolve_options(options: DecodingOptions, model: Any) -> DecodingOptions:
    """``options`` with ``schedule="auto"``, ``draft_confidence=None`` and ``guidance=None`` decided for
    ``model``."""
    if options.schedule != "auto" and options.draft_confidence is not None and options.guidance is not None:
        return options
    schedule = options.schedule
    if schedule == "auto":
        # The product and guidance read every row (and the reference) in one batch: lockstep is their schedule.
        batched = options.combine == "product" or options.gamma != 1.0
        schedule = "lockstep" if batched else preferred_schedule(model)
    confidence = options.draft_confidence
    if confidence is None:
        confidence = defaults.draft_confidence_for(schedule)
    return dataclasses.replace(options, schedule=schedule, draft_confidence=confidence, guidance=options.gamma)


def make_decoder(
    model: Any,
    prompts: Sequence[torch.Tensor],
    options: DecodingOptions,
    constraint: TokenConstraint | None = None,
    reference: torch.Tensor | None = None,
) -> Decoder:
    """The decoder of ``options`` (``auto`` resolved for ``model``; options the runtime resolved pass as they are)."""
    backend = as_backend(model)  # a bare transformers model is wrapped here, once per decode
    options = resolve_options(options, backend)
    return decoder_class(options)(backend, prompts, options, constraint, reference)


def _options(options: DecodingOptions | None, kwargs: dict[str, Any]) -> DecodingOptions:
    if options is None:
        return DecodingOptions.from_kwargs(kwargs)
    if not isinstance(options, DecodingOptions):
        raise InvalidArgumentError(f"options is a {type(options).__name__}; pass a DecodingOptions (or keyword options).")
    if kwargs:
        raise InvalidArgumentError(f"Pass options= or keyword options, not both (got options= and {sorted(kwargs)}).")
    return options


def stream(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    options: DecodingOptions | None = None,
    constraint: TokenConstraint | None = None,
    reference: torch.Tensor | None = None,
    **kwargs: Any,
) -> TokenStream:
    """Stream Persona-judge decoding: ``prompts[0]`` drafts first, ``prompts[1]`` judges first.

    Pass a :class:`DecodingOptions` as ``options=``, or its fields as keyword arguments (``combine="product"``,
    ``weights``, ``guidance``...). Bad options or prompts raise before any forward. ``constraint`` (a
    :class:`TokenConstraint`) restricts the allowed tokens, for every persona alike. ``reference``: the 1-D token
    ids of the reference prompt (the conversation with no preference, or a negative one), which ``guidance != 1``
    (and product weights that do not sum to 1) need.
    """
    return TokenStream(make_decoder(model, prompts, _options(options, kwargs), constraint, reference))


def generate(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    options: DecodingOptions | None = None,
    constraint: TokenConstraint | None = None,
    reference: torch.Tensor | None = None,
    **kwargs: Any,
) -> Generation:
    """Decode to the end (EOS or ``max_new_tokens``) and return the :class:`Generation` (see :func:`stream`)."""
    tokens = stream(model, prompts, options=options, constraint=constraint, reference=reference, **kwargs)
    for _ in tokens.chunks():
        pass
    return tokens.generation


__all__ = [
    "COMBINE_RULES",
    "DECODERS",
    "BACKENDS",
    "SCHEDULES",
    "BatchScheduler",
    "BatchingBackend",
    "Combine",
    "Decoder",
    "DecodingError",
    "DecodingOptions",
    "DecodingStats",
    "FinishReason",
    "Generation",
    "LockstepDecoder",
    "ModelBackend",
    "ProductDecoder",
    "Schedule",
    "SpeculativeDecoder",
    "TokenConstraint",
    "TokenKind",
    "TokenStream",
    "TraceEntry",
    "as_backend",
    "backend_name",
    "context_budget",
    "context_limit",
    "decoder_class",
    "generate",
    "is_prepacked",
    "make_decoder",
    "preferred_schedule",
    "prepack_linear_weights",
    "resolve_options",
    "stream",
    "unpack_linear_weights",
]
