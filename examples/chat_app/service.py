"""What every endpoint of the chat app shares: :class:`ChatService` (the model with its admission queue, the
store, the generations, the accounts, the personas).

Admission: the library's own queue (``ChatPersonaJudge(max_concurrency=MAX_CONCURRENT, max_queue=MAX_QUEUE)``,
one queue per model, served round-robin by account, ``astream(..., user=account id)``) decides which generations
decode and which wait (comparisons decode and score through the same slots); a generation is ``queued`` until
its first chunk arrives. The app refuses (429, before storing anything) a message that would not fit: the
generations it has accepted and not finished already fill MAX_CONCURRENT + MAX_QUEUE, or the library's queue
is full. Decoding runs in this app's executor (``ChatPersonaJudge(executor=...)``), which records, per
generation, when its thread starts and returns. One answer's run is :class:`~.answers.AnswerRun`.

Where answers are decoded is :attr:`ChatService.model` (:mod:`.models`): this process (``LocalModel``), or a
Persona-judge server at CHAT_MODEL_URL (``RemoteModel``). On the remote tier the admission queue is the server's,
served round-robin by the ``user`` each request names (the account id); its 429 reaches the client as an ``error``
event with status 429 and ``retry_after`` (the message taken back), and this app's own count (MAX_CONCURRENT +
MAX_QUEUE answers in flight in this process) still refuses with HTTP 429 before anything is stored.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import HTTPException

from .answers import AnswerRun
from .generations import Generation, TrackingExecutor
from .locks import KeyedLocks
from .models import AnswerModel, LocalModel, ModelTierError, RemoteModel
from .profiles import Profiles
from .schemas import MessageIn, Plan, User
from .security import bearer_token, hash_token, token_matches
from .settings import ID, PREFERENCE_CHARS, RETRY_AFTER_S, SHUTDOWN_GRACE_S, SWEEP_EVERY_S, TOUCH_EVERY_S, Settings
from .storage import Store, open_store

log = logging.getLogger("examples.chat_app")


class ChatService:
    """Everything the endpoints share: the model (with its admission queue), the store, the generations."""

    def __init__(self, settings: Settings) -> None:
        from langchain_persona_judge import ChatPersonaJudge
        from langchain_persona_judge.personas import PersonaRegistry

        self.settings = settings
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        self.registry = PersonaRegistry.default()
        # One thread per generation the admission queue holds (decoding or waiting), and a few to spare for
        # threads that are returning.
        self.executor = TrackingExecutor(max_workers=settings.max_concurrent + settings.max_queue + 4)
        model = {"model": settings.model} if settings.model else {}  # else $PERSONA_JUDGE_MODEL, else embedded
        self.llm = ChatPersonaJudge(
            **model, temperature=settings.temperature, max_tokens=settings.max_tokens,
            repetition_penalty=settings.repetition_penalty,
            max_concurrency=settings.max_concurrent, max_queue=settings.max_queue, executor=self.executor,
            # A runaway answer ends (waiting for a slot included); a conversation longer than the model's context
            # drops its oldest turns rather than failing every later answer.
            timeout=settings.request_timeout, truncation="drop_oldest",
        )
        self.model: AnswerModel = self._answer_model(settings)
        """Where answers are decoded: this process, or the Persona-judge server at CHAT_MODEL_URL."""
        self.store: Store = open_store(settings.database_url, settings.db_path, private_dir=settings.default_db)
        self.generations: OrderedDict[str, Generation] = OrderedDict()
        self.clock = time.time
        """Wall-clock seconds since the epoch: accounts' last use and their expiry (a test fakes it)."""
        self.started_at = time.time()
        self._next_sweep = 0.0  # when sign-up may next look for idle empty accounts
        self.totals = {"completed": 0, "cancelled": 0, "errors": 0, "refused": 0, "output_tokens": 0}
        self._session_locks = KeyedLocks()  # one per conversation id
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # generations (and comparisons being made) accepted and not finished
        self._in_flight: dict[str, int] = {}  # user id -> the same, per user
        self.comparisons_running = 0
        self.profiles = Profiles(
            self.store, self.llm, self.executor, self.job, max_tokens=settings.profile_max_tokens,
            repetition_penalty=settings.repetition_penalty, max_description_chars=PREFERENCE_CHARS,
            local_tier=settings.model_url is None,
        )

    def _answer_model(self, settings: Settings) -> AnswerModel:
        if settings.model_url is None:
            return LocalModel(self.llm)
        # What ChatPersonaJudge above is built with, sent with every request (the server's defaults are the library's).
        defaults = {"temperature": settings.temperature, "max_tokens": settings.max_tokens,
                    "repetition_penalty": settings.repetition_penalty, "truncation": "drop_oldest"}
        return RemoteModel(settings.model_url, settings.model_api_key, defaults=defaults,
                           timeout=settings.request_timeout)

    async def model_name(self) -> str:
        """The served model's name (a remote tier's, asked of the server once)."""
        try:
            return await self.model.display_name()
        except ModelTierError as exc:
            log.warning("the model server's name is unknown: %s", exc)
            return "unknown (the model server is unreachable)"

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer once its weights are loaded in this process (None on a remote tier)."""
        return self.model.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.model.tokenizer = value

    async def preload(self) -> None:
        """Load the weights (and warm the first forward) before the first request; on a remote tier, ask the
        server its model's name."""
        await self.model.preload()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_S)
        self.executor.shutdown(wait=False, cancel_futures=True)
        await self.model.close()
        self.profiles.close()
        self.store.close()
        log.info("shut down; peak RSS %.1f MB", peak_rss_bytes() / 2**20)

    # -- accounts

    async def authenticate(self, header: str | None) -> User:
        token = bearer_token(header)
        if token is not None:
            row = await self.store.user_by_token_hash(hash_token(token))
            if row is not None and token_matches(token, row["token_hash"]):
                now = self.clock()
                if now - float(row["last_seen"]) >= TOUCH_EVERY_S:  # written at most hourly, not per request
                    await self.store.touch_user(row["id"], now)
                return User(row["id"])
        raise HTTPException(
            401, "A valid account token is needed: Authorization: Bearer <token> (POST /api/users makes one).",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def create_account(self, token_hash: str) -> dict[str, Any] | None:
        """A new account (None: the server has CHAT_MAX_USERS). Idle empty accounts are swept first, at most every
        SWEEP_EVERY_S, and again whenever the cap is reached."""
        await self.sweep_idle_accounts()
        row = await self.store.create_user(token_hash, self.settings.max_users)
        if row is None and await self.sweep_idle_accounts(force=True):
            row = await self.store.create_user(token_hash, self.settings.max_users)
        return row

    async def sweep_idle_accounts(self, *, force: bool = False) -> int:
        """Delete the accounts with no conversation and no profile unused for CHAT_ACCOUNT_IDLE_DAYS (0: never);
        how many. Unless ``force``, at most once every SWEEP_EVERY_S."""
        days = self.settings.account_idle_days
        now = self.clock()
        if days <= 0 or (not force and now < self._next_sweep):
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        deleted = await self.store.expire_idle_users(now - days * 86400.0)
        if deleted:
            log.info("deleted %d idle empty account(s) (unused for %d days)", deleted, days)
        return deleted

    # -- the library's admission queue

    def admission(self) -> dict[str, Any] | None:
        """The admission queue's state: decoding, waiting, and its limits (None before the model is loaded, and on
        a remote tier, whose queue is the server's)."""
        state = self.model.admission()
        if state is None:
            return None
        return {**state, "max_concurrency": self.settings.max_concurrent, "max_queue": self.settings.max_queue}

    def refuse_if_full(self, user: User) -> None:
        """HTTP 429 when this message would not fit: the user's own answers in flight, then the model's capacity
        (the generations accepted here and not finished, and the library's queue itself: a cancelled generation
        holds its slot until its thread returns). Checked and counted synchronously, so a burst cannot pass it."""
        s = self.settings
        mine = self._in_flight.get(user.id, 0)
        if mine >= s.max_in_flight:
            self.totals["refused"] += 1
            raise HTTPException(
                429, f"You already have {mine} answer(s) queued or being written, the most one user may have at "
                     f"once (CHAT_MAX_IN_FLIGHT={s.max_in_flight}). Wait for one to finish, or stop it.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        capacity = s.max_concurrent + s.max_queue
        state = self.admission()
        library_full = bool(state and state["running"] >= state["max_concurrency"]
                            and state["waiting"] >= state["max_queue"])
        if self._active >= capacity or library_full:
            self.totals["refused"] += 1
            raise HTTPException(
                429,
                f"The model is busy: {s.max_concurrent} answers are being decoded and {s.max_queue} are waiting, "
                f"the most this server queues (MAX_QUEUE={s.max_queue}). Retry in a moment.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    async def refuse_if_too_long(self, text: str) -> None:
        """HTTP 422 for a message over CHAT_MAX_MESSAGE_TOKENS, counted with the served model's tokenizer before
        anything is stored or queued: a request's cost to the model is bounded in tokens, not characters. On a
        remote tier the server counts (``POST /tokenize``); when it cannot be reached: 503 with Retry-After."""
        limit = self.settings.max_message_tokens
        try:
            tokens = await self.model.count_tokens(text)
        except ModelTierError as exc:
            log.warning("counting a message's tokens failed: %s", exc)
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            raise HTTPException(exc.status, exc.public, headers=headers) from None
        if tokens > limit:
            raise HTTPException(422, f"The message is {tokens} tokens long; the most one request may carry is "
                                     f"{limit}. Shorten it, or split it into several messages. "
                                     f"(CHAT_MAX_MESSAGE_TOKENS={limit})")

    @asynccontextmanager
    async def job(self, user: User) -> AsyncIterator[None]:
        """Admit and count one comparison being made (two answers decoded, then scored) like one answer: 429 when
        the caller or the model is at its limit (checked and counted synchronously, as for a message)."""
        self.refuse_if_full(user)
        self._active += 1
        self._in_flight[user.id] = self._in_flight.get(user.id, 0) + 1
        self.comparisons_running += 1
        try:
            yield
        finally:
            self.comparisons_running -= 1
            self._release(user.id)

    # -- personas

    def personas(self) -> list[dict[str, Any]]:
        out = []
        for persona in self.registry:
            out.append({
                "name": persona.name,
                "description": persona.description,
                "tags": list(persona.tags),
                "text": self.registry.render(persona.name),
            })
        return out

    def plan(self, body: MessageIn) -> Plan:
        """Persona names rendered to their texts, then the free-text preferences (blank ones dropped), each
        checked as the model will check it (a one-word preference must name a persona): HTTP 422 before anything
        is stored."""
        from langchain_persona_judge.errors import PersonaError
        from langchain_persona_judge.personas import resolve_preference

        unknown = [name for name in body.personas if name not in self.registry]
        if unknown:
            raise HTTPException(422, f"Unknown persona(s) {unknown}; GET /api/personas lists them.")
        pairs = [(self.registry.render(name), name) for name in body.personas]
        for text in (p.strip() for p in body.preferences):
            if not text:
                continue
            try:
                resolve_preference(text, self.registry)
            except (PersonaError, KeyError):
                raise HTTPException(
                    422, f"The preference {text!r} is one word but no persona's name; write it as a sentence "
                         "(e.g. 'Talk like a pirate.') or pick a persona from GET /api/personas.",
                ) from None
            pairs.append((text, text))
        seen: dict[str, str] = {}
        for text, label in pairs:
            seen.setdefault(text, label)
        return Plan(list(seen), list(seen.values()))

    async def plan_with_profile(self, user: User, plan: Plan) -> Plan:
        """A message that picks no persona and no preference is decoded with the caller's profile, if any."""
        if plan.preferences:
            return plan
        profile, note = await self.profiles.for_decoding(user.id)
        if profile is None:
            return Plan([], [], profile_note=note)
        decoding = profile.decoding_plan()
        labels = [getattr(p, "name", None) or str(p) for p in decoding.preferences]
        texts = tuple(getattr(p, "description", None) or str(p) for p in decoding.preferences)
        return Plan([], labels, profile=profile, profile_texts=texts)

    # -- generations

    def stats(self, user: User) -> dict[str, Any]:
        states = [g.state for g in self.generations.values()]
        return {
            "max_concurrent": self.settings.max_concurrent,
            "max_queue": self.settings.max_queue,
            "running": states.count("running"),
            "queued": states.count("queued"),
            "decoding_threads": self.executor.live,
            "comparisons": self.comparisons_running,
            "admission": self.admission(),
            **self.totals,
            "uptime_s": round(time.time() - self.started_at, 1),
            "yours": {"in_flight": self._in_flight.get(user.id, 0), "max_in_flight": self.settings.max_in_flight},
        }

    def generation_for(self, user: User, generation_id: str) -> Generation | None:
        gen = self.generations.get(generation_id) if ID.fullmatch(generation_id) else None
        return gen if gen is not None and gen.user_id == user.id else None

    def _remember(self, gen: Generation) -> None:
        self.generations[gen.id] = gen
        while len(self.generations) > 2000:  # finished generations are kept for inspection, up to a bound
            oldest_id, oldest = next(iter(self.generations.items()))
            if not oldest.done:
                break
            del self.generations[oldest_id]

    def start(self, user: User, session_id: str, body: MessageIn, plan: Plan) -> Generation:
        gen = Generation(id=uuid.uuid4().hex, session_id=session_id, user_id=user.id)
        self._remember(gen)
        self._active += 1
        self._in_flight[user.id] = self._in_flight.get(user.id, 0) + 1
        task = asyncio.get_running_loop().create_task(AnswerRun(self, gen, body, plan).run())
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return gen

    def finished(self, gen: Generation) -> None:
        """A generation's run is over: its slot is free."""
        self._release(gen.user_id)

    def _release(self, user_id: str) -> None:
        self._active -= 1
        left = self._in_flight.get(user_id, 1) - 1
        if left > 0:
            self._in_flight[user_id] = left
        else:
            self._in_flight.pop(user_id, None)

    def cancel(self, gen: Generation, reason: str, *, force: bool = False) -> None:
        """Stop a generation. One that has finished decoding is left to store its answer, unless ``force``."""
        if gen.decoded and not force:
            return
        if gen.task is not None and not gen.task.done() and gen.cancel_reason is None:
            gen.cancel_reason = reason
            gen.task.cancel()

    def forget_session(self, session_id: str) -> int:
        """Before a conversation is deleted: cancel its generations (they store nothing more). How many."""
        count = 0
        for gen in list(self.generations.values()):
            if gen.session_id == session_id and not gen.done:
                gen.orphaned = True
                self.cancel(gen, "conversation deleted", force=True)
                count += 1
        return count

    def turn(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """One answer at a time per conversation, in arrival order: the next message sees the previous answer."""
        return self._session_locks.hold(session_id)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
