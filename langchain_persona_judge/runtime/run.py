"""Running one request: admission, the decode, text as it is decided, and every way a run can end.

:class:`RequestRun` waits for a slot in the model's admission queue, streams the decode's tokens as text
(incrementally detokenised, cut at the first stop string), checks the deadline and a cancellation flag once per
iteration, turns a GPU out-of-memory into :class:`~langchain_persona_judge.errors.OutOfMemoryError`, and frees
the caches however the run ends. :func:`start_run` is the request policy in front of it (a preference profile's
personas and weights, the request built once, the run's limits). It knows nothing of LangChain: the adapter
renders the messages and wraps the text into chunks.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from .. import decoding, defaults
from ..decoding import DecodingOptions, Generation, ModelBackend, TokenStream
from ..errors import OutOfMemoryError, ProfileError, RequestTimeoutError
from .best_of import BestOfRun, start_best_of
from .detokenize import IncrementalDetokenizer, StopStringFilter
from .batching import batched
from .models import admission_queue
from .request import OutputGrammar, PersonaSettings, Request, Truncation, build_request


class RequestRun:
    """One run of a :class:`~.request.Request`; iterate :meth:`text` for its pieces of text.

    Attributes once the text is exhausted (or while it runs): ``generation`` (token ids, stats, trace),
    ``used`` (tokens read into the answer: all of them, or up to the one that completed a stop string),
    ``finish_reason`` and ``stopped_by_string``.
    """

    def __init__(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        user: str | None = None,
        batching: str | None = None,
    ) -> None:
        self.request = request
        self.batching = batching  # None: the model's setting (see .batching)
        self.user = user  # the admission queue serves users round-robin (None: the anonymous bucket)
        self.timeout = timeout
        self.cancelled = cancelled
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.used = 0
        self.pieces: list[str] = []
        self._stops = StopStringFilter(request.stop)
        self._tokens: TokenStream | None = None

    @property
    def stopped_by_string(self) -> bool:
        return self._stops.stopped

    @property
    def generation(self) -> Generation:
        if self._tokens is None:
            return Generation([], None, decoding.DecodingStats())
        return self._tokens.generation

    @property
    def finish_reason(self) -> str:
        """``stop`` (EOS or a stop string) or ``length``."""
        return "stop" if self.stopped_by_string else (self.generation.finish_reason or "stop")

    def text(self) -> Iterator[str]:
        """Pieces of the answer's text as they are decided; the caches are freed however this ends."""
        request = self.request
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        queue = admission_queue(request.model)
        if self.max_concurrency is not None or self.max_queue is not None:
            queue.configure(self.max_concurrency, self.max_queue)
        with queue.admit(deadline, self.cancelled, self.user) as admitted:
            if not admitted:  # cancelled while waiting for a slot: nothing was decoded
                return
            # Looked up on the module at call time, so a test can watch or replace the engine.
            tokens = decoding.stream(batched(request.model, self.batching), request.prompts, options=request.options,
                                     constraint=request.constraint, reference=request.reference)
            self._tokens = tokens
            try:
                yield from self._detokenize(tokens, deadline)
            except torch.cuda.OutOfMemoryError as exc:
                tokens.close()
                torch.cuda.empty_cache()
                raise OutOfMemoryError(
                    f"The GPU ran out of memory while decoding ({exc}); this request's caches were freed. "
                    "Use shorter conversations, fewer preferences, a smaller max_tokens, or a smaller dtype."
                ) from exc
            finally:
                tokens.close()

    def _detokenize(self, tokens: TokenStream, deadline: float | None) -> Iterator[str]:
        """Token ids -> text, stopping at a stop string, a cancellation or the deadline."""
        detokenizer = IncrementalDetokenizer(self.request.tokenizer)
        stops = self._stops
        for chunk_ids in tokens.chunks():
            if self.cancelled is not None and self.cancelled.is_set():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise RequestTimeoutError(
                    f"The call ran past its timeout of {self.timeout} s after {len(tokens.generation.token_ids)} "
                    "tokens; raise timeout or lower max_tokens (the text so far is in .partial_text).",
                    "".join(self.pieces),
                )
            for token_id in chunk_ids:
                self.used += 1
                text = stops.push(detokenizer.push(token_id))
                if text:
                    self.pieces.append(text)
                    yield text
                if stops.stopped:
                    break
            if stops.stopped:
                break
        if not stops.stopped:
            tail = stops.push(detokenizer.flush()) + stops.flush()
            if tail:
                self.pieces.append(tail)
                yield tail

    def metadata(self) -> dict[str, Any]:
        """What the run did, for response metadata: the decode's counters and the settings that shaped it."""
        request = self.request
        stats = self.generation.stats.to_dict()
        stats.update(
            personas=len(request.prompts),
            lookahead=request.options.lookahead,
            schedule=request.options.schedule,
            draft_confidence=request.options.draft_confidence,
            combine=request.options.combine,
            weights=None if request.options.weights is None else list(request.options.weights),
            guidance=request.options.guidance,
        )
        if request.options.repetition_penalty not in (None, 1.0):
            stats["repetition_penalty"] = request.options.repetition_penalty
        if request.options.no_repeat_ngram_size:
            stats["no_repeat_ngram_size"] = request.options.no_repeat_ngram_size
        return {
            "model_name": request.model_name,
            "backend": request.model.kind,
            "finish_reason": self.finish_reason,
            "preferences": request.preferences,
            "composition": request.composition,
            "persona_prompts": [p.preferences for p in request.personas],
            "persona_judge": stats,
        }

    def trace(self) -> list[dict[str, Any]]:
        """Where each token of the answer came from (one entry per output token)."""
        return self.generation.stats.to_dict(with_trace=True)["trace"][: self.used]


