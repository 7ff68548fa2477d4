"""A small chat server for ChatPersonaJudge: streaming answers (server-sent events), conversations in SQLite.

Run it (from the repository root):

    make chat                                       # installs the `app` extra once, then serves on $PORT (8000)
    .venv/bin/python -m examples.chat_app.server    # the same, without the install step

and open http://127.0.0.1:8000/. Configuration (environment variables):

    PORT                 port to listen on (default 8000)
    HOST                 interface to bind (default 127.0.0.1)
    CHAT_DB              SQLite file for the conversations (default examples/chat_app/chat.db)
    CHAT_MAX_TOKENS      answer length when a request does not ask for one (default 160)
    CHAT_MAX_TOKENS_CAP  the most tokens a request may ask for (default 1024)
    CHAT_TEMPERATURE     temperature when a request does not set one (default 0.7; 0 = greedy)
    CHAT_REPETITION_PENALTY  repetition penalty of every answer (default 1.2; 1 = off)
    CHAT_HISTORY         how many earlier messages of the conversation the model sees (default 16)
    MAX_CONCURRENT       generations decoded at once; the others wait in the model's first-come first-served
                         admission queue (default 2: one model, a few CPU cores)
    MAX_QUEUE            generations that may wait in that queue; one more is refused with HTTP 429 (default 16)
    CHAT_MODEL           model to serve (default: $PERSONA_JUDGE_MODEL, else the embedded SmolLM2-135M-Instruct)
    CHAT_TORCH_THREADS   torch intra-op threads per generation (default: CPU cores // MAX_CONCURRENT, at least 1:
                         on a few cores, concurrent generations with many threads each mostly wait for each other)
    CHAT_PRELOAD         load the model at start-up (default 1) so the first answer does not wait for it

HTTP API (JSON unless said otherwise):

    GET  /                              the one-page chat UI (static/index.html)
    GET  /api/personas                  the built-in personas: name, description, tags, rendered text
    GET  /api/config                    limits and defaults the UI needs
    POST /api/sessions                  a new conversation -> {"id": ...}
    GET  /api/sessions                  recent conversations
    GET  /api/sessions/{id}             one conversation with its messages
    DELETE /api/sessions/{id}           forget a conversation
    POST /api/sessions/{id}/messages    {"content", "personas": [names], "preferences": [texts], "temperature"?,
                                        "guidance"?, "combine"?, "seed"?, "max_tokens"?} -> text/event-stream:
                                        queued, start, token ({"text"}), done (usage, stats, timings) or error;
                                        429 when the model's admission queue is full
    GET  /api/generations/{id}          one generation's state (queued/running/completed/cancelled/error) and
                                        whether its decoding thread is still running
    GET  /api/stats                     running/queued generations, decoding threads busy, the admission queue,
                                        totals, memory
    GET  /healthz                       liveness

Admission: the library's own queue (``ChatPersonaJudge(max_concurrency=MAX_CONCURRENT, max_queue=MAX_QUEUE)``,
one FIFO queue per model) decides which generations decode and which wait; a generation is ``queued`` until
its first chunk arrives. Decoding runs in this app's executor (``ChatPersonaJudge(executor=...)``), which
records, per generation, when its thread starts and returns (``/api/generations/{id}`` -> ``worker_running``;
``/api/stats`` -> ``decoding_threads``); a generation's thread waits in the admission queue, then decodes.

Disconnects: when the client goes away (closed tab, Stop button, dropped connection), the generation's task is
cancelled; that closes the model's ``astream``, which tells its thread to stop at its next chunk. The
generation is marked cancelled at once; its slot in the admission queue is the library's, held until that
thread has really returned, so nothing decodes beside the next generation for a client that left. A thread
that was still waiting for a slot leaves when it gets one, after one decoding step (the library's queue does
not watch for the cancellation while it waits).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import resource
import sqlite3
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, Field

from langchain_persona_judge import QueueFullError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
DEFAULT_DB = HERE / "chat.db"
HEARTBEAT_S = 2.0  # an SSE comment this often while nothing else is sent: keeps proxies open, notices dead peers
SHUTDOWN_GRACE_S = 60.0  # how long shutdown waits for the generations' tasks to end
RETRY_AFTER_S = 5  # what a refused request (HTTP 429, the admission queue is full) is told to wait
SESSION_ID = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: "$" would let a trailing newline through


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
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


@dataclass
class Settings:
    """Server settings; ``Settings.from_env()`` reads the variables listed in the module docstring."""

    db_path: Path = DEFAULT_DB
    max_tokens: int = 160
    max_tokens_cap: int = 1024
    temperature: float = 0.7
    repetition_penalty: float | None = 1.2
    """Applied to every persona alike (answers stay exact); a 135M model loops without one. None or 1: off."""
    history: int = 16
    max_concurrent: int = 2
    max_queue: int = 16
    model: str | None = None
    torch_threads: int | None = None  # None: leave torch's setting alone
    preload: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        max_concurrent = _env_int("MAX_CONCURRENT", 2, 1)
        threads = _env_int("CHAT_TORCH_THREADS", 0) or max(1, (os.cpu_count() or 1) // max_concurrent)
        settings = cls(
            db_path=Path(os.environ.get("CHAT_DB") or DEFAULT_DB),
            max_tokens=_env_int("CHAT_MAX_TOKENS", 160, 1),
            max_tokens_cap=_env_int("CHAT_MAX_TOKENS_CAP", 1024, 1),
            temperature=_env_float("CHAT_TEMPERATURE", 0.7),
            repetition_penalty=_env_float("CHAT_REPETITION_PENALTY", 1.2),
            history=_env_int("CHAT_HISTORY", 16, 0),
            max_concurrent=max_concurrent,
            max_queue=_env_int("MAX_QUEUE", 16, 0),
            model=os.environ.get("CHAT_MODEL") or None,
            torch_threads=threads,
            preload=os.environ.get("CHAT_PRELOAD", "1").strip().lower() not in ("0", "false", "no", ""),
        )
        settings.max_tokens_cap = max(settings.max_tokens_cap, settings.max_tokens)
        return settings


# -- storage -----------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    personas TEXT NOT NULL DEFAULT '[]',
    preferences TEXT NOT NULL DEFAULT '[]',
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);
"""


