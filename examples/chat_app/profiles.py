"""Learning each user's preferences in the chat app: two answers side by side, a pick, the stored profile.

The maths is the library's (``langchain_persona_judge.profiles``): a :class:`PreferenceLearner` per user proposes
each question (the prompt, and two answers decoded under the contrasting poles its rule picks: the dimension the
current profile is least sure about) and refits on each pick (Bradley–Terry, "no preference" a tie); the
profile is a :class:`PreferenceProfile`, stored as the CLI's file (``persona-judge learn``: its JSON form) and
decoded with through ``ChatPersonaJudge(profile=...)``.

What the store keeps, per user (:mod:`.storage`): the profile file, its number of picks and a revision; the
comparisons shown (prompt, the two answers, and what a pick needs: the personas each was decoded under, their
features, whether each ended by itself). A pick names a stored comparison of the caller, never answer text sent
by the client.

What lives in this process's memory: the users' learners (a bounded LRU), so that a run of picks refits on all
of them and the questions rotate through the dimensions. A learner is rebuilt from the stored profile (as its
prior, like ``persona-judge learn --resume``) when this process has none for the user, or the stored profile
changed since (a pick or an import through another process, a reset): each write names the revision it read,
and a write on top of a newer one is refused (409), never lost. A pick on a comparison this learner did not
propose (another process's, or one from before a restart) refits from the comparison's stored features without
scoring again.

Generating the two answers and scoring them take seconds on the embedded model: they run on the app's decoding
executor, through the model's admission queue, and count as one of the caller's answers in flight (429 when the
caller or the model is at its limit), like a chat message.

On a remote model tier (CHAT_MODEL_URL), answers are decoded by the server, with the stored profile sent along
(the server checks it fits its model); learning and importing still need the model's scores, so they load the
model named by CHAT_MODEL in this process on first use, with an admission queue of its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from langchain_persona_judge import QueueFullError
from langchain_persona_judge.profiles import DEFAULT_PROMPTS, PreferenceProfile, ProfileError

from .locks import KeyedLocks
from .storage import Store

log = logging.getLogger("examples.chat_app")

ID = re.compile(r"[0-9a-f]{32}")
PROMPTS: tuple[str, ...] = DEFAULT_PROMPTS
"""The built-in pool a comparison's question comes from when the caller gives none (the learner's own)."""
KEEP_COMPARISONS = 50
"""Comparisons kept per user (answered or not); older ones are forgotten, and picking one then answers 404."""
LEARNERS = 64
"""Users whose learner this process keeps in memory (least recently used first out)."""
UPLOAD_SOURCE = "the uploaded file"
IMPORT_WORKERS = 2
"""Threads that read uploaded profile files (their own: an import never takes a decoding thread)."""
IMPORTS_PER_USER = 1
"""Imports one user may have being read at once; one more is refused with 429."""
CHOICE_LABELS = {"a": "the first answer (A)", "b": "the second answer (B)", "none": "no preference"}


@dataclass
class _Entry:
    """One user's learner, the stored revision it is based on, and the questions it proposed (by comparison id)."""

    learner: Any
    revision: str | None
    questions: dict[str, Any] = field(default_factory=dict)
    reset: bool = False
    """The user reset their profile while this learner was in use: what it was decoding was cancelled."""