class DecodingProfile(Protocol):
    """What a request reads of a preference profile (:class:`~langchain_persona_judge.profiles.PreferenceProfile`,
    a layer above the runtime)."""

    def check_model(self, model: Any) -> None: ...

    def decoding_plan(self, stated: Sequence[Any] = (), *, strength: float = 1.0) -> Any: ...

    def score_answers(self, model: Any, prompt: Any, responses: Sequence[str],
                      complete: bool | Sequence[bool] = True) -> list[float]: ...


def start_run(
    model: ModelBackend,
    conversation: list[dict[str, Any]],
    *,
    options: DecodingOptions,
    personas: PersonaSettings,
    model_name: str,
    profile: DecodingProfile | None = None,
    profile_decoding: str = "product",
    best_of: int = 4,
    stop: Sequence[str] = (),
    truncation: Truncation = "error",
    template_kwargs: dict[str, Any] | None = None,
    output: OutputGrammar | None = None,
    timeout: float | None = None,
    cancelled: threading.Event | None = None,
    max_concurrency: int | None = None,
    max_queue: int | None = None,
    user: str | None = None,
    batching: str | None = None,
) -> RequestRun | BestOfRun:
    """One request from a chat model's settings to a :class:`RequestRun` (not started: iterate its text).

    A ``profile`` turns its learned poles (and the stated preferences) into weighted personas for
    ``combine="product"``, and its learned length weight into a bias on the end-of-turn token; then the request is built once (:func:`~.request.build_request`: prompts within the
    context, options resolved for ``model``, the grammar) and handed to a run with the caller's limits;
    ``user`` is the key the model's admission queue serves round-robin (``None``: the anonymous bucket);
    ``batching`` overrides the model's continuous batching setting (:mod:`.batching`; None: the model's).

    ``profile_decoding="best_of_n"`` decodes ``best_of`` candidates instead and answers with the one the
    profile's reward ranks first (:mod:`.best_of`: a :class:`~.best_of.BestOfRun`, read like a RequestRun).
    """
    if profile_decoding not in ("product", "best_of_n"):
        raise ProfileError(f"profile_decoding={profile_decoding!r}: pass 'product' or 'best_of_n'.")
    if profile_decoding == "best_of_n" and profile is None:
        raise ProfileError("profile_decoding='best_of_n' ranks answers by a preference profile's reward; pass a "
                           "profile (or leave profile_decoding='product').")
    build = {"model_name": model_name, "stop": stop, "truncation": truncation, "template_kwargs": template_kwargs,
             "output": output}
    limits = {"timeout": timeout, "cancelled": cancelled, "max_concurrency": max_concurrency,
              "max_queue": max_queue, "user": user, "batching": batching}
    if options.guidance is None:  # unset: 1, or the learned profile's product default (defaults.guidance_for)
        options = dataclasses.replace(options, guidance=defaults.guidance_for(profile is not None, profile_decoding))
    plan = None
    if profile is not None:  # the profile's poles (and stated preferences) as weighted personas
        if options.weights is not None:
            raise ProfileError("Pass weights or a profile, not both: a profile sets the personas' weights.")
        profile.check_model(model)
        plan = profile.decoding_plan(personas.preferences, strength=options.guidance)
        if profile_decoding == "best_of_n":
            untimed = {k: v for k, v in limits.items() if k != "timeout"}
            return start_best_of(model, conversation, profile=profile, plan=plan, best_of=best_of,
                                 options=options, personas=personas, build=build, timeout=timeout,
                                 make_run=lambda request: RequestRun(request, **untimed))
        personas = dataclasses.replace(personas, preferences=plan.preferences)
        options = dataclasses.replace(options, combine="product", weights=tuple(plan.weights) or None,
                                      eos_bias=plan.eos_bias)
    request = build_request(model, conversation, options=options, personas=personas, **build)
    if plan is not None:
        request = dataclasses.replace(request, profile={**plan.metadata, "rule": "product"})
    return RequestRun(request, **limits)


__all__ = ["DecodingProfile", "RequestRun", "start_run"]
