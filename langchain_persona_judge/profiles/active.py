"""Active learning of a profile (PReF's rule): ask the question whose answer teaches the most.

A :class:`PreferenceLearner` holds candidate answers (given, or decoded under contrasting personas of the
basis) with their features. Each round it proposes a :class:`Question`: two answers to one prompt whose feature
difference ``d`` has the largest predictive variance ``dᵀ H⁻¹ d`` under the current fit (``H`` the Bradley–Terry
Hessian, the Laplace posterior's precision), records the user's pick (the first, the second, or no preference)
and refits.

When it must make candidates, it decodes one answer under each pole of the dimension whose weight direction
(``e_first − e_second``) is most uncertain now (divided by how often it was asked already, so the questions
rotate through the dimensions), through the runtime's admission queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..decoding import DecodingOptions
from ..errors import ProfileError
from ..personas import Persona, PersonaRegistry
from ..runtime import PersonaSettings, RequestRun, build_request, read_texts
from .basis import Basis
from .fitting import L2, Fit, bradley_terry_hessian, fit_bradley_terry, information
from .learning import prior_weights, scorer_for
from .profile import ModelIdentity, PreferenceProfile
from .scoring import Prompt

Strategy = Literal["active", "random"]
Choice = int | str | None
"""1 or ``"1"`` (the first answer), 2 or ``"2"`` (the second), 0, ``"="`` or ``"none"`` (no preference), or the
text of one of the two answers."""

DEFAULT_PROMPTS: tuple[str, ...] = (
    "How do I make a good cup of coffee at home?",
    "Why do cats purr?",
    "What should I pack for a weekend camping trip?",
    "How can I get better at remembering names?",
    "What is the difference between weather and climate?",
    "How do I start learning to play the guitar?",
    "Why is sleep important?",
    "What is a good way to save money each month?",
    "How do airplanes stay in the air?",
    "What should I know before adopting a dog?",
    "How do I write a polite email declining an invitation?",
    "Why do leaves change color in autumn?",
    "How can I stay focused while working from home?",
    "What is inflation?",
    "How do vaccines work?",
    "What are some tips for a job interview?",
    "How do I keep houseplants alive?",
    "Why is the ocean salty?",
    "How do I cook rice on the stove?",
    "What is a healthy breakfast?",
)
"""Everyday questions the learner asks about when it is given no prompts."""


@dataclass(frozen=True)
class Candidate:
    """An answer the learner may show, with its features."""

    prompt: Prompt
    text: str
    persona: str | None
    """The basis persona it was decoded under (None: plain, or given from outside)."""
    features: np.ndarray = field(repr=False)
    complete: bool = True
    """Whether it ended by itself (False: cut at the token limit; its end-of-turn token is not scored)."""


@dataclass(frozen=True)
class Question:
    """Two answers to one prompt, for the user to choose between."""

    number: int
    prompt: Prompt
    answers: tuple[str, str]
    personas: tuple[str | None, str | None]
    """What each answer was decoded under (None: plain or given)."""
    information: float
    """``dᵀ H⁻¹ d`` when it was chosen: how uncertain the current profile was about this pair."""
    pair: tuple[int, int] = field(repr=False)


def parse_choice(choice: Choice, answers: tuple[str, str]) -> float:
    """1 (the first answer), 0 (the second) or 0.5 (no preference); anything else is a ProfileError."""
    if isinstance(choice, bool):
        choice = str(choice)
    if isinstance(choice, int):
        choice = str(choice)
    if isinstance(choice, str):
        key = choice.strip().lower()
        if key in ("1", "a", "first"):
            return 1.0
        if key in ("2", "b", "second"):
            return 0.0
        if key in ("0", "=", "none", "tie", "no preference", "either"):
            return 0.5
        if choice in answers:
            return 1.0 if choice == answers[0] else 0.0
    raise ProfileError(
        f"The choice {choice!r} is not one of the two answers: pass 1 (the first), 2 (the second), '=' (no "
        "preference), or the text of one of them."
    )


class PreferenceLearner:
    """Ask, record, refit: a profile from a user's picks between pairs of answers.

    Args:
        model: None (embedded), an HF id or path, a ``(model, tokenizer)`` pair, a ``ChatPersonaJudge`` or a
            ``PersonaScorer`` (shared, with what it has scored).
        basis, registry: the basis (None: built-in) and a registry over the built-ins.
        prompts: questions to make candidates for, in order (None: :data:`DEFAULT_PROMPTS`).
        strategy: ``active`` (PReF's rule) or ``random`` (a random unasked pair; the baseline).
        l2: the fit's L2 strength. prior: a profile whose weights centre the penalty (same model and basis).
        description: a free-text preference kept in the profile.
        seed: seeds the random strategy and the decoding of candidates.
        max_tokens, temperature, top_p, repetition_penalty, guidance: how candidates are decoded.
        features: whole-answer features fitted beside the personas (``("length",)``: the answer's length).
    """

    def __init__(
        self,
        model: Any = None,
        *,
        basis: Basis | Sequence[str] | None = None,
        registry: PersonaRegistry | str | Path | None = None,
        prompts: Sequence[Prompt] | None = None,
        strategy: Strategy = "active",
        l2: float = L2,
        prior: PreferenceProfile | None = None,
        description: str | None = None,
        seed: int = 0,
        max_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float | None = 0.9,
        repetition_penalty: float | None = 1.2,
        guidance: float = 1.0,
        features: Sequence[str] = (),
    ) -> None:
        if strategy not in ("active", "random"):
            raise ProfileError(f"strategy={strategy!r}: pass 'active' (PReF's rule) or 'random'.")
        self.scorer = scorer_for(model, basis, registry, features)
        self.basis = self.scorer.basis
        self.prior = prior_weights(prior, self.scorer)
        self.description = description if description is not None else (prior.description if prior else None)
        self.strategy = strategy
        self.l2 = l2
        self.prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
        self.options = DecodingOptions(max_new_tokens=max_tokens, do_sample=temperature > 0,
                                       temperature=temperature or 1.0, top_p=top_p, seed=seed,
                                       repetition_penalty=repetition_penalty, guidance=guidance)
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.candidates: list[Candidate] = []
        self.asked: set[tuple[int, int]] = set()
        self.differences: list[np.ndarray] = []
        self.outcomes: list[float] = []
        self.questions: list[Question] = []
        self._recorded: set[int] = set()
        self._next_prompt = 0
        self._uses: dict[str, int] = {}
        self._decoded = 0
        self._running: set[threading.Event] = set()
        self._running_lock = threading.Lock()
        self.fit: Fit | None = None

    # -- the current state ----------------------------------------------------------------------------------

    @property
    def weights(self) -> np.ndarray:
        if self.fit is not None:
            return self.fit.weights
        return np.zeros(len(self.basis)) if self.prior is None else self.prior.copy()

    @property
    def hessian(self) -> np.ndarray:
        """The posterior precision now (``l2 I`` before any answer)."""
        if not self.differences:
            return self.l2 * np.eye(len(self.basis))
        return bradley_terry_hessian(np.stack(self.differences), self.weights, self.l2)

    @property
    def answered(self) -> int:
        return len(self.outcomes)

    @property
    def profile(self) -> PreferenceProfile:
        """The profile learned so far."""
        evidence = {"comparisons": self.answered, "ties": int(sum(o == 0.5 for o in self.outcomes)),
                    "l2": self.l2, "strategy": self.strategy}
        return PreferenceProfile(self.basis, self.weights, ModelIdentity.of(self.scorer.handle),
                                 description=self.description, evidence=evidence).bind(self.scorer.handle)

    # -- candidates -----------------------------------------------------------------------------------------

    def add_candidates(self, prompt: Prompt, answers: Sequence[str], personas: Sequence[str | None] | None = None,
                       features: np.ndarray | None = None, complete: Sequence[bool] | None = None) -> list[int]:
        """Keep answers to ``prompt`` as candidates, scored (one batched pass each) unless their ``features``
        (one row of φ per answer, from this basis and model) are given; their indices. ``complete``: whether each
        answer ended by itself (default: all did)."""
        answers = list(answers)
        personas = list(personas) if personas is not None else [None] * len(answers)
        complete = [True] * len(answers) if complete is None else [bool(c) for c in complete]
        if len(personas) != len(answers) or len(complete) != len(answers):
            raise ProfileError("Pass one persona (or None) and one complete flag per answer.")
        for answer in answers:
            self.scorer.response_ids(answer)  # an empty answer is refused here, scored or not
        if features is None:
            with self._cancellable() as cancelled:  # PreferenceLearner.cancel stops the scoring too
                features = self.scorer.features(prompt, answers, complete, cancelled=cancelled)
        features = np.asarray(features, dtype=float)
        if features.shape != (len(answers), len(self.basis)) or not np.all(np.isfinite(features)):
            raise ProfileError(f"features must be finite, one row of {len(self.basis)} per answer; got shape "
                               f"{features.shape}.")
        start = len(self.candidates)
        for text, persona, row, done in zip(answers, personas, features, complete):
            self.candidates.append(Candidate(prompt, text, persona, row, done))
        return list(range(start, len(self.candidates)))

    def contrast(self) -> list[str]:
        """The two poles to decode the next candidates under: the dimension most uncertain now."""
        hessian = self.hessian
        options: list[tuple[str, str]] = [(a, b) for _, a, b in self.basis.pairs()]
        if not options:  # no bipolar dimension: the two most uncertain single personas
            names = list(self.basis.names)
            variances = information(np.eye(len(self.basis))[: len(names)], hessian)
            order = np.argsort(-variances, kind="stable")
            return [names[i] for i in order[:2]] if len(names) > 1 else [names[0]]
        directions = np.zeros((len(options), len(self.basis)))
        for row, (a, b) in enumerate(options):
            directions[row, self.basis.index(a)] = 1.0
            directions[row, self.basis.index(b)] = -1.0
        uses = np.array([self._uses.get(a, 0) for a, _ in options], dtype=float)
        best = int(np.argmax(information(directions, hessian) / (1.0 + uses)))
        first, second = options[best]
        self._uses[first] = self._uses.get(first, 0) + 1
        return [first, second]

    def generate(self, prompt: Prompt, personas: Sequence[str | None], seed: int | None = None
                 ) -> list[tuple[str, bool]]:
        """One answer to ``prompt`` decoded under each persona (None: plain), through the runtime: ``(text,
        complete)`` pairs, ``complete`` False for an answer cut at ``max_tokens``. Answer ``i`` is sampled with
        seed ``seed + i`` (default: the learner's seed plus the number of answers it decoded before). Where the
        model batches concurrent requests (transformers) the answers are decoded at once, sharing its forwards."""
        handle = self.scorer.handle
        conversation = self.scorer.conversation(prompt)
        if seed is None:
            seed = self.seed + self._decoded
            self._decoded += len(personas)
        runs = []
        with self._cancellable() as cancelled:
            for i, persona in enumerate(personas):
                preferences = [] if persona is None else [
                    Persona(name=persona, description=self.basis.text(persona))]
                # One row per token on either schedule; lockstep lets it join a shared batch.
                options = dataclasses.replace(self.options, seed=seed + i, schedule="lockstep")
                request = build_request(handle.backend, conversation, options=options,
                                        personas=PersonaSettings(preferences=preferences), model_name=handle.display)
                runs.append(RequestRun(request, cancelled=cancelled))
            texts = read_texts(runs, what="answer")
        if cancelled.is_set():
            raise ProfileError("Decoding the answers was cancelled (PreferenceLearner.cancel); ask again.")
        return [(text.strip(), run.finish_reason == "stop") for text, run in zip(texts, runs)]

    @contextlib.contextmanager
    def _cancellable(self) -> Iterator[threading.Event]:
        """An event :meth:`cancel` sets while the body runs (decoding or scoring answers)."""
        cancelled = threading.Event()
        with self._running_lock:
            self._running.add(cancelled)
        try:
            yield cancelled
        finally:
            with self._running_lock:
                self._running.discard(cancelled)

    def cancel(self) -> bool:
        """Stop the answers this learner is decoding or scoring now (from another thread): the :meth:`generate`,
        :meth:`add_candidates` or :meth:`next_question` call raises
        :class:`~langchain_persona_judge.errors.ProfileError` within a token or a forward, and nothing is added.
        False when nothing was being decoded or scored."""
        with self._running_lock:
            running = list(self._running)
        for event in running:
            event.set()
        return bool(running)

    def _candidates_for(self, prompt: Prompt) -> list[int]:
        key = self.scorer.conversation(prompt)
        return [i for i, c in enumerate(self.candidates) if self.scorer.conversation(c.prompt) == key]

    def _make_candidates(self, prompt: Prompt) -> None:
        personas = self.contrast()
        answers = self.generate(prompt, personas)
        kept = [(a, p, c) for (a, c), p in zip(answers, personas) if a.strip()]
        if len({a for a, _, _ in kept}) < 2:  # the two decodes agreed (or one is empty): add a plain answer
            kept += [(a, None, c) for a, c in self.generate(prompt, [None]) if a.strip()]
        unique = list({a: (a, p, c) for a, p, c in kept}.values())
        if len(unique) < 2:
            raise ProfileError("The model gave the same answer under contrasting personas; try another prompt.")
        self.add_candidates(prompt, [a for a, _, _ in unique], [p for _, p, _ in unique],
                            complete=[c for _, _, c in unique])

    def _open_pairs(self, within: list[int] | None = None) -> list[tuple[int, int]]:
        indices = range(len(self.candidates)) if within is None else within
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(repr(self.scorer.conversation(self.candidates[i].prompt)), []).append(i)
        return [
            pair for members in groups.values() for pair in itertools.combinations(sorted(members), 2)
            if pair not in self.asked and self.candidates[pair[0]].text != self.candidates[pair[1]].text
        ]

    # -- asking ---------------------------------------------------------------------------------------------

    def next_question(self, prompt: Prompt | None = None) -> Question:
        """The next pair to ask about: of ``prompt``'s candidates (made if needed), else of every candidate,
        else of new candidates for the next prompt of the pool."""
        if prompt is not None:
            pairs = self._open_pairs(self._candidates_for(prompt))
            if not pairs:
                self._make_candidates(prompt)
                pairs = self._open_pairs(self._candidates_for(prompt))
        else:
            pairs = self._open_pairs()
            while not pairs:
                if self._next_prompt >= len(self.prompts):
                    raise ProfileError("Every pair of candidates has been asked and the prompt pool is used up; "
                                       "add prompts or candidates.")
                self._make_candidates(self.prompts[self._next_prompt])
                self._next_prompt += 1
                pairs = self._open_pairs()
        differences = np.stack([self.candidates[i].features - self.candidates[j].features for i, j in pairs])
        scores = information(differences, self.hessian)
        if self.strategy == "active":
            chosen = int(np.argmax(scores))
        else:
            chosen = int(self.rng.integers(len(pairs)))
        i, j = pairs[chosen]
        self.asked.add((i, j))
        first, second = self.candidates[i], self.candidates[j]
        question = Question(len(self.questions), first.prompt, (first.text, second.text),
                            (first.persona, second.persona), float(scores[chosen]), (i, j))
        self.questions.append(question)
        return question

    def record(self, question: Question, choice: Choice) -> PreferenceProfile:
        """Record the user's pick for ``question`` and refit; the updated profile."""
        if (not isinstance(question, Question) or question.number >= len(self.questions)
                or self.questions[question.number] is not question):
            raise ProfileError("This question was not asked by this learner; record answers to its own questions.")
        if question.number in self._recorded:
            raise ProfileError(f"Question {question.number + 1} is already answered.")
        outcome = parse_choice(choice, question.answers)
        i, j = question.pair
        self.differences.append(self.candidates[i].features - self.candidates[j].features)
        self.outcomes.append(outcome)
        self._recorded.add(question.number)
        self.fit = fit_bradley_terry(np.stack(self.differences), np.array(self.outcomes), l2=self.l2,
                                     prior=self.prior)
        return self.profile


__all__ = ["DEFAULT_PROMPTS", "Candidate", "Choice", "PreferenceLearner", "Question", "Strategy", "parse_choice"]