class Profiles:
    """Each user's preference profile: comparisons, picks, reset, export and import, and the profile to decode
    with.

    Args:
        store: the app's store. llm: the served ``ChatPersonaJudge`` (its weights are shared with the learner).
        executor: where the seconds-long work runs (the app's decoding executor).
        job: ``job(user)``, an async context manager that admits one unit of decoding work for the user (429 when
            full) and counts it until it ends.
        max_tokens, temperature, repetition_penalty: how the two answers are decoded.
        max_description_chars: the longest description an imported profile may carry (it becomes a preference).
        local_tier: answers are decoded by ``llm`` in this process (False: by a remote model tier, which checks a
            profile against its model itself; nothing is loaded here until a comparison or an import needs it).
    """

    def __init__(self, store: Store, llm: Any, executor: Any, job: Callable[[Any], AbstractAsyncContextManager[Any]],
                 *, max_tokens: int = 48, temperature: float = 0.7, repetition_penalty: float | None = 1.2,
                 max_description_chars: int = 500, local_tier: bool = True) -> None:
        self.store = store
        self.llm = llm
        self.executor = executor
        self.job = job
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.max_description_chars = max_description_chars
        self.local_tier = local_tier
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._locks = KeyedLocks()  # one per user id
        self._basis: Any = None
        self._handle: Any = None
        # Uploaded files are read off the decoding threads, on a small executor of their own, one per user at a time.
        self._import_executor = ThreadPoolExecutor(max_workers=IMPORT_WORKERS, thread_name_prefix="profile-import")
        self._importing: dict[str, int] = {}

    def close(self) -> None:
        """Stop the imports' executor (the server is shutting down)."""
        self._import_executor.shutdown(wait=False, cancel_futures=True)

    # -- plumbing

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    def _user(self, user_id: str) -> AbstractAsyncContextManager[None]:
        """One profile operation at a time per user in this process (the learner is not thread-safe)."""
        return self._locks.hold(user_id)

    def basis(self) -> Any:
        """The app's basis: the library's built-in one (registry personas tagged ``basis``)."""
        if self._basis is None:
            from langchain_persona_judge.profiles import resolve_basis

            self._basis = resolve_basis(None)
        return self._basis

    def _model_handle(self) -> Any:
        """The served model as the learner scores with it (transformers; loaded once, shared). A thread's job."""
        if self._handle is None:
            from langchain_persona_judge.profiles import resolve_model

            self._handle = resolve_model(self.llm)
            if self.local_tier:  # a remote tier's slots are the server's: learning here has a queue of its own
                self._share_slots(self._handle.model)
        return self._handle

    def _share_slots(self, scoring_model: Any) -> None:
        """Comparisons decode and score on a transformers copy of the served model when it is served by llama.cpp:
        make that copy wait in the served model's admission queue, so they count against the same slots."""
        from langchain_persona_judge.runtime import REGISTRY

        served = self.llm.model_handle()  # the served model's handle (shared; its weights key its queue)
        if served.weights is not scoring_model:
            REGISTRY.share_queue(scoring_model, served)

    @staticmethod
    def _parse(record: dict[str, Any] | None) -> PreferenceProfile | None:
        if record is None:
            return None
        return PreferenceProfile.from_dict(json.loads(record["profile"]), source="Your stored profile")

    def _forget(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def _new_learner(self, prior: PreferenceProfile | None) -> Any:
        from langchain_persona_judge.profiles import PreferenceLearner

        return PreferenceLearner(
            self._model_handle(), basis=None if prior is None else list(prior.weights), prior=prior,
            max_tokens=self.max_tokens, temperature=self.temperature, repetition_penalty=self.repetition_penalty,
            seed=random.randrange(2**31),
        )

    async def _entry(self, user_id: str, record: dict[str, Any] | None, *, fresh: bool = False) -> _Entry:
        """The user's learner for the stored ``record`` (built, with the stored profile as its prior, when this
        process has none for that revision, or when ``fresh``)."""
        revision = None if record is None else record["revision"]
        entry = self._entries.get(user_id)
        if fresh or entry is None or entry.revision != revision:
            try:
                prior = self._parse(record)
                learner = await self._in_thread(self._new_learner, prior)
            except ProfileError as exc:
                log.warning("user %s: stored profile unusable: %s", user_id, exc)
                raise HTTPException(409, f"Your stored profile does not fit this server's model: {exc} Reset it "
                                         "(DELETE /api/profile) or import one learned for this model.") from None
            entry = self._entries[user_id] = _Entry(learner, revision)
        self._entries.move_to_end(user_id)
        while len(self._entries) > LEARNERS:
            self._entries.popitem(last=False)
        return entry

    # -- reading

    def summary(self, profile: PreferenceProfile | None, record: dict[str, Any] | None) -> dict[str, Any]:
        """What the page draws: every basis persona's weight (in basis order), the strongest poles, the count."""
        basis = self.basis() if profile is None else profile.basis
        weights = profile.weights if profile is not None else {name: 0.0 for name in basis.names}
        return {
            "exists": profile is not None,
            "choices": 0 if record is None else int(record["choices"]),
            "updated_at": None if record is None else record["updated_at"],
            "description": None if profile is None else profile.description,
            "model": None if profile is None else profile.model.display,
            "weights": [{"name": name, "weight": float(weights[name]), "dimension": dimension,
                         "opposite": basis.opposite(name)}
                        for name, dimension in zip(basis.names, basis.dimensions)],
            "top": [] if profile is None else [
                {"name": name, "weight": weight, "leans_to": profile.pole_of(name, weight)}
                for name, weight in profile.top(profile.poles)
            ],
        }

    async def get(self, user_id: str) -> dict[str, Any]:
        record = await self.store.get_profile(user_id)
        try:
            profile = self._parse(record)
        except ProfileError as exc:  # cannot happen for what this app wrote; say so rather than fail
            log.error("user %s: stored profile unreadable: %s", user_id, exc)
            raise HTTPException(409, "Your stored profile cannot be read; reset it (DELETE /api/profile).") from None
        return self.summary(profile, record)

    async def for_decoding(self, user_id: str) -> tuple[PreferenceProfile | None, str | None]:
        """The user's profile to decode an answer with, or None; and, when there is one that cannot be used (it
        was learned with another model than the one served now), why."""
        record = await self.store.get_profile(user_id)
        if record is None:
            return None, None
        try:
            profile = self._parse(record)
            assert profile is not None
            if not self.local_tier:  # the server checks it against its own model (a 400 if it does not fit)
                return profile, None
            handle = self._handle or await self._in_thread(self._model_handle)
            profile.check_model(handle)
        except ProfileError as exc:
            log.warning("user %s: profile not used for decoding: %s", user_id, exc)
            return None, "Your profile was learned with another model; reset it or import one for this model."
        return profile, None

    # -- learning

    async def _prompt(self, user_id: str) -> str:
        """A question from the built-in pool that none of the user's recent comparisons asked."""
        recent = set(await self.store.recent_prompts(user_id, len(PROMPTS) // 2))
        fresh = [p for p in PROMPTS if p not in recent]
        return random.choice(fresh or list(PROMPTS))

    async def propose(self, user: Any, prompt: str | None) -> dict[str, Any]:
        """A new comparison: the prompt, and two answers decoded under the poles the learner's rule picks."""
        prompt = (prompt or "").strip() or await self._prompt(user.id)
        async with self.job(user), self._user(user.id):
            record = await self.store.get_profile(user.id)
            entry = await self._entry(user.id, record)
            try:
                question = await self._in_thread(entry.learner.next_question, prompt)
            except QueueFullError:
                raise HTTPException(429, "The model is busy; retry in a moment.", headers={"Retry-After": "5"}) \
                    from None
            except ProfileError as exc:  # e.g. the same answer under both personas: the message says what to do
                if entry.reset:  # cancelled by a reset (Profiles.reset): nothing was stored
                    raise HTTPException(409, "Your profile was reset while these answers were being written; "
                                             "ask for a new comparison.") from None
                raise HTTPException(422, str(exc)) from None
            first, second = (entry.learner.candidates[i] for i in question.pair)
            data = {
                "personas": list(question.personas),
                "features": [first.features.tolist(), second.features.tolist()],
                "complete": [bool(first.complete), bool(second.complete)],
                "information": float(question.information),
            }
            row = await self.store.add_comparison(user.id, prompt, question.answers[0], question.answers[1], data,
                                                  keep=KEEP_COMPARISONS)
            entry.questions[row["id"]] = question
        return {"id": row["id"], "prompt": prompt, "answer_a": question.answers[0], "answer_b": question.answers[1],
                "created_at": row["created_at"]}

    async def comparison(self, user_id: str, comparison_id: str) -> dict[str, Any]:
        """The caller's stored comparison; 404 for an unknown one or another user's, alike."""
        row = await self.store.comparison(user_id, comparison_id) if ID.fullmatch(comparison_id) else None
        if row is None:
            raise HTTPException(404, "No such comparison; POST /api/profile/comparisons makes one.")
        return row

    @staticmethod
    def _replay(learner: Any, row: dict[str, Any]) -> Any:
        """The stored comparison as a question of ``learner`` (a fresh one: its only two candidates), from the
        stored features; nothing is decoded or scored."""
        data = row["data"]
        answers = [row["answer_a"], row["answer_b"]]
        learner.add_candidates(row["prompt"], answers, data["personas"], features=np.asarray(data["features"]),
                               complete=data["complete"])
        question = learner.next_question(row["prompt"])
        if list(question.answers) != answers:
            raise ProfileError("the stored comparison could not be asked again")
        return question

    async def choose(self, user: Any, comparison_id: str, choice: str) -> dict[str, Any]:
        """Record the caller's pick (``a``, ``b`` or ``none``) for one of their comparisons; the updated profile."""
        row = await self.comparison(user.id, comparison_id)
        if row["choice"] is not None:
            raise HTTPException(409, f"This comparison was already answered ({CHOICE_LABELS[row['choice']]}); ask "
                                     "for a new one.")
        async with self._user(user.id):
            record = await self.store.get_profile(user.id)
            revision = None if record is None else record["revision"]
            entry = self._entries.get(user.id)
            question = entry.questions.get(comparison_id) if entry and entry.revision == revision else None
            try:
                if entry is None or question is None:  # another process's comparison, or a learner rebuilt since
                    entry = await self._entry(user.id, record, fresh=True)
                    question = await self._in_thread(self._replay, entry.learner, row)
                profile = await self._in_thread(entry.learner.record, question, choice)
            except ProfileError as exc:
                self._forget(user.id)
                log.error("user %s: cannot record a pick for comparison %s: %s", user.id, comparison_id, exc)
                raise HTTPException(409, "This comparison cannot be used with your current profile; ask for a new "
                                         "one.") from None
            before = self._parse(record)
            choices = (0 if record is None else int(record["choices"])) + 1
            ties = int((before.evidence.get("ties") if before is not None else 0) or 0) + (choice == "none")
            profile = profile.with_weights(profile.vector, comparisons=choices, ties=ties)
            saved = await self.store.save_profile(
                user.id, json.dumps(profile.to_dict(), ensure_ascii=False, allow_nan=False), choices=choices,
                expected_revision=entry.revision, comparison_id=comparison_id, choice=choice,
            )
            if saved is None:  # the profile changed meanwhile (another process), or this pick was made there
                self._forget(user.id)
                again = await self.store.comparison(user.id, comparison_id)
                if again is not None and again["choice"] is not None:
                    raise HTTPException(409, "This comparison was already answered; ask for a new one.")
                raise HTTPException(409, "Your profile changed meanwhile (another tab or device); pick again.")
            entry.revision = saved["revision"]
            entry.questions.pop(comparison_id, None)
        summary = self.summary(profile, saved)
        summary.update(comparison_id=comparison_id, choice=choice, personas=row["data"].get("personas"))
        return summary

    # -- reset, export, import

    async def reset(self, user_id: str) -> dict[str, Any]:
        entry = self._entries.get(user_id)
        if entry is not None:  # a comparison being decoded or scored for this user stops now, not hold the reset
            entry.reset = True
            entry.learner.cancel()
        async with self._user(user_id):
            deleted = await self.store.delete_profile(user_id)
            self._forget(user_id)
        return {"deleted": deleted, **self.summary(None, None)}

    async def export(self, user_id: str, fmt: str) -> tuple[str, str]:
        """The stored profile as the CLI writes it (``PreferenceProfile.save``): ``(text, file name)``."""
        record = await self.store.get_profile(user_id)
        if record is None:
            raise HTTPException(404, "You have no profile yet: pick between two answers first, or import one.")
        profile = self._parse(record)
        assert profile is not None
        name = f"persona-judge-profile.{fmt}"

        def write() -> str:
            with tempfile.TemporaryDirectory(prefix="chat-profile-") as folder:
                path = profile.save(Path(folder) / name)
                return path.read_text(encoding="utf-8")

        return await asyncio.to_thread(write), name

    def _read_upload(self, raw: bytes) -> PreferenceProfile:
        """A profile file (YAML or JSON, as the CLI writes it), checked as ``PreferenceProfile.load`` checks one,
        then against this server's model and basis. HTTPException 422 (malformed) or 409 (another model or
        basis) with the reason."""
        if not raw.strip():
            raise HTTPException(422, "The uploaded file is empty; upload a profile file (persona-judge learn --out).")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(422, "The uploaded file is not UTF-8 text; a profile file is YAML or JSON.") from None
        try:  # size, nesting (before parsing), libyaml or JSON, no anchors, every field bounded
            profile = PreferenceProfile.from_text(text, source=UPLOAD_SOURCE)
        except ProfileError as exc:
            raise HTTPException(422, str(exc)) from None
        if profile.description and len(profile.description) > self.max_description_chars:
            raise HTTPException(422, f"The profile's description has {len(profile.description)} characters; the "
                                     f"most is {self.max_description_chars}.")
        try:
            profile.check_model(self._model_handle())
            profile.check_basis(self.basis())
        except ProfileError as exc:
            raise HTTPException(409, f"{UPLOAD_SOURCE[0].upper()}{UPLOAD_SOURCE[1:]} does not fit this server: "
                                     f"{exc}") from None
        return profile

    async def import_(self, user_id: str, raw: bytes) -> dict[str, Any]:
        """Replace the user's profile with an uploaded profile file; the new summary. The file is read on the
        imports' own small executor (never on the threads that decode answers), one import per user at a time
        (another one meanwhile: 429)."""
        if self._importing.get(user_id, 0) >= IMPORTS_PER_USER:
            raise HTTPException(429, "One of your profile imports is still being read; wait for it to finish.",
                                headers={"Retry-After": "5"})
        self._importing[user_id] = self._importing.get(user_id, 0) + 1
        try:
            loop = asyncio.get_running_loop()
            profile = await loop.run_in_executor(self._import_executor, self._read_upload, raw)
        finally:
            left = self._importing[user_id] - 1
            if left:
                self._importing[user_id] = left
            else:
                del self._importing[user_id]
        comparisons = profile.evidence.get("comparisons", 0)
        counted = isinstance(comparisons, int) and not isinstance(comparisons, bool) and comparisons >= 0
        choices = min(comparisons, 10**9) if counted else 0
        async with self._user(user_id):
            text = json.dumps(profile.to_dict(), ensure_ascii=False, allow_nan=False)
            saved = await self.store.save_profile(user_id, text, choices=choices, expected_revision=None,
                                                  replace=True)
            self._forget(user_id)
        assert saved is not None
        return self.summary(profile, saved)


__all__ = ["KEEP_COMPARISONS", "PROMPTS", "Profiles"]
