"""Best-of-N with a preference profile (PReF's use of a learned reward): decode N candidate answers, keep the one
the profile's reward ranks first.

The candidates, in order, until there are ``best_of``: the profile's own weighted-product decode (what
``profile_decoding="product"`` answers), the plain answer (the user's stated preferences only, no profile), then
one answer under each pole the profile leans to; when sampling, the list starts over with new seeds (greedy
decoding would only repeat itself, so it stops at the list's end). Each candidate carries the profile's
end-of-turn bias, so a user who prefers short answers is offered short ones. The candidates are ranked by
``w · φ`` scored on the model that decoded them (:meth:`~.DecodingProfile.score_answers`), the length feature
included; ties go to the earlier candidate.

Where the model batches concurrent requests (continuous batching, :mod:`.batching`: transformers by default) the
candidates are decoded at once, each in a thread of its own, their rows sharing one forward per step; each
candidate's tokens are what it would decode alone. Elsewhere (llama.cpp, where a forward of n rows costs about n
forwards of one on a CPU) they are decoded one after another (:func:`read_texts`). The run's timeout covers all of
them together. The chosen answer is then given whole, as one piece of text.
"""

from __future__ import annotations

import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..decoding import DecodingOptions, Generation, ModelBackend
from ..errors import RequestTimeoutError
from .batching import batched
from .request import PersonaSettings, Request, build_request

if TYPE_CHECKING:
    from .run import RequestRun


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate decode: what it is decoded under, its personas and options."""

    label: str
    """``profile`` (the weighted product), ``plain``, or the pole's persona name."""
    personas: PersonaSettings
    options: DecodingOptions


def candidates(plan: Any, personas: PersonaSettings, options: DecodingOptions, best_of: int) -> list[Candidate]:
    """The ``best_of`` candidates of a profile's decoding ``plan`` (see the module)."""
    product = Candidate(
        "profile", dataclasses.replace(personas, preferences=plan.preferences),
        dataclasses.replace(options, combine="product", weights=tuple(plan.weights) or None, eos_bias=plan.eos_bias),
    )
    single = dataclasses.replace(options, combine="judge", weights=None, eos_bias=plan.eos_bias)
    # One row per token on either schedule for a single persona; lockstep lets it join a shared batch.
    one_row = dataclasses.replace(single, schedule="lockstep")
    plain = one_row if len(personas.preferences) <= 1 else single
    kinds = [product, Candidate("plain", personas, plain)]
    kinds += [Candidate(name, dataclasses.replace(personas, preferences=[persona]), one_row)
              for name, persona in plan.poles]
    if not options.do_sample:
        return kinds[:best_of]
    out = []
    for number in range(best_of):
        kind = kinds[number % len(kinds)]
        seed = None if options.seed is None else options.seed + number
        out.append(dataclasses.replace(kind, options=dataclasses.replace(kind.options, seed=seed)))
    return out


def shares_forwards(runs: Sequence[RequestRun]) -> bool:
    """Whether ``runs`` (on one model) would share their forwards if decoded at once: continuous batching is on
    for their model."""
    return len(runs) > 1 and all(batched(run.request.model, run.batching) is not run.request.model for run in runs)


def read_texts(runs: Sequence[RequestRun], deadline: float | None = None, what: str = "candidate") -> list[str]:
    """Every run's whole text, in order: decoded at once (a thread each, so their rows join the model's shared
    batch) when :func:`shares_forwards`, else one after another. ``deadline`` (``time.monotonic()``) bounds them
    all: each run's timeout is what is left of it. The first run's error (in order) is raised once every run
    has ended; a run cancelled through its ``cancelled`` event gives the text decoded so far."""

    def left(done: int) -> float | None:
        if deadline is None:
            return None
        rest = deadline - time.monotonic()
        if rest <= 0:
            raise RequestTimeoutError(
                f"{len(runs)} {what}s ran past their timeout after {done} {what}(s); raise timeout, lower "
                "best_of or max_tokens.", "")
        return rest

    if not shares_forwards(runs):
        texts = []
        for run in runs:
            run.timeout = left(len(texts))
            texts.append("".join(run.text()))
            if run.cancelled is not None and run.cancelled.is_set():
                break
        return texts + [""] * (len(runs) - len(texts))
    for run in runs:
        run.timeout = left(0)
    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix=f"persona-judge-{what}") as pool:
        # Each thread runs in a copy of the caller's context (a server's request tags, say).
        futures = [pool.submit(contextvars.copy_context().run, lambda r: "".join(r.text()), run) for run in runs]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