class Store:
    """Conversations in one SQLite file (WAL journal; every write is committed before it is acknowledged).

    The connection is used from one dedicated thread, so the event loop never waits for the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-db")
        self._db = self._executor.submit(self._open).result()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a committed write survives the process being killed
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        return db

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown(wait=True)

    # The synchronous halves run on the db thread only.

    def _create_session(self) -> dict[str, Any]:
        row = {"id": uuid.uuid4().hex, "created_at": time.time()}
        self._db.execute("INSERT INTO sessions (id, created_at) VALUES (:id, :created_at)", row)
        return row

    def _session_exists(self, session_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def _list_sessions(self, limit: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            """
            SELECT s.id, s.created_at,
                   (SELECT content FROM messages m WHERE m.session_id = s.id AND m.role = 'user'
                    ORDER BY m.id LIMIT 1) AS title,
                   (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS messages,
                   COALESCE((SELECT MAX(created_at) FROM messages m WHERE m.session_id = s.id), s.created_at)
                       AS updated_at
            FROM sessions s ORDER BY updated_at DESC LIMIT ?
            """,
            (limit,),
        ).fetchall()
        return [dict(r) for r in rows]

    def _messages(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            for key in ("personas", "preferences", "meta"):
                item[key] = json.loads(item[key])
            out.append(item)
        return out

    def _add_message(
        self, session_id: str, role: str, content: str, status: str, personas: list[str],
        preferences: list[str], meta: dict[str, Any],
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO messages (session_id, role, content, status, personas, preferences, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, role, content, status, json.dumps(personas), json.dumps(preferences), json.dumps(meta),
             time.time()),
        )
        return int(cur.lastrowid)

    def _delete_session(self, session_id: str) -> bool:
        return self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    async def create_session(self) -> dict[str, Any]:
        return await self._run(self._create_session)

    async def session_exists(self, session_id: str) -> bool:
        return await self._run(self._session_exists, session_id)

    async def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(self._list_sessions, limit)

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        return await self._run(self._messages, session_id)

    async def add_message(self, session_id: str, role: str, content: str, *, status: str = "complete",
                          personas: list[str] | None = None, preferences: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> int:
        return await self._run(self._add_message, session_id, role, content, status, personas or [],
                               preferences or [], meta or {})

    async def delete_session(self, session_id: str) -> bool:
        return await self._run(self._delete_session, session_id)


# -- generations and their decoding threads ------------------------------------------------------------------

CURRENT_GENERATION: contextvars.ContextVar[Generation | None] = contextvars.ContextVar(
    "chat_app_generation", default=None
)


@dataclass
class Generation:
    """One answer being produced: its state, timings, text so far, events for its client, its decoding threads."""

    id: str
    session_id: str
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


class MessageIn(BaseModel):
    content: str = Field(min_length=1, max_length=20_000)
    personas: list[str] = Field(default_factory=list, max_length=8)
    """Names from the persona registry (GET /api/personas)."""
    preferences: list[str] = Field(default_factory=list, max_length=8)
    """Free-text preferences, each one more persona."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    guidance: float | None = Field(default=None, ge=-3.0, le=5.0, allow_inf_nan=False)
    """Preference strength γ (the page's slider): 1 is the personas themselves, above 1 stronger."""
    combine: Literal["judge", "product"] | None = None
    """Persona-judge (default) or the weighted product of the personas."""
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)


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
        )
        self.store = Store(settings.db_path)
        self.generations: OrderedDict[str, Generation] = OrderedDict()
        self.started_at = time.time()
        self.totals = {"completed": 0, "cancelled": 0, "errors": 0, "output_tokens": 0}
        self._admission: Any = None  # the model's admission queue, once its weights are loaded
        self._session_locks: dict[str, list[Any]] = {}  # session id -> [lock, users]
        self._tasks: set[asyncio.Task[None]] = set()

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
        self.store.close()

    # -- the library's admission queue

    def _note_admission_queue(self) -> None:
        """Keep a handle on the served model's admission queue (its weights are loaded by now)."""
        if self._admission is None:
            from langchain_persona_judge import shared_model
            from langchain_persona_judge.runtime import admission_queue

            model, _ = shared_model(self.llm.model_name, device=self.llm.device, dtype=self.llm.dtype)
            self._admission = admission_queue(model)

    def admission(self) -> dict[str, Any] | None:
        """The admission queue's state: decoding, waiting, and its limits (None before the model is loaded)."""
        queue = self._admission
        if queue is None:
            return None
        return {"running": queue.running, "waiting": queue.waiting, "max_concurrency": self.settings.max_concurrent,
                "max_queue": self.settings.max_queue}

    def refuse_if_full(self) -> None:
        """HTTP 429 when the admission queue is full: every slot decoding and MAX_QUEUE generations waiting."""
        state = self.admission()
        if state and state["running"] >= state["max_concurrency"] and state["waiting"] >= state["max_queue"]:
            raise HTTPException(
                429,
                f"The model is busy: {state['running']} answers are being decoded and {state['waiting']} are "
                f"waiting, the most this server queues (MAX_QUEUE={state['max_queue']}). Retry in a moment.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

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

    def resolve_preferences(self, body: MessageIn) -> list[str]:
        """Persona names rendered to their texts, then the free-text preferences (blank ones dropped)."""
        unknown = [name for name in body.personas if name not in self.registry]
        if unknown:
            raise HTTPException(422, f"Unknown persona(s) {unknown}; GET /api/personas lists them.")
        texts = [self.registry.render(name) for name in body.personas]
        texts += [p.strip() for p in body.preferences if p.strip()]
        return list(dict.fromkeys(texts))

    # -- generations

    def stats(self) -> dict[str, Any]:
        states = [g.state for g in self.generations.values()]
        return {
            "max_concurrent": self.settings.max_concurrent,
            "max_queue": self.settings.max_queue,
            "running": states.count("running"),
            "queued": states.count("queued"),
            "decoding_threads": self.executor.live,
            "admission": self.admission(),
            **self.totals,
            "peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1),
            "rss_mb": round(_rss_bytes() / 2**20, 1),
            "uptime_s": round(time.time() - self.started_at, 1),
            "pid": os.getpid(),
        }

    def _remember(self, gen: Generation) -> None:
        self.generations[gen.id] = gen
        while len(self.generations) > 2000:  # finished generations are kept for inspection, up to a bound
            oldest_id, oldest = next(iter(self.generations.items()))
            if not oldest.done:
                break
            del self.generations[oldest_id]

    def start(self, session_id: str, body: MessageIn, preferences: list[str]) -> Generation:
        gen = Generation(id=uuid.uuid4().hex, session_id=session_id)
        self._remember(gen)
        task = asyncio.get_running_loop().create_task(self._run(gen, body, preferences))
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return gen

    def cancel(self, gen: Generation, reason: str) -> None:
        """Stop a generation whose client left. One that has finished decoding is left to store its answer."""
        if gen.decoded:
            return
        if gen.task is not None and not gen.task.done() and gen.cancel_reason is None:
            gen.cancel_reason = reason
            gen.task.cancel()

    @asynccontextmanager
    async def _turn(self, session_id: str) -> AsyncIterator[None]:
        """One answer at a time per conversation, in arrival order: the next message sees the previous answer."""
        entry = self._session_locks.get(session_id)
        if entry is None:
            entry = self._session_locks[session_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._session_locks[session_id]

    async def _context(self, session_id: str) -> list[BaseMessage]:
        """The conversation the model sees: users' messages and complete answers, the last CHAT_HISTORY + 1."""
        messages: list[BaseMessage] = []
        for m in await self.store.messages(session_id):
            if m["role"] == "user":
                messages.append(HumanMessage(m["content"]))
            elif m["status"] == "complete":
                messages.append(AIMessage(m["content"]))
        keep = self.settings.history + 1
        return messages[-keep:]

    async def _run(self, gen: Generation, body: MessageIn, preferences: list[str]) -> None:
        CURRENT_GENERATION.set(gen)  # this task's own context: tags the decoding thread(s) astream starts
        meta: dict[str, Any] = {"generation_id": gen.id}
        try:
            async with self._turn(gen.session_id):
                gen.user_message_id = await self.store.add_message(
                    gen.session_id, "user", body.content, personas=body.personas, preferences=body.preferences,
                    meta={"generation_id": gen.id},
                )
                context = await self._context(gen.session_id)
                ahead = sum(1 for g in self.generations.values() if g.state == "queued" and g is not gen)
                gen.publish("queued", {"generation_id": gen.id, "session_id": gen.session_id,
                                       "user_message_id": gen.user_message_id, "waiting_ahead": ahead})
                final = await self._decode(gen, context, body, preferences)
                gen.decoded = True
                await self._complete(gen, body, preferences, final, meta)
        except asyncio.CancelledError:
            gen.state = "cancelled"
            gen.cancel_reason = gen.cancel_reason or "server shutdown"
            self.totals["cancelled"] += 1
            if gen.user_message_id is not None:  # keep what was said; the partial answer is marked cancelled
                meta.update(self._timings(gen), cancel_reason=gen.cancel_reason)
                await self._store_answer(gen, body, meta, status="cancelled")
        except Exception as exc:  # noqa: BLE001 - reported to the client and kept with the conversation
            await self._fail(gen, body, meta, exc)
        finally:
            gen.finished = time.monotonic()
            gen.publish(None)

    async def _complete(self, gen: Generation, body: MessageIn, preferences: list[str], final: dict[str, Any],
                        meta: dict[str, Any]) -> None:
        """Store the whole answer with its usage and timings, and tell the client."""
        metadata = final.get("response_metadata", {})
        usage = final.get("usage_metadata") or {}
        gen.output_tokens = int(usage.get("output_tokens", gen.pieces))
        meta.update(self._timings(gen), finish_reason=metadata.get("finish_reason"), usage=usage,
                    persona_judge=metadata.get("persona_judge"), preferences_used=preferences)
        await self._store_answer(gen, body, meta)
        gen.state = "completed"
        self.totals["completed"] += 1
        self.totals["output_tokens"] += gen.output_tokens
        gen.publish("done", {"generation_id": gen.id, "message_id": gen.message_id, "session_id": gen.session_id,
                             **meta})

    async def _fail(self, gen: Generation, body: MessageIn, meta: dict[str, Any], exc: Exception) -> None:
        """Report an error to the client (a full admission queue as status 429) and keep it with the conversation."""
        gen.state = "error"
        gen.error = f"{type(exc).__name__}: {exc}"
        self.totals["errors"] += 1
        event = {"generation_id": gen.id, "type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, QueueFullError):  # refused by the library after the request was accepted here
            event["status"] = 429
        gen.publish("error", event)
        if gen.user_message_id is not None:
            meta.update(self._timings(gen), error=gen.error)
            try:
                await self._store_answer(gen, body, meta, status="error")
            except Exception:  # noqa: BLE001
                pass

    async def _store_answer(self, gen: Generation, body: MessageIn, meta: dict[str, Any],
                            status: str = "complete") -> None:
        gen.message_id = await self.store.add_message(
            gen.session_id, "assistant", "".join(gen.text), status=status, personas=body.personas,
            preferences=body.preferences, meta=meta,
        )

    async def _decode(self, gen: Generation, context: list[BaseMessage], body: MessageIn,
                      preferences: list[str]) -> dict[str, Any]:
        options: dict[str, Any] = {"preferences": preferences}
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
                        k: chunk.response_metadata.get(k) for k in ("finish_reason", "persona_judge", "model_name")
                    }
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


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_rss_bytes()


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


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

    app = FastAPI(title="Persona-judge chat", lifespan=lifespan)
    app.state.service = service

    async def existing_session(session_id: str) -> str:
        if not SESSION_ID.fullmatch(session_id) or not await service.store.session_exists(session_id):
            raise HTTPException(404, f"No conversation {session_id!r}; POST /api/sessions creates one.")
        return session_id

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        return {
            "max_tokens": settings.max_tokens,
            "max_tokens_cap": settings.max_tokens_cap,
            "temperature": settings.temperature,
            "repetition_penalty": settings.repetition_penalty,
            "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue,
            "model": service.llm.display_name,
        }

    @app.get("/api/personas")
    async def personas() -> list[dict[str, Any]]:
        return service.personas()

    @app.post("/api/sessions", status_code=201)
    async def create_session() -> dict[str, Any]:
        return await service.store.create_session()

    @app.get("/api/sessions")
    async def list_sessions(limit: int = 50) -> list[dict[str, Any]]:
        return await service.store.list_sessions(max(1, min(limit, 500)))

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        await existing_session(session_id)
        return {"id": session_id, "messages": await service.store.messages(session_id)}

    @app.delete("/api/sessions/{session_id}")
    async def delete_session(session_id: str) -> dict[str, Any]:
        await existing_session(session_id)
        return {"deleted": await service.store.delete_session(session_id)}

    @app.post("/api/sessions/{session_id}/messages")
    async def post_message(session_id: str, body: MessageIn) -> StreamingResponse:
        await existing_session(session_id)
        if not body.content.strip():
            raise HTTPException(422, "The message is empty.")
        if body.max_tokens is not None and body.max_tokens > settings.max_tokens_cap:
            raise HTTPException(422, f"max_tokens={body.max_tokens} is over this server's cap of "
                                     f"{settings.max_tokens_cap} (CHAT_MAX_TOKENS_CAP).")
        preferences = service.resolve_preferences(body)
        service.refuse_if_full()
        gen = service.start(session_id, body, preferences)
        return StreamingResponse(
            _event_stream(service, gen),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Generation-Id": gen.id},
        )

    @app.get("/api/generations/{generation_id}")
    async def get_generation(generation_id: str) -> dict[str, Any]:
        gen = service.generations.get(generation_id)
        if gen is None:
            raise HTTPException(404, f"No generation {generation_id!r} (unknown, or forgotten long ago).")
        return gen.to_dict()

    @app.get("/api/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(service.stats())

    return app


def main() -> None:
    import uvicorn

    port = _env_int("PORT", 8000, 0)
    host = os.environ.get("HOST", "127.0.0.1")
    app = create_app()
    print(f"Persona-judge chat on http://{host}:{port}/ (conversations in {app.state.service.settings.db_path})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("LOG_LEVEL", "warning"),
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
