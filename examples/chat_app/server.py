"""A small chat server for ChatPersonaJudge, for many people: accounts, streaming answers (server-sent events),
conversations in SQLite or PostgreSQL, each answer's per-token provenance, and a preference profile learned from
each user's picks between two answers.

Run it (from the repository root):

    make chat                                       # installs the `app` extra once, then serves on $PORT (8000)
    .venv/bin/python -m examples.chat_app.server    # the same, without the install step

and open http://127.0.0.1:8000/. Configuration (environment variables):

    PORT                 port to listen on (default 8000)
    HOST                 interface to bind (default 127.0.0.1)
    CHAT_DB              SQLite file (default $XDG_DATA_HOME/langchain-persona-judge/chat.db, i.e.
                         ~/.local/share/...; created owner-only: folder 0700, files 0600)
    CHAT_DATABASE_URL    postgresql://... : PostgreSQL instead of SQLite, which several app processes can share
    CHAT_ALLOWED_HOSTS   host names the app answers to besides localhost, 127.0.0.1 and [::1] (comma-separated);
                         any other Host header gets 400 (DNS rebinding)
    CHAT_MAX_BODY_BYTES  the largest request body (default 262144; larger: 413)
    CHAT_MAX_MESSAGE_CHARS  the longest message (default 8000 characters; longer: 422)
    CHAT_MAX_MESSAGE_TOKENS  the longest message in the model's tokens, counted before anything is stored
                         (default 1024; longer: 422): what one request may cost the model to read
    CHAT_MAX_CONVERSATIONS  conversations per user (default 200; one more: 409)
    CHAT_MAX_MESSAGES    messages one conversation may hold, answers included (default 2000; one more: 409)
    CHAT_MAX_IN_FLIGHT   answers one user may have queued or decoding at once (default 2; one more: 429)
    CHAT_MAX_USERS       accounts this server creates (default 10000; then POST /api/users: 403)
    CHAT_SIGNUPS_PER_MINUTE  accounts one client address may create a minute, after a burst of 20 (default 30;
                         0: no limit; more: 429). Behind a proxy every client shares its address: limit there
    CHAT_DOCS            1: serve /docs and /openapi.json (default off)
    CHAT_HEADER_TIMEOUT  seconds a connection may take to send a request's headers (default 10; then closed)
    CHAT_MAX_TOKENS      answer length when a request does not ask for one (default 160)
    CHAT_MAX_TOKENS_CAP  the most tokens a request may ask for (default 1024)
    CHAT_TEMPERATURE     temperature when a request does not set one (default 0.7; 0 = greedy)
    CHAT_REPETITION_PENALTY  repetition penalty of every answer (default 1.2; 1 = off)
    CHAT_HISTORY         how many earlier messages of the conversation the model sees (default 16; only those
                         are read from the store; older turns are dropped first if they overflow the context)
    CHAT_REQUEST_TIMEOUT seconds one answer may take, waiting for a slot included (default 600)
    MAX_CONCURRENT       generations decoded at once; the others wait in the model's admission queue, served
                         round-robin by user, one user decoding at most MAX_CONCURRENT - 1 at once (default 2: one
                         model, a few CPU cores)
    MAX_QUEUE            generations that may wait in that queue; one more is refused with HTTP 429 (default 16)
    CHAT_MODEL           model to serve (default: $PERSONA_JUDGE_MODEL, else the embedded SmolLM2-135M-Instruct)
    CHAT_TORCH_THREADS   torch intra-op threads per generation (default: CPU cores // MAX_CONCURRENT, at least 1:
                         on a few cores, concurrent generations with many threads each mostly wait for each other)
    CHAT_PRELOAD         load the model at start-up (default 1) so the first answer does not wait for it
    CHAT_PROFILE_MAX_TOKENS  length of each of the two answers a comparison shows (default 48)
    CHAT_PROFILE_EVERY   the page offers a comparison after every Nth answer (default 5; 0: only on demand)
    LOG_LEVEL            log level (default warning); errors are logged with their details, clients get none

HTTP API (JSON unless said otherwise). Every /api/ endpoint but POST /api/users needs
``Authorization: Bearer <token>`` (missing or unknown: 401) and acts on the caller's own data only (another
user's conversation or generation: 404, exactly as an unknown one):

    GET  /                              the one-page chat UI (static/index.html)
    GET  /healthz                       liveness and the store answering (no token); 503 when it does not
    POST /api/users                     a new account -> {"user_id", "token"}; the token is shown this once
    GET  /api/personas                  the built-in personas: name, description, tags, rendered text
    GET  /api/config                    limits and defaults the UI needs
    POST /api/sessions                  a new conversation -> {"id", "created_at"}
    GET  /api/sessions                  the caller's recent conversations
    GET  /api/sessions/{id}             one conversation with its last messages (?limit=, default 500, at most
                                        1000; ?before=<message id> pages back)
    DELETE /api/sessions/{id}           forget a conversation; its running answer (if any) is cancelled
    POST /api/sessions/{id}/messages    {"content", "personas": [names], "preferences": [texts], "temperature"?,
                                        "guidance"?, "combine"?, "seed"?, "max_tokens"?} -> text/event-stream:
                                        queued, start, token ({"text"}), done (usage, stats, timings, the
                                        per-token provenance) or error; 429 when the model's admission queue is
                                        full or the caller has CHAT_MAX_IN_FLIGHT answers going
    GET  /api/generations/{id}          one of the caller's generations: state (queued/running/completed/
                                        cancelled/error) and whether its decoding thread is still running
    GET  /api/stats                     running/queued generations, decoding threads busy, the admission queue,
                                        totals, and the caller's answers in flight
    GET  /api/profile                   the caller's preference profile: weights [{name, weight}], top poles,
                                        number of choices, description
    DELETE /api/profile                 reset it (the profile and the comparisons)
    POST /api/profile/comparisons       {"prompt"?} -> {"id", "prompt", "answer_a", "answer_b"}: two answers decoded
                                        under contrasting personas (the learner's rule); 429 like a message
    POST /api/profile/comparisons/{id}/choice  {"choice": "a" | "b" | "none"} -> the updated profile
    GET  /api/profile/export            the profile file, as `persona-judge learn` writes it (?format=yaml|json)
    PUT  /api/profile/import            a profile file (the body: YAML or JSON); 422 malformed, 409 another model
                                        or basis

A message that picks no persona and no free-text preference is decoded with the caller's profile, when they have
one (``ChatPersonaJudge(profile=...)``; its ``done`` event and stored metadata say so under ``profile``).

Admission: the library's own queue (``ChatPersonaJudge(max_concurrency=MAX_CONCURRENT, max_queue=MAX_QUEUE)``,
one queue per model, served round-robin by account, ``astream(..., user=account id)``) decides which generations
decode and which wait (comparisons decode and score through the same slots); a generation is ``queued`` until
its first chunk arrives. The app refuses (429, before storing anything) a message that would not fit: the
generations it has accepted and not finished already fill MAX_CONCURRENT + MAX_QUEUE, or the library's queue
is full. Decoding runs in this app's executor (``ChatPersonaJudge(executor=...)``), which records, per
generation, when its thread starts and returns (``/api/generations/{id}`` -> ``worker_running``;
``/api/stats`` -> ``decoding_threads``).

Disconnects: when the client goes away (closed tab, Stop button, dropped connection), or its conversation is
deleted, the generation's task is cancelled; that closes the model's ``astream``, which tells its thread to stop
at its next chunk. The generation is marked cancelled at once; its slot in the admission queue is the
library's, held until that thread has really returned. A thread still waiting for a slot leaves the queue at
once.

Several processes on one PostgreSQL database share users and conversations; what lives in a process's memory
stays per process: its generations (``/api/generations/{id}`` answers on the process that runs it; deleting a
conversation cancels an answer running on the same process), the one-answer-at-a-time order per conversation,
and CHAT_MAX_IN_FLIGHT.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import os
import re
import resource
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, Field, StringConstraints, field_validator

from langchain_persona_judge import QueueFullError

from .locks import KeyedLocks
from .profiles import Profiles
from .provenance import provenance
from .ratelimit import RateLimiter
from .security import Guard, allowed_hosts, bearer_token, hash_token, new_token, page_csp, token_matches
from .storage import ConversationGone, Store, default_db_path, open_store

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
HEARTBEAT_S = 2.0  # an SSE comment this often while nothing else is sent: keeps proxies open, notices dead peers
SHUTDOWN_GRACE_S = 60.0  # how long shutdown waits for the generations' tasks to end
RETRY_AFTER_S = 5  # what a refused request (HTTP 429) is told to wait
SIGNUP_BURST = 20  # sign-ups one client address may make at once before CHAT_SIGNUPS_PER_MINUTE applies
HEALTH_TIMEOUT_S = 2.0  # /healthz: how long the store may take to answer before the probe says 503
ID = re.compile(r"[0-9a-f]{32}")  # conversation and generation ids; fullmatch: "$" would let a trailing newline in
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes [0, 2**63) here (and wraps negatives): strict ints in range
NAME_CHARS = 64  # a persona name
PREFERENCE_CHARS = 500  # a free-text preference

log = logging.getLogger("examples.chat_app")


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SystemExit(f"{name}={raw!r} is not a finite number")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Settings:
    """Server settings; ``Settings.from_env()`` reads the variables listed in the module docstring."""

    db_path: Path = field(default_factory=default_db_path)
    database_url: str | None = None
    """A postgresql:// URL: PostgreSQL instead of the SQLite file at ``db_path``."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names accepted besides localhost, 127.0.0.1 and [::1]."""
    max_body_bytes: int = 256 * 1024
    max_message_chars: int = 8000
    max_message_tokens: int = 1024
    max_conversations: int = 200
    max_messages: int = 2000
    """Messages one conversation may hold (a message and its answer are two); one more: 409."""
    max_in_flight: int = 2
    max_users: int = 10_000
    signups_per_minute: int = 0
    """Sign-ups per client address a minute, after a burst of SIGNUP_BURST (0: no limit; the server's environment
    default, CHAT_SIGNUPS_PER_MINUTE, is 30)."""
    docs: bool = False
    max_tokens: int = 160
    max_tokens_cap: int = 1024
    temperature: float = 0.7
    repetition_penalty: float | None = 1.2
    """Applied to every persona alike (answers stay exact); a 135M model loops without one. None or 1: off."""
    history: int = 16
    request_timeout: float | None = 600.0
    """Seconds one answer may take, waiting for a slot included (past it: stopped, the text so far kept)."""
    max_concurrent: int = 2
    max_queue: int = 16
    model: str | None = None
    torch_threads: int | None = None  # None: leave torch's setting alone
    preload: bool = True
    profile_max_tokens: int = 48
    """Length of each of the two answers a comparison shows (short: generating and scoring them takes seconds)."""
    profile_every: int = 5
    """The page offers a comparison after every this many answers (0: only when asked)."""

    @classmethod
    def from_env(cls) -> Settings:
        max_concurrent = _env_int("MAX_CONCURRENT", 2, 1)
        threads = _env_int("CHAT_TORCH_THREADS", 0) or max(1, (os.cpu_count() or 1) // max_concurrent)
        hosts = tuple(h.strip() for h in os.environ.get("CHAT_ALLOWED_HOSTS", "").split(",") if h.strip())
        settings = cls(
            db_path=Path(os.environ["CHAT_DB"]) if os.environ.get("CHAT_DB") else default_db_path(),
            database_url=os.environ.get("CHAT_DATABASE_URL") or None,
            allowed_hosts=hosts,
            max_body_bytes=_env_int("CHAT_MAX_BODY_BYTES", 256 * 1024, 1024),
            max_message_chars=_env_int("CHAT_MAX_MESSAGE_CHARS", 8000, 1),
            max_message_tokens=_env_int("CHAT_MAX_MESSAGE_TOKENS", 1024, 1),
            max_conversations=_env_int("CHAT_MAX_CONVERSATIONS", 200, 1),
            max_messages=_env_int("CHAT_MAX_MESSAGES", 2000, 2),
            max_in_flight=_env_int("CHAT_MAX_IN_FLIGHT", 2, 1),
            max_users=_env_int("CHAT_MAX_USERS", 10_000, 1),
            signups_per_minute=_env_int("CHAT_SIGNUPS_PER_MINUTE", 30, 0),
            docs=_env_flag("CHAT_DOCS", False),
            max_tokens=_env_int("CHAT_MAX_TOKENS", 160, 1),
            max_tokens_cap=_env_int("CHAT_MAX_TOKENS_CAP", 1024, 1),
            temperature=_env_float("CHAT_TEMPERATURE", 0.7),
            repetition_penalty=_env_float("CHAT_REPETITION_PENALTY", 1.2),
            history=_env_int("CHAT_HISTORY", 16, 0),
            request_timeout=float(_env_int("CHAT_REQUEST_TIMEOUT", 600, 1)),
            max_concurrent=max_concurrent,
            max_queue=_env_int("MAX_QUEUE", 16, 0),
            model=os.environ.get("CHAT_MODEL") or None,
            torch_threads=threads,
            preload=_env_flag("CHAT_PRELOAD", True),
            profile_max_tokens=_env_int("CHAT_PROFILE_MAX_TOKENS", 48, 1),
            profile_every=_env_int("CHAT_PROFILE_EVERY", 5, 0),
        )
        settings.max_tokens_cap = max(settings.max_tokens_cap, settings.max_tokens)
        return settings

    @property
    def default_db(self) -> bool:
        return self.database_url is None and self.db_path == default_db_path()


# -- generations and their decoding threads ------------------------------------------------------------------

CURRENT_GENERATION: contextvars.ContextVar[Generation | None] = contextvars.ContextVar(
    "chat_app_generation", default=None
)


@dataclass
class Generation:
    """One answer being produced: its state, timings, text so far, events for its client, its decoding threads."""

    id: str
    session_id: str
    user_id: str
    created: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running -> completed | cancelled | error
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    text: list[str] = field(default_factory=list)
    pieces: int = 0  # text chunks streamed so far
    output_tokens: int = 0  # the model's count, known when the answer is complete
    cancel_reason: str | None = None
    error: str | None = None
    message_id: int | None = None
    user_message_id: int | None = None
    decoded: bool = False  # the whole answer is decoded (what is left: storing it, telling the client)
    orphaned: bool = False  # its conversation was deleted: nothing more is stored for it
    worker_threads_started: int = 0
    worker_threads_live: int = 0
    worker_returned_at: float | None = None
    events: asyncio.Queue[tuple[str | None, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def publish(self, name: str | None, data: dict[str, Any] | None = None) -> None:
        self.events.put_nowait((name, data or {}))

    @property
    def done(self) -> bool:
        return self.state in ("completed", "cancelled", "error")

    def to_dict(self) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.created, 4)

        return {
            "id": self.id,
            "session_id": self.session_id,
            "state": self.state,
            "output_tokens": self.output_tokens,
            "pieces": self.pieces,
            "characters": sum(len(t) for t in self.text),
            "cancel_reason": self.cancel_reason,
            "error": self.error,
            "message_id": self.message_id,
            "user_message_id": self.user_message_id,
            "started_after_s": since(self.started),
            "first_token_after_s": since(self.first_token),
            "finished_after_s": since(self.finished),
            "worker_started": self.worker_threads_started > 0,
            "worker_running": self.worker_threads_live > 0,
            "worker_returned_after_s": since(self.worker_returned_at),
        }


class TrackingExecutor(ThreadPoolExecutor):
    """The executor the chat model decodes in (``ChatPersonaJudge(executor=...)``), recording which generation
    each job belongs to.

    ``ChatPersonaJudge.astream`` submits its worker with ``loop.run_in_executor(executor, ...)``; ``submit`` runs
    on the event loop thread inside the generation's task, so ``CURRENT_GENERATION`` names the generation whose
    thread this is. The counts are only touched on the event loop thread.
    """

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="chat-decode")
        self.live = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        gen = CURRENT_GENERATION.get()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not from the event loop: nothing to record
            gen = None
        if gen is None:
            return super().submit(fn, *args, **kwargs)
        gen.worker_threads_started += 1
        gen.worker_threads_live += 1
        self.live += 1

        def returned() -> None:
            self.live -= 1
            gen.worker_threads_live -= 1
            if gen.worker_threads_live == 0:
                gen.worker_returned_at = time.monotonic()

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                try:
                    loop.call_soon_threadsafe(returned)
                except RuntimeError:  # the loop is closed (server shutting down)
                    pass

        return super().submit(run)


PersonaName = Annotated[str, StringConstraints(max_length=NAME_CHARS)]
Preference = Annotated[str, StringConstraints(max_length=PREFERENCE_CHARS)]


class MessageIn(BaseModel):
    content: str = Field(min_length=1)
    """The message; at most CHAT_MAX_MESSAGE_CHARS characters (checked by the endpoint: a setting)."""
    personas: list[PersonaName] = Field(default_factory=list, max_length=8)
    """Names from the persona registry (GET /api/personas)."""
    preferences: list[Preference] = Field(default_factory=list, max_length=8)
    """Free-text preferences, each one more persona; a one-word one must be a persona's name."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    guidance: float | None = Field(default=None, ge=-3.0, le=5.0, allow_inf_nan=False)
    """Preference strength γ (the page's slider): 1 is the personas themselves, above 1 stronger."""
    combine: Literal["judge", "product"] | None = None
    """Persona-judge (default) or the weighted product of the personas."""
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT, strict=True)
    """A JSON integer in torch's seed range [0, 2**63): not a boolean, a string or a float."""
    max_tokens: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("content", "personas", "preferences")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No NUL character anywhere (PostgreSQL's text cannot store one; no message needs one)."""
        for text in [value] if isinstance(value, str) else value:
            if "\x00" in text:
                raise ValueError("must not contain a NUL character")
        return value


@dataclass(frozen=True)
class Plan:
    """What a validated message is decoded with: the preference texts, in persona order, and their labels; or,
    when it picks none, the caller's learned profile (``profile``: its poles and description as weighted personas,
    ``labels`` theirs)."""

    preferences: list[str]
    labels: list[str]
    profile: Any = None
    profile_texts: tuple[str, ...] = ()
    profile_note: str | None = None
    """Why the caller's profile was not used (learned with another model), when it was not."""


class ComparisonIn(BaseModel):
    prompt: str | None = Field(default=None, max_length=1000)
    """The question to answer twice; none or blank: one from the built-in pool."""

    @field_validator("prompt")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class ChoiceIn(BaseModel):
    choice: Literal["a", "b", "none"]
    """The first answer, the second, or no preference."""


@dataclass(frozen=True)
class User:
    id: str


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
        self.store: Store = open_store(settings.database_url, settings.db_path, private_dir=settings.default_db)
        self.generations: OrderedDict[str, Generation] = OrderedDict()
        self.started_at = time.time()
        self.totals = {"completed": 0, "cancelled": 0, "errors": 0, "refused": 0, "output_tokens": 0}
        self._admission: Any = None  # the model's admission queue, once its weights are loaded
        self._tokenizer: Any = None
        self._session_locks = KeyedLocks()  # one per conversation id
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # generations (and comparisons being made) accepted and not finished
        self._in_flight: dict[str, int] = {}  # user id -> the same, per user
        self.comparisons_running = 0
        self.profiles = Profiles(
            self.store, self.llm, self.executor, self.job, max_tokens=settings.profile_max_tokens,
            repetition_penalty=settings.repetition_penalty, max_description_chars=PREFERENCE_CHARS,
        )

    async def preload(self) -> None:
        """Load the weights (and warm the first forward) before the first request."""
        await self.llm.ainvoke("Hi", max_tokens=1, temperature=0)
        self._note_admission_queue()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_S)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.profiles.close()
        self.store.close()
        log.info("shut down; peak RSS %.1f MB", _peak_rss_bytes() / 2**20)

    # -- accounts

    async def authenticate(self, header: str | None) -> User:
        token = bearer_token(header)
        if token is not None:
            row = await self.store.user_by_token_hash(hash_token(token))
            if row is not None and token_matches(token, row["token_hash"]):
                return User(row["id"])
        raise HTTPException(
            401, "A valid account token is needed: Authorization: Bearer <token> (POST /api/users makes one).",
            headers={"WWW-Authenticate": "Bearer"},
        )

    # -- the library's admission queue

    def _note_admission_queue(self) -> None:
        """Keep a handle on the served model's admission queue and tokenizer (its weights are loaded by now)."""
        if self._admission is None:
            from langchain_persona_judge import shared_model
            from langchain_persona_judge.runtime import admission_queue

            model, tokenizer = shared_model(self.llm.model_name, device=self.llm.device, dtype=self.llm.dtype,
                                            backend=self.llm.backend)
            self._tokenizer = tokenizer
            self._admission = admission_queue(model)

    def admission(self) -> dict[str, Any] | None:
        """The admission queue's state: decoding, waiting, and its limits (None before the model is loaded)."""
        queue = self._admission
        if queue is None:
            return None
        return {"running": queue.running, "waiting": queue.waiting, "max_concurrency": self.settings.max_concurrent,
                "max_queue": self.settings.max_queue}

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
        anything is stored or queued: a request's cost to the model is bounded in tokens, not characters."""
        from langchain_persona_judge.errors import RequestTooLargeError
        from langchain_persona_judge.runtime import check_prompt_tokens

        if self._tokenizer is None:
            await asyncio.to_thread(self._note_admission_queue)
        try:
            check_prompt_tokens(self._tokenizer, text, self.settings.max_message_tokens)
        except RequestTooLargeError as exc:
            raise HTTPException(422, f"{exc} (CHAT_MAX_MESSAGE_TOKENS={exc.limit})") from None

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
        task = asyncio.get_running_loop().create_task(self._run(gen, body, plan))
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return gen

    def _finished(self, gen: Generation) -> None:
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

    def _turn(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """One answer at a time per conversation, in arrival order: the next message sees the previous answer."""
        return self._session_locks.hold(session_id)

    async def _context(self, gen: Generation) -> list[BaseMessage]:
        """The conversation the model sees: users' messages and complete answers, the last CHAT_HISTORY + 1 (only
        those are read from the store, however long the conversation)."""
        rows = await self.store.context(gen.user_id, gen.session_id, self.settings.history + 1)
        return [HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"]) for m in rows]

    async def _run(self, gen: Generation, body: MessageIn, plan: Plan) -> None:
        CURRENT_GENERATION.set(gen)  # this task's own context: tags the decoding thread(s) astream starts
        meta: dict[str, Any] = {"generation_id": gen.id}
        try:
            async with self._turn(gen.session_id):
                gen.user_message_id = await self.store.add_message(
                    gen.session_id, "user", body.content, personas=body.personas, preferences=body.preferences,
                    meta={"generation_id": gen.id},
                )
                context = await self._context(gen)
                ahead = sum(1 for g in self.generations.values() if g.state == "queued" and g is not gen)
                gen.publish("queued", {"generation_id": gen.id, "session_id": gen.session_id,
                                       "user_message_id": gen.user_message_id, "waiting_ahead": ahead})
                final = await self._decode(gen, context, body, plan)
                gen.decoded = True
                await self._complete(gen, body, plan, final, meta)
        except asyncio.CancelledError:
            gen.state = "cancelled"
            gen.cancel_reason = gen.cancel_reason or "server shutdown"
            self.totals["cancelled"] += 1
            if gen.cancel_reason != "client disconnected":  # someone may still be listening
                gen.publish("error", {"generation_id": gen.id, "status": 410 if gen.orphaned else 503,
                                      "message": f"The answer was stopped: {gen.cancel_reason}."})
            if gen.user_message_id is not None and not gen.orphaned:  # keep what was said; mark it cancelled
                meta.update(self._timings(gen), cancel_reason=gen.cancel_reason)
                await self._store_answer(gen, body, meta, status="cancelled")
        except Exception as exc:  # noqa: BLE001 - logged in full, reported to the client in general terms
            await self._fail(gen, body, meta, exc)
        finally:
            gen.finished = time.monotonic()
            self._finished(gen)
            gen.publish(None)

    async def _complete(self, gen: Generation, body: MessageIn, plan: Plan, final: dict[str, Any],
                        meta: dict[str, Any]) -> None:
        """Store the whole answer with its usage, timings and provenance, and tell the client."""
        metadata = final.get("response_metadata", {})
        usage = final.get("usage_metadata") or {}
        gen.output_tokens = int(usage.get("output_tokens", gen.pieces))
        meta.update(self._timings(gen), finish_reason=metadata.get("finish_reason"), usage=usage,
                    persona_judge=metadata.get("persona_judge"),
                    preferences_used=plan.preferences or list(plan.profile_texts))
        if plan.profile is not None:  # what the profile added: its poles with their weights, its description
            meta["profile"] = metadata.get("profile") or {}
        elif plan.profile_note:
            meta["profile_not_used"] = plan.profile_note
        trace = final.get("trace")
        if trace and self._tokenizer is not None:
            labels = plan.labels or ["no preference"]
            try:
                meta["provenance"] = await asyncio.to_thread(provenance, trace, self._tokenizer, labels)
            except Exception:  # noqa: BLE001 - the answer stands without its provenance
                log.exception("generation %s: could not build the provenance view", gen.id)
        await self._store_answer(gen, body, meta)
        gen.state = "completed"
        self.totals["completed"] += 1
        self.totals["output_tokens"] += gen.output_tokens
        gen.publish("done", {"generation_id": gen.id, "message_id": gen.message_id, "session_id": gen.session_id,
                             **meta})

    async def _fail(self, gen: Generation, body: MessageIn, meta: dict[str, Any], exc: Exception) -> None:
        """Log the error with its details; tell the client in general terms (a full admission queue: status 429,
        and the message that was stored is taken back, as if the request had been refused at the door)."""
        gen.state = "error"
        event: dict[str, Any] = {"generation_id": gen.id}
        if isinstance(exc, QueueFullError):
            gen.error = "busy"
            self.totals["refused"] += 1
            event.update(status=429, message="The model is busy; retry in a moment.")
            log.warning("generation %s refused by the admission queue: %s", gen.id, exc)
            if gen.user_message_id is not None and not gen.orphaned:
                try:
                    await self.store.delete_message(gen.user_message_id)
                except Exception:  # noqa: BLE001
                    log.exception("generation %s: could not take back its message", gen.id)
                gen.user_message_id = None
        elif isinstance(exc, ConversationGone):
            gen.error = "conversation deleted"
            event.update(status=410, message="The conversation was deleted.")
        else:
            gen.error = _public_error(exc)
            self.totals["errors"] += 1
            event.update(status=500, message=gen.error)
            log.error("generation %s (conversation %s) failed", gen.id, gen.session_id, exc_info=exc)
        gen.publish("error", event)
        if gen.user_message_id is not None and not gen.orphaned:
            meta.update(self._timings(gen), error=gen.error)
            try:
                await self._store_answer(gen, body, meta, status="error")
            except Exception:  # noqa: BLE001
                log.exception("generation %s: could not store its error", gen.id)

    async def _store_answer(self, gen: Generation, body: MessageIn, meta: dict[str, Any],
                            status: str = "complete") -> None:
        if gen.orphaned:
            return
        try:
            gen.message_id = await self.store.add_message(
                gen.session_id, "assistant", "".join(gen.text), status=status, personas=body.personas,
                preferences=body.preferences, meta=meta,
            )
        except ConversationGone:  # deleted by another process meanwhile
            gen.orphaned = True

    async def _decode(self, gen: Generation, context: list[BaseMessage], body: MessageIn,
                      plan: Plan) -> dict[str, Any]:
        options: dict[str, Any] = {"preferences": plan.preferences}
        if body.max_tokens is not None:
            options["max_tokens"] = body.max_tokens
        if body.temperature is not None:
            options["temperature"] = body.temperature
        if body.guidance is not None:
            options["guidance"] = body.guidance
        if body.combine is not None:
            options["combine"] = body.combine
        if body.seed is not None:
            options["seed"] = body.seed
        if plan.profile is not None:
            options["profile"] = plan.profile
        options["user"] = gen.user_id  # the model's admission queue serves users round-robin
        final: dict[str, Any] = {}
        stream = self.llm.astream(context, **options)
        try:
            async for chunk in stream:
                if gen.state == "queued":  # the admission queue let it in, and it has read its prompt
                    self._started(gen)
                text = chunk.content if isinstance(chunk.content, str) else ""
                if text:
                    if gen.first_token is None:
                        gen.first_token = time.monotonic()
                    gen.text.append(text)
                    gen.pieces += 1
                    gen.publish("token", {"text": text})
                if chunk.usage_metadata:
                    final["usage_metadata"] = dict(chunk.usage_metadata)
                if chunk.response_metadata.get("finish_reason"):
                    final["response_metadata"] = {
                        k: chunk.response_metadata.get(k)
                        for k in ("finish_reason", "persona_judge", "model_name", "profile")
                    }
                    final["trace"] = chunk.response_metadata.get("trace")
        finally:
            await stream.aclose()
        return final

    def _started(self, gen: Generation) -> None:
        """The first chunk: the generation left the admission queue (the library does not say exactly when)."""
        gen.state = "running"
        gen.started = time.monotonic()
        gen.publish("start", {"generation_id": gen.id, "queue_wait_s": round(gen.started - gen.created, 4)})
        self._note_admission_queue()

    @staticmethod
    def _timings(gen: Generation) -> dict[str, Any]:
        now = time.monotonic()
        timings: dict[str, Any] = {}
        if gen.started is not None:
            timings["queue_wait_s"] = round(gen.started - gen.created, 4)
            timings["decode_s"] = round(now - gen.started, 4)
        if gen.first_token is not None:
            timings["ttft_s"] = round(gen.first_token - gen.created, 4)
            span = now - gen.first_token
            count = gen.output_tokens or gen.pieces
            if count > 1 and span > 0:
                timings["tokens_per_s"] = round((count - 1) / span, 3)
        return timings


async def current_user(request: Request) -> User:
    """The caller, from ``Authorization: Bearer <token>`` (401 otherwise)."""
    service: ChatService = request.app.state.service
    return await service.authenticate(request.headers.get("authorization"))


Caller = Annotated[User, Depends(current_user)]


def _public_error(exc: Exception) -> str:
    """What a client is told about an error: its kind in general terms, never its text (paths, internals)."""
    from langchain_persona_judge.errors import ContextLengthError, RequestTimeoutError

    if isinstance(exc, ContextLengthError):
        return "The conversation is too long for the model; start a new one."
    if isinstance(exc, RequestTimeoutError):
        return "The answer took too long and was stopped."
    return "The answer failed because of an error on the server (its log has the details)."


def _public_model_name(name: str) -> str:
    """A model's name as clients see it: a local file or folder by its last part, never the server's path."""
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return path.name
    return name


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _sse(name: str, data: dict[str, Any]) -> str:
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: null, so that the page can still parse the event
        text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    return f"event: {name}\ndata: {text}\n\n"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


async def _event_stream(service: ChatService, gen: Generation) -> AsyncIterator[str]:
    """The generation's events as SSE; leaving early (client gone) cancels the generation."""
    getter: asyncio.Future[Any] | None = None
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(gen.events.get())
            done, _ = await asyncio.wait({getter}, timeout=HEARTBEAT_S)
            if not done:
                yield ": ping\n\n"  # sending is also how an ASGI 2.4 server tells us the peer is gone
                continue
            name, data = getter.result()
            getter = None
            if name is None:
                return
            yield _sse(name, data)
    finally:
        if getter is not None:
            getter.cancel()
        if not gen.done:
            service.cancel(gen, "client disconnected")


# -- the app -------------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. ``settings`` defaults to ``Settings.from_env()``."""
    settings = settings or Settings.from_env()
    service = ChatService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await service.preload()
        yield
        await service.shutdown()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Persona-judge chat", lifespan=lifespan, **docs)
    app.state.service = service
    app.add_middleware(Guard, hosts=allowed_hosts(settings.allowed_hosts), max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # What was wrong and where, never the input itself (FastAPI's default echoes it whole, and a NaN in it
        # cannot even be written as JSON).
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    async def owned_session(user: User, session_id: str) -> str:
        if not ID.fullmatch(session_id) or not await service.store.session_owned(user.id, session_id):
            raise HTTPException(404, "No such conversation; POST /api/sessions creates one.")
        return session_id

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": page_csp(html), "Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:  # the store answers a trivial query (PostgreSQL may be restarting): else 503
            await asyncio.wait_for(service.store.ping(), HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - logged; the probe only needs the verdict
            log.warning("health check: the database does not answer", exc_info=True)
            return JSONResponse({"ok": False, "store": "unavailable"}, status_code=503)
        return JSONResponse({"ok": True})

    signups = RateLimiter(settings.signups_per_minute, SIGNUP_BURST) if settings.signups_per_minute else None

    @app.post("/api/users", status_code=201)
    async def create_user(request: Request) -> dict[str, Any]:
        wait = signups.take(request.client.host if request.client else "?") if signups else 0.0
        if wait:
            raise HTTPException(429, f"Too many new accounts from your address; retry in {wait:.0f} s "
                                     f"(CHAT_SIGNUPS_PER_MINUTE={settings.signups_per_minute}).",
                                headers={"Retry-After": RateLimiter.retry_after(wait)})
        token = new_token()
        row = await service.store.create_user(hash_token(token), settings.max_users)
        if row is None:
            raise HTTPException(403, f"This server has all the accounts it takes (CHAT_MAX_USERS="
                                     f"{settings.max_users}).")
        return {"user_id": row["id"], "token": token, "created_at": row["created_at"]}

    @app.get("/api/config")
    async def config(user: Caller) -> dict[str, Any]:
        return {
            "max_tokens": settings.max_tokens,
            "max_tokens_cap": settings.max_tokens_cap,
            "temperature": settings.temperature,
            "repetition_penalty": settings.repetition_penalty,
            "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue,
            "max_message_chars": settings.max_message_chars,
            "max_preference_chars": PREFERENCE_CHARS,
            "max_conversations": settings.max_conversations,
            "max_in_flight": settings.max_in_flight,
            "model": _public_model_name(service.llm.display_name),
            "user_id": user.id,
            "profile_every": settings.profile_every,
            "profile_max_tokens": settings.profile_max_tokens,
        }

    @app.get("/api/personas")
    async def personas(user: Caller) -> list[dict[str, Any]]:
        return service.personas()

    @app.post("/api/sessions", status_code=201)
    async def create_session(user: Caller) -> dict[str, Any]:
        row = await service.store.create_session(user.id, settings.max_conversations)
        if row is None:
            raise HTTPException(409, f"You have {settings.max_conversations} conversations, the most one user may "
                                     f"keep (CHAT_MAX_CONVERSATIONS); delete one first.")
        return row

    @app.get("/api/sessions")
    async def list_sessions(user: Caller, limit: int = 50) -> list[dict[str, Any]]:
        return await service.store.list_sessions(user.id, max(1, min(limit, 500)))

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: str, user: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 500,
                          before: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        """The last ``limit`` messages (with ids below ``before``: page back with the first id seen)."""
        await owned_session(user, session_id)
        messages = await service.store.messages(user.id, session_id, limit=limit, before=before)
        return {"id": session_id, "messages": messages}

    @app.delete("/api/sessions/{session_id}")
    async def delete_session(session_id: str, user: Caller) -> dict[str, Any]:
        await owned_session(user, session_id)
        cancelled = service.forget_session(session_id)
        return {"deleted": await service.store.delete_session(user.id, session_id), "cancelled": cancelled}

    @app.post("/api/sessions/{session_id}/messages")
    async def post_message(session_id: str, body: MessageIn, user: Caller) -> StreamingResponse:
        await owned_session(user, session_id)
        if not body.content.strip():
            raise HTTPException(422, "The message is empty.")
        if len(body.content) > settings.max_message_chars:
            raise HTTPException(422, f"The message has {len(body.content)} characters; the most is "
                                     f"{settings.max_message_chars} (CHAT_MAX_MESSAGE_CHARS).")
        await service.refuse_if_too_long(body.content)
        held = await service.store.count_messages(user.id, session_id)
        if held + 2 > settings.max_messages:  # this message and its answer
            raise HTTPException(409, f"This conversation has {held} messages, the most one may keep "
                                     f"(CHAT_MAX_MESSAGES={settings.max_messages}); start a new one.")
        if body.max_tokens is not None and body.max_tokens > settings.max_tokens_cap:
            raise HTTPException(422, f"max_tokens={body.max_tokens} is over this server's cap of "
                                     f"{settings.max_tokens_cap} (CHAT_MAX_TOKENS_CAP).")
        plan = await service.plan_with_profile(user, service.plan(body))
        service.refuse_if_full(user)
        gen = service.start(user, session_id, body, plan)
        return StreamingResponse(
            _event_stream(service, gen),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Generation-Id": gen.id},
        )

    @app.get("/api/generations/{generation_id}")
    async def get_generation(generation_id: str, user: Caller) -> dict[str, Any]:
        gen = service.generation_for(user, generation_id)
        if gen is None:
            raise HTTPException(404, "No such generation (unknown, another process's, or forgotten long ago).")
        return gen.to_dict()

    @app.get("/api/stats")
    async def stats(user: Caller) -> JSONResponse:
        return JSONResponse(service.stats(user))

    # -- the caller's preference profile

    @app.get("/api/profile")
    async def get_profile(user: Caller) -> dict[str, Any]:
        return await service.profiles.get(user.id)

    @app.delete("/api/profile")
    async def reset_profile(user: Caller) -> dict[str, Any]:
        return await service.profiles.reset(user.id)

    @app.post("/api/profile/comparisons", status_code=201)
    async def new_comparison(user: Caller, body: ComparisonIn | None = None) -> dict[str, Any]:
        return await service.profiles.propose(user, None if body is None else body.prompt)

    @app.post("/api/profile/comparisons/{comparison_id}/choice")
    async def choose(comparison_id: str, body: ChoiceIn, user: Caller) -> dict[str, Any]:
        return await service.profiles.choose(user, comparison_id, body.choice)

    @app.get("/api/profile/export")
    async def export_profile(user: Caller,
                             fmt: Annotated[Literal["yaml", "json"], Query(alias="format")] = "yaml") -> Response:
        text, name = await service.profiles.export(user.id, fmt)
        media = "application/json" if fmt == "json" else "application/yaml"
        return Response(text, media_type=f"{media}; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.put("/api/profile/import")
    async def import_profile(request: Request, user: Caller) -> dict[str, Any]:
        return await service.profiles.import_(user.id, await request.body())

    return app


def main() -> None:
    import uvicorn

    level = os.environ.get("LOG_LEVEL", "warning").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = _env_int("PORT", 8000, 0)
    host = os.environ.get("HOST", "127.0.0.1")
    app = create_app()
    print(f"Persona-judge chat on http://{host}:{port}/ (conversations in {app.state.service.store.description})",
          flush=True)
    # Half-open connections (headers never finished) are closed after CHAT_HEADER_TIMEOUT; idle keep-alive ones
    # after 5 s; the open-files limit is raised to its hard limit. A reverse proxy in front still should limit
    # connections per client.
    from .connections import HeaderTimeoutProtocol, raise_open_files_limit

    protocol = type("Protocol", (HeaderTimeoutProtocol,), {"header_timeout": _env_float("CHAT_HEADER_TIMEOUT", 10.0)})
    raise_open_files_limit()
    uvicorn.run(app, host=host, port=port, log_level=level.lower(), timeout_graceful_shutdown=5, http=protocol,
                timeout_keep_alive=5)


if __name__ == "__main__":
    main()
