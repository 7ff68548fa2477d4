"""Building one request: everything a decode needs, resolved and checked before any forward pass.

Input: a model handle (:class:`~langchain_persona_judge.decoding.ModelBackend`, from ``load_model``), a
conversation (role/content dicts, tools already rendered into it), the user's preferences and how to compose them,
one :class:`~langchain_persona_judge.decoding.DecodingOptions`, stop strings and an optional grammar. Output: a
:class:`Request` holding the persona prompts as token ids, the options resolved for the model once (``auto``
schedule, default draft confidence, ``max_new_tokens`` within the context), and the grammar's constraint. The
context limit is checked here, before any forward, by the decoding rules' one check
(:func:`~langchain_persona_judge.decoding.context_budget`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..decoding import DecodingOptions, ModelBackend, TokenConstraint, context_budget, resolve_options
from ..errors import ContextLengthError, GrammarError, ModelLoadError
from ..grammar import Grammar, constraint_for, grammar_available
from ..personas import (
    Layout,
    PersonaPrompt,
    PersonaRegistry,
    PreferenceTemplate,
    compose,
    load_registry,
    persona_messages,
    reference_messages,
    resolve_preference,
)
from .chat_template import encode_chat

Truncation = Literal["error", "drop_oldest"]


@dataclass(frozen=True)
class PersonaSettings:
    """How the user's preferences become persona prompts."""

    preferences: Sequence[Any] = ()
    """Persona names, free texts, ``Persona`` objects or ``(name, {variables})`` pairs."""
    registry: PersonaRegistry | str | None = None
    """A registry (object or YAML path) merged over the built-ins."""
    composition: str = "split"
    """``split``, ``pair`` or ``all``."""
    layout: Layout = "system"
    """Where a preference goes: the persona's system turn or a user turn."""
    template: PreferenceTemplate | None = None
    """A preference template: text (a ``str``, never a path) or a ``pathlib.Path`` to a file; None: the built-in one."""
    negative_preference: str | None = None
    """What the reference prompt says (guidance steers away from it); None: the conversation with no preference."""


@dataclass(frozen=True)
class OutputGrammar:
    """A grammar the answer must follow, and whether the call cannot be honoured without it."""

    grammar: Grammar
    required: bool
    """True for forced tool calls and JSON; False where free decoding with lenient parsing would do."""
    shape: str = "answer"
    """What the grammar describes, for error messages (``tool call``, ``schema``...)."""


@dataclass
class Request:
    """Everything one decode needs."""

    model: ModelBackend
    """The model's handle (its tokenizer included)."""
    model_name: str
    prompts: list[torch.Tensor]
    """One prompt per persona, as token ids."""
    options: DecodingOptions
    """Resolved for the model: a concrete schedule and draft confidence, ``max_new_tokens`` within the context."""
    stop: list[str]
    preferences: list[str]
    """The preference texts, rendered."""
    personas: list[PersonaPrompt]
    composition: str
    constraint: TokenConstraint | None = None
    reference: torch.Tensor | None = None
    """The reference prompt's ids, when the rule reads one (guidance, product weights not summing to 1)."""
    profile: dict[str, Any] | None = None
    """What a preference profile contributed (set by the adapter), for the response metadata."""

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def input_tokens(self) -> int:
        """Prompt tokens over every persona and the reference (each is read once by the model)."""
        return sum(len(p) for p in self.prompts) + (0 if self.reference is None else len(self.reference))