class BestOfRun:
    """N candidate runs, ranked by a profile's reward; reads like the :class:`~.run.RequestRun` of the chosen
    one (its request, generation, finish reason, trace), and ``request.profile`` reports every candidate."""

    def __init__(self, runs: list[RequestRun], labels: list[str], profile: Any, model: ModelBackend,
                 conversation: list[dict[str, Any]], report: dict[str, Any], timeout: float | None) -> None:
        self.runs = runs
        self.labels = labels
        self.profile = profile
        self.model = model
        self.conversation = conversation
        self.report = report
        self.timeout = timeout
        self.chosen: RequestRun | None = None
        self.rewards: list[float] | None = None

    # -- what the chosen run reads like -------------------------------------------------------------------

    @property
    def _run(self) -> RequestRun:
        return self.chosen if self.chosen is not None else self.runs[0]

    @property
    def request(self) -> Request:
        return self._run.request

    @property
    def generation(self) -> Generation:
        return self._run.generation

    @property
    def used(self) -> int:
        return self._run.used if self.chosen is not None else 0

    @property
    def finish_reason(self) -> str:
        return self._run.finish_reason

    @property
    def stopped_by_string(self) -> bool:
        return self._run.stopped_by_string

    def metadata(self) -> dict[str, Any]:
        return self._run.metadata()

    def trace(self) -> list[dict[str, Any]]:
        return self._run.trace()

    # -- decode, rank, give the best -----------------------------------------------------------------------

    def text(self) -> Iterator[str]:
        """Decode every candidate, rank them, then give the chosen answer (one piece)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        texts = read_texts(self.runs, deadline)
        if any(run.cancelled is not None and run.cancelled.is_set() for run in self.runs):
            return
        scored = [i for i, text in enumerate(texts) if text.strip()]
        rewards = [float("-inf")] * len(texts)
        if scored:
            values = self.profile.score_answers(
                self.model, self.conversation, [texts[i] for i in scored],
                [self.runs[i].finish_reason == "stop" for i in scored])
            for i, value in zip(scored, values):
                rewards[i] = value
        best = max(range(len(texts)), key=lambda i: (rewards[i], -i))
        self.rewards = rewards
        self.chosen = self.runs[best]
        self.chosen.request.profile = {
            **self.report, "rule": "best_of_n", "chosen": best,
            "candidates": [{"decoded_under": label, "reward": None if r == float("-inf") else round(r, 4),
                            "finish_reason": run.finish_reason, "text": text}
                           for label, r, run, text in zip(self.labels, rewards, self.runs, texts)],
        }
        if texts[best]:
            yield texts[best]


def start_best_of(
    model: ModelBackend,
    conversation: list[dict[str, Any]],
    *,
    profile: Any,
    plan: Any,
    best_of: int,
    options: DecodingOptions,
    personas: PersonaSettings,
    build: dict[str, Any],
    make_run: Callable[[Request], RequestRun],
    timeout: float | None,
) -> BestOfRun:
    """The best-of-N run of a profile's ``plan``: each candidate's request built now (so a bad request fails
    before any decode; ``build``: the keyword arguments of :func:`~.request.build_request`) and made a run by
    ``make_run`` (the caller's limits but the timeout, which covers all of them: ``timeout``)."""
    chosen = candidates(plan, personas, options, best_of)
    runs = [make_run(build_request(model, conversation, options=c.options, personas=c.personas, **build))
            for c in chosen]
    return BestOfRun(runs, [c.label for c in chosen], profile, model, conversation, dict(plan.metadata), timeout)


__all__ = ["BestOfRun", "Candidate", "candidates", "read_texts", "shares_forwards", "start_best_of"]