def encode_personas(
    tokenizer: Any,
    conversation: list[dict[str, Any]],
    personas: list[PersonaPrompt],
    settings: PersonaSettings,
    template_kwargs: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Each persona's copy of the conversation, encoded with the model's chat template."""
    return [
        encode_chat(
            tokenizer,
            persona_messages(
                conversation,
                persona.preferences,
                layout=settings.layout,
                # A persona's own system template wins over the model-wide one (system layout only).
                template=persona.system_template
                if persona.system_template and settings.layout == "system"
                else settings.template,
            ),
            **(template_kwargs or {}),
        )
        for persona in personas
    ]


def fit_context(
    model: ModelBackend,
    conversation: list[dict[str, Any]],
    personas: list[PersonaPrompt],
    settings: PersonaSettings,
    max_new_tokens: int,
    *,
    truncation: Truncation = "error",
    template_kwargs: dict[str, Any] | None = None,
    with_reference: bool = False,
) -> tuple[list[dict[str, Any]], list[torch.Tensor], torch.Tensor | None, int]:
    """Encode every persona's prompt (and the reference prompt, ``with_reference``) within the model's context:
    ``(conversation, prompts, reference, budget)``, where ``budget`` is the answer's token budget. If the longest
    prompt leaves no room to answer, drop the oldest turns (``truncation="drop_oldest"``) or raise
    ContextLengthError, before any forward pass."""
    tokenizer = model.tokenizer
    fix = (
        "shorten the last message" if truncation == "drop_oldest"
        else "shorten it, or pass truncation='drop_oldest' to drop the oldest turns"
    )
    while True:
        prompts = encode_personas(tokenizer, conversation, personas, settings, template_kwargs)
        reference = None
        if with_reference:
            messages = reference_messages(conversation, settings.negative_preference, layout=settings.layout,
                                          template=settings.template)
            reference = encode_chat(tokenizer, messages, **(template_kwargs or {}))
        lengths = [len(p) for p in prompts] + ([] if reference is None else [len(reference)])
        try:
            budget = context_budget(model.context_length, lengths, max_new_tokens, fix)
            return conversation, prompts, reference, budget
        except ContextLengthError:
            droppable = [i for i, m in enumerate(conversation[:-1]) if m["role"] != "system"]
            if truncation != "drop_oldest" or not droppable:
                raise
        conversation = conversation[: droppable[0]] + conversation[droppable[0] + 1 :]


def constrain(
    model: ModelBackend, output: OutputGrammar | None, options: DecodingOptions
) -> tuple[TokenConstraint | None, DecodingOptions]:
    """The grammar's constraint for ``options`` (whose ``max_new_tokens`` is the answer's budget), and the options
    with the EOS ids the grammar ends with (the handle's)."""
    if output is None:
        return None, options
    if not output.required and not grammar_available():
        return None, options  # tool_choice="auto" without xgrammar: free decoding, calls parsed leniently
    budget = options.max_new_tokens
    stops = model.eos_token_ids
    constraint = constraint_for(model.tokenizer, output.grammar, vocab_size=model.vocab_size, stop_token_ids=stops,
                                budget=budget)
    shortest = constraint.shortest_answer()
    if shortest is not None and shortest > budget:
        raise GrammarError(
            f"max_tokens={budget} cannot hold even the shortest answer this {output.shape} allows ({shortest} "
            "tokens); raise max_tokens."
        )
    return constraint, dataclasses.replace(options, eos_token_id=sorted(stops))


def build_request(
    model: ModelBackend,
    conversation: list[dict[str, Any]],
    *,
    options: DecodingOptions,
    personas: PersonaSettings,
    model_name: str,
    stop: Sequence[str] = (),
    truncation: Truncation = "error",
    template_kwargs: dict[str, Any] | None = None,
    output: OutputGrammar | None = None,
) -> Request:
    """Resolve preferences, compose personas, encode their prompts within the context, resolve the options once,
    attach the grammar. ``model``: the handle from ``load_model`` (or ``shared_model``), tokenizer included."""
    if model.tokenizer is None:
        raise ModelLoadError(
            f"The model {model.name!r} has no tokenizer; load it with load_model, or wrap it with one "
            "(TransformersBackend(model, tokenizer))."
        )
    registry = load_registry(personas.registry)
    # Blank free-text preferences (an empty form field, say) are ignored rather than sent to the model.
    wanted = [p for p in personas.preferences if not (isinstance(p, str) and not p.strip())]
    resolved = [resolve_preference(p, registry) for p in wanted]
    composed = compose(resolved, personas.composition)
    conversation, prompts, reference, budget = fit_context(
        model, conversation, composed, personas, options.max_new_tokens, truncation=truncation,
        template_kwargs=template_kwargs, with_reference=options.needs_reference,
    )
    options = resolve_options(dataclasses.replace(options, max_new_tokens=budget), model)
    constraint, options = constrain(model, output, options)
    return Request(
        model=model,
        model_name=model_name,
        prompts=prompts,
        options=options,
        stop=list(dict.fromkeys(s for s in stop if s)),
        preferences=[r.text for r in resolved],
        personas=composed,
        composition=personas.composition,
        constraint=constraint,
        reference=reference,
    )


__all__ = [
    "OutputGrammar",
    "PersonaSettings",
    "Request",
    "Truncation",
    "build_request",
    "constrain",
    "encode_personas",
    "fit_context",
]
