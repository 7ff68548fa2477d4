"""The chat app's storage: users, their conversations and messages, their preference profiles.

One interface (:class:`Store`, every method scoped to a user where a user owns the data) with two
implementations that share their SQL:

- :class:`SQLiteStore` (the default): one file, WAL journal, created owner-only (0700 directory when this
  module makes it, 0600 file; SQLite gives the -wal and -shm files the database file's mode);
- :class:`PostgresStore` (``CHAT_DATABASE_URL=postgresql://...``): several app processes can share one
  database; needs ``psycopg`` (the ``app`` extra).

Every statement is parameterised (``?`` placeholders, turned into ``%s`` for psycopg); no value is ever
formatted into SQL text. Connections are used from a few dedicated threads (one per thread), so the event loop
never waits for the disk or the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

APP_DIR = "langchain-persona-judge"
log = logging.getLogger("examples.chat_app")
ALL = 2**62  # a LIMIT, or an id bound, that leaves nothing out (both databases take it as a BIGINT)


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/langchain-persona-judge/chat.db`` (``~/.local/share/...`` when XDG_DATA_HOME is unset):
    per user, outside the source tree."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if base.strip() and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / APP_DIR / "chat.db"


class ConversationGone(Exception):
    """A message was written to a conversation that no longer exists (deleted meanwhile)."""


class _NotWritten(Exception):
    """Raised inside a transaction to roll it back: a condition checked in it did not hold."""


# The schema, in the SQL both databases take; the only differences are the column types in TYPES.
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id {serial},
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    personas TEXT NOT NULL DEFAULT '[]',
    preferences TEXT NOT NULL DEFAULT '[]',
    meta TEXT NOT NULL DEFAULT '{{}}',
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    profile TEXT NOT NULL,
    choices INTEGER NOT NULL DEFAULT 0,
    revision TEXT NOT NULL,
    updated_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    prompt TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{{}}',
    choice TEXT CHECK (choice IN ('a', 'b', 'none')),
    created_at {real} NOT NULL,
    chosen_at {real}
);
CREATE INDEX IF NOT EXISTS comparisons_by_user ON comparisons (user_id, created_at);
"""
# profiles: one row per user who has a profile: the profile file (the CLI's JSON, PreferenceProfile.to_dict), how
# many picks it holds, and a revision (a fresh random id at every write, never reused, so that a writer can tell
# whether it changed since it read it). comparisons: the pairs of answers shown for a pick, with what the pick
# needs (the personas each was decoded under, their features, whether each ended by itself) in `data`, and the
# pick once made; a pick names one of these, never answer text sent by the client.
# After SCHEMA (an older SQLite file gets its sessions.user_id column first).
USER_INDEX = "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, created_at)"

LIST_SESSIONS = """
SELECT s.id, s.created_at,
       (SELECT substr(m.content, 1, 120) FROM messages m WHERE m.session_id = s.id AND m.role = 'user'
        ORDER BY m.id LIMIT 1) AS title,
       (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS messages,
       COALESCE((SELECT MAX(m.created_at) FROM messages m WHERE m.session_id = s.id), s.created_at) AS updated_at
FROM sessions s
WHERE s.user_id = ?
ORDER BY updated_at DESC, s.id
LIMIT ?
"""


class Store(ABC):
    """The storage interface the app uses. Methods that read or change a conversation take the user's id and
    only ever see that user's conversations: another user's conversation id behaves as an unknown one."""

    @abstractmethod
    async def create_user(self, token_hash: str, max_users: int) -> dict[str, Any] | None:
        """A new user ``{"id", "created_at"}``; None when ``max_users`` exist already."""

    @abstractmethod
    async def user_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        """``{"id", "token_hash", "created_at"}`` of the user whose token hashes to ``token_hash``, else None."""

    @abstractmethod
    async def create_session(self, user_id: str, max_sessions: int) -> dict[str, Any] | None:
        """A new conversation ``{"id", "created_at"}``; None when the user has ``max_sessions`` already."""

    @abstractmethod
    async def session_owned(self, user_id: str, session_id: str) -> bool:
        """Whether ``session_id`` exists and belongs to ``user_id``."""

    @abstractmethod
    async def list_sessions(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's conversations, most recently active first."""

    @abstractmethod
    async def count_sessions(self, user_id: str) -> int:
        """How many conversations the user has."""

    @abstractmethod
    async def messages(self, user_id: str, session_id: str, *, limit: int | None = None,
                       before: int | None = None) -> list[dict[str, Any]]:
        """The conversation's messages in order (none when it is not the user's): the last ``limit`` of them
        (None: all) with ids below ``before`` (None: from the newest), for paging back through a long one."""

    @abstractmethod
    async def count_messages(self, user_id: str, session_id: str) -> int:
        """How many messages the user's conversation holds (0 when it is not the user's)."""

    @abstractmethod
    async def context(self, user_id: str, session_id: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` messages a model reads (the users' and complete answers: role, content), oldest
        first; only those rows are read, however long the conversation."""

    @abstractmethod
    async def add_message(self, session_id: str, role: str, content: str, *, status: str = "complete",
                          personas: list[str] | None = None, preferences: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> int:
        """Append a message (the caller checked the conversation's owner); its id. ConversationGone when the
        conversation was deleted meanwhile."""

    @abstractmethod
    async def delete_message(self, message_id: int) -> None:
        """Forget one message (a request refused after its message was stored)."""

    @abstractmethod
    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Forget the user's conversation and its messages; False when there was none."""

    # -- preference profiles (one per user) and the comparisons shown to learn them

    @abstractmethod
    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """``{"profile", "choices", "revision", "updated_at"}`` of the user's profile (``profile``: the profile
        file's JSON text), or None when the user has none."""

    @abstractmethod
    async def save_profile(self, user_id: str, profile: str, *, choices: int, expected_revision: str | None,
                           replace: bool = False, comparison_id: str | None = None,
                           choice: str | None = None) -> dict[str, Any] | None:
        """Write the user's profile in one transaction that holds the user's row: only if its revision is still
        ``expected_revision`` (None: the user has no profile yet), unless ``replace``; and, with ``comparison_id``,
        mark that comparison (the user's, not yet answered) as answered with ``choice``. The new record, or None
        when the revision changed meanwhile or the comparison is not the user's or already answered (nothing is
        written then)."""

    @abstractmethod
    async def delete_profile(self, user_id: str) -> bool:
        """Forget the user's profile and comparisons; whether there was a profile."""

    @abstractmethod
    async def add_comparison(self, user_id: str, prompt: str, answer_a: str, answer_b: str, data: dict[str, Any],
                             *, keep: int) -> dict[str, Any]:
        """Store a comparison shown to the user ``{"id", "created_at"}``; keep only the user's ``keep`` newest."""

    @abstractmethod
    async def comparison(self, user_id: str, comparison_id: str) -> dict[str, Any] | None:
        """``{"id", "prompt", "answer_a", "answer_b", "data", "choice", "created_at", "chosen_at"}`` of the
        user's comparison, or None (unknown, or another user's)."""

    @abstractmethod
    async def recent_prompts(self, user_id: str, limit: int) -> list[str]:
        """The prompts of the user's ``limit`` newest comparisons, newest first."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise unless the database answers a trivial query now (``/healthz``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close every connection."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the data lives, for people (no password)."""


class SQLStore(Store):
    """The SQL both databases share; subclasses open connections, map placeholders and lock."""

    threads = 1
    serial = ""
    real = ""
    integrity_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="chat-db")
        self._executor.submit(self._init_schema).result()

    # -- dialect hooks

    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _init_schema(self) -> None: ...

    @abstractmethod
    @contextmanager
    def _transaction(self, db: Any, lock: str) -> Iterator[None]:
        """A write transaction that serialises with every other one taking the same ``lock`` (a user id, or
        ``"users"``), across processes too."""

    def _sql(self, sql: str) -> str:
        return sql

    # -- plumbing

    def _db(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._lock:
                self._connections.append(db)
        return db

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db().execute(self._sql(sql), params).fetchall()]

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self._db().execute(self._sql(sql), params).rowcount

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for db in self._connections:
                    try:
                        db.close()
                    except Exception:  # noqa: BLE001 - closing on the way out
                        pass
                self._connections.clear()

        self._executor.submit(close_all).result()
        self._executor.shutdown(wait=True)

    # -- the synchronous halves (db threads only)

    def _create_user(self, token_hash: str, max_users: int) -> dict[str, Any] | None:
        db = self._db()
        with self._transaction(db, "users"):
            count = self._one("SELECT COUNT(*) AS n FROM users")
            if count is not None and int(count["n"]) >= max_users:
                return None
            row = {"id": uuid.uuid4().hex, "created_at": time.time()}
            self._execute("INSERT INTO users (id, token_hash, created_at) VALUES (?, ?, ?)",
                          (row["id"], token_hash, row["created_at"]))
        return row

    def _user_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        return self._one("SELECT id, token_hash, created_at FROM users WHERE token_hash = ?", (token_hash,))

    def _create_session(self, user_id: str, max_sessions: int) -> dict[str, Any] | None:
        db = self._db()
        with self._transaction(db, user_id):
            count = self._one("SELECT COUNT(*) AS n FROM sessions WHERE user_id = ?", (user_id,))
            if count is not None and int(count["n"]) >= max_sessions:
                return None
            row = {"id": uuid.uuid4().hex, "created_at": time.time()}
            self._execute("INSERT INTO sessions (id, user_id, created_at) VALUES (?, ?, ?)",
                          (row["id"], user_id, row["created_at"]))
        return row

    def _session_owned(self, user_id: str, session_id: str) -> bool:
        return self._one("SELECT 1 AS ok FROM sessions WHERE id = ? AND user_id = ?", (session_id, user_id)) is not None

    def _list_sessions(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self._rows(LIST_SESSIONS, (user_id, limit))
        for r in rows:
            r["messages"] = int(r["messages"])
        return rows

    def _count_sessions(self, user_id: str) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM sessions WHERE user_id = ?", (user_id,))
        return int(row["n"]) if row else 0

    def _messages(self, user_id: str, session_id: str, limit: int | None = None,
                  before: int | None = None) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT m.id, m.role, m.content, m.status, m.personas, m.preferences, m.meta, m.created_at "
            "FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE m.session_id = ? AND s.user_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
            (session_id, user_id, ALL if before is None else int(before), ALL if limit is None else max(0, int(limit))),
        )
        rows.reverse()
        for item in rows:
            item["id"] = int(item["id"])
            for key in ("personas", "preferences", "meta"):
                item[key] = json.loads(item[key])
        return rows

    def _context(self, user_id: str, session_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT m.id, m.role, m.content FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE m.session_id = ? AND s.user_id = ? AND (m.role = 'user' OR m.status = 'complete') "
            "ORDER BY m.id DESC LIMIT ?",
            (session_id, user_id, max(0, int(limit))),
        )
        return [{"role": r["role"], "content": r["content"]} for r in reversed(rows)]

    def _add_message(self, session_id: str, role: str, content: str, status: str, personas: list[str],
                     preferences: list[str], meta: dict[str, Any]) -> int:
        try:
            row = self._one(
                "INSERT INTO messages (session_id, role, content, status, personas, preferences, meta, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (session_id, role, content, status, json.dumps(personas), json.dumps(preferences),
                 json.dumps(meta), time.time()),
            )
        except self.integrity_errors as exc:
            raise ConversationGone(session_id) from exc
        assert row is not None
        return int(row["id"])

    def _delete_message(self, message_id: int) -> None:
        self._execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def _delete_session(self, user_id: str, session_id: str) -> bool:
        return self._execute("DELETE FROM sessions WHERE id = ? AND user_id = ?", (session_id, user_id)) > 0

    def _get_profile(self, user_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT profile, choices, revision, updated_at FROM profiles WHERE user_id = ?", (user_id,))
        if row is not None:
            row["choices"] = int(row["choices"])
        return row

    def _save_profile(self, user_id: str, profile: str, choices: int, expected_revision: str | None, replace: bool,
                      comparison_id: str | None, choice: str | None) -> dict[str, Any] | None:
        db = self._db()
        now = time.time()
        with self._transaction(db, user_id):
            current = self._one("SELECT revision FROM profiles WHERE user_id = ?", (user_id,))
            if not replace and (None if current is None else current["revision"]) != expected_revision:
                return None
            if comparison_id is not None:
                marked = self._execute(
                    "UPDATE comparisons SET choice = ?, chosen_at = ? WHERE id = ? AND user_id = ? AND choice IS NULL",
                    (choice, now, comparison_id, user_id),
                )
                if marked != 1:
                    raise _NotWritten  # rolls the transaction back
            record = {"profile": profile, "choices": int(choices), "revision": uuid.uuid4().hex, "updated_at": now}
            self._execute(
                "INSERT INTO profiles (user_id, profile, choices, revision, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET profile = excluded.profile, choices = excluded.choices, "
                "revision = excluded.revision, updated_at = excluded.updated_at",
                (user_id, profile, record["choices"], record["revision"], now),
            )
        return record

    def _save_profile_or_none(self, *args: Any) -> dict[str, Any] | None:
        try:
            return self._save_profile(*args)
        except _NotWritten:
            return None

    def _delete_profile(self, user_id: str) -> bool:
        db = self._db()
        with self._transaction(db, user_id):
            had = self._execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)) > 0
            self._execute("DELETE FROM comparisons WHERE user_id = ?", (user_id,))
        return had

    def _add_comparison(self, user_id: str, prompt: str, answer_a: str, answer_b: str, data: dict[str, Any],
                        keep: int) -> dict[str, Any]:
        db = self._db()
        row = {"id": uuid.uuid4().hex, "created_at": time.time()}
        with self._transaction(db, user_id):
            self._execute(
                "INSERT INTO comparisons (id, user_id, prompt, answer_a, answer_b, data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row["id"], user_id, prompt, answer_a, answer_b, json.dumps(data), row["created_at"]),
            )
            self._execute(
                "DELETE FROM comparisons WHERE user_id = ? AND id NOT IN (SELECT id FROM comparisons WHERE "
                "user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?)",
                (user_id, user_id, max(1, int(keep))),
            )
        return row

    def _comparison(self, user_id: str, comparison_id: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT id, prompt, answer_a, answer_b, data, choice, created_at, chosen_at FROM comparisons "
            "WHERE id = ? AND user_id = ?",
            (comparison_id, user_id),
        )
        if row is not None:
            row["data"] = json.loads(row["data"])
        return row

    def _recent_prompts(self, user_id: str, limit: int) -> list[str]:
        rows = self._rows("SELECT prompt FROM comparisons WHERE user_id = ? ORDER BY created_at DESC, id DESC "
                          "LIMIT ?", (user_id, max(0, int(limit))))
        return [r["prompt"] for r in rows]

    # -- the interface

    async def create_user(self, token_hash: str, max_users: int) -> dict[str, Any] | None:
        return await self._run(self._create_user, token_hash, max_users)

    async def user_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        return await self._run(self._user_by_token_hash, token_hash)

    async def create_session(self, user_id: str, max_sessions: int) -> dict[str, Any] | None:
        return await self._run(self._create_session, user_id, max_sessions)

    async def session_owned(self, user_id: str, session_id: str) -> bool:
        return await self._run(self._session_owned, user_id, session_id)

    async def list_sessions(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(self._list_sessions, user_id, limit)

    async def count_sessions(self, user_id: str) -> int:
        return await self._run(self._count_sessions, user_id)

    async def messages(self, user_id: str, session_id: str, *, limit: int | None = None,
                       before: int | None = None) -> list[dict[str, Any]]:
        return await self._run(self._messages, user_id, session_id, limit, before)

    async def count_messages(self, user_id: str, session_id: str) -> int:
        row = await self._run(self._one, "SELECT COUNT(*) AS n FROM messages m JOIN sessions s ON s.id = "
                              "m.session_id WHERE m.session_id = ? AND s.user_id = ?", (session_id, user_id))
        return int(row["n"]) if row else 0

    async def context(self, user_id: str, session_id: str, limit: int) -> list[dict[str, Any]]:
        return await self._run(self._context, user_id, session_id, limit)

    async def add_message(self, session_id: str, role: str, content: str, *, status: str = "complete",
                          personas: list[str] | None = None, preferences: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> int:
        return await self._run(self._add_message, session_id, role, content, status, personas or [],
                               preferences or [], meta or {})

    async def delete_message(self, message_id: int) -> None:
        await self._run(self._delete_message, message_id)

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        return await self._run(self._delete_session, user_id, session_id)

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        return await self._run(self._get_profile, user_id)

    async def save_profile(self, user_id: str, profile: str, *, choices: int, expected_revision: str | None,
                           replace: bool = False, comparison_id: str | None = None,
                           choice: str | None = None) -> dict[str, Any] | None:
        return await self._run(self._save_profile_or_none, user_id, profile, choices, expected_revision, replace,
                               comparison_id, choice)

    async def delete_profile(self, user_id: str) -> bool:
        return await self._run(self._delete_profile, user_id)

    async def add_comparison(self, user_id: str, prompt: str, answer_a: str, answer_b: str, data: dict[str, Any],
                             *, keep: int) -> dict[str, Any]:
        return await self._run(self._add_comparison, user_id, prompt, answer_a, answer_b, data, keep)

    async def comparison(self, user_id: str, comparison_id: str) -> dict[str, Any] | None:
        return await self._run(self._comparison, user_id, comparison_id)

    async def recent_prompts(self, user_id: str, limit: int) -> list[str]:
        return await self._run(self._recent_prompts, user_id, limit)

    async def ping(self) -> None:
        await self._run(self._one, "SELECT 1 AS ok")


class SQLiteStore(SQLStore):
    """Conversations in one SQLite file (WAL journal; every write is committed before it is acknowledged).

    The file is created owner-only (0600; SQLite gives its -wal and -shm files the same mode), and a folder
    this store creates for it is 0700. One connection on one thread: SQLite writes one at a time anyway.
    """

    threads = 1
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str, *, private_dir: bool = False) -> None:
        self.path = Path(path)
        _private_file(self.path, private_dir=private_dir)
        super().__init__()

    @property
    def description(self) -> str:
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a committed write survives the process being killed
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _init_schema(self) -> None:
        db = self._db()
        db.executescript(SCHEMA.format(serial=self.serial, real=self.real))
        columns = {r["name"] for r in db.execute("PRAGMA table_info(sessions)").fetchall()}
        if "user_id" not in columns:  # a database from before accounts: its conversations belong to nobody
            db.execute("ALTER TABLE sessions ADD COLUMN user_id TEXT REFERENCES users(id) ON DELETE CASCADE")
        db.execute(USER_INDEX)
        for suffix in ("", "-wal", "-shm"):  # files an older version made world-readable
            _chmod_own(Path(f"{self.path}{suffix}"), 0o600)

    @contextmanager
    def _transaction(self, db: sqlite3.Connection, lock: str) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")  # the database's write lock: serialises with other processes too
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class PostgresStore(SQLStore):
    """Conversations in PostgreSQL (``CHAT_DATABASE_URL``), which several app processes can share.

    A few threads sharing psycopg's connection pool (autocommit; explicit transactions where a limit is checked:
    the user's row is locked, so two processes cannot both create the user's last allowed conversation). The
    database may come and go (a restart, a killed backend, a failover, an idle timeout): the pool checks each
    connection before lending it and replaces a broken one, and an operation that fails on a connection error is
    run once more on a fresh connection when that is safe: always for a read, and for a write only when it is
    known not to have been committed (it failed inside its transaction, before the commit was sent). A write
    whose commit may or may not have happened is never run twice; its request fails, as the client sees.
    """

    threads = 4
    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"
    SCHEMA_LOCK = 0x63686174  # pg_advisory_xact_lock key while creating tables ("chat")
    USERS_LOCK = 0x75736572  # ... while counting users before adding one ("user")
    CONNECT_TIMEOUT_S = 5.0  # how long an operation waits for a connection (the database down: then it fails)
    RETRY_PAUSE_S = 0.2  # before the one retry of an operation that met a connection error

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - the app extra installs them
            raise SystemExit("CHAT_DATABASE_URL needs psycopg and psycopg-pool: pip install -e '.[app]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.integrity_errors = (psycopg.errors.ForeignKeyViolation,)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=self.threads, timeout=self.CONNECT_TIMEOUT_S, open=True,
            kwargs={"autocommit": True, "row_factory": dict_row}, check=ConnectionPool.check_connection,
            name="chat-db",
        )
        try:
            super().__init__()
        except BaseException:
            self._pool.close()
            raise

    @property
    def description(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        where = info.get("host") or "localhost"
        return f"PostgreSQL database {info.get('dbname') or info.get('user') or '?'} on {where}"

    def _sql(self, sql: str) -> str:
        if not self._local.in_transaction and not sql.lstrip().upper().startswith("SELECT"):
            self._local.unsure = True  # an autocommit write is sent: from now on it may have been committed
        return sql.replace("?", "%s")

    def _connect(self) -> Any:  # pragma: no cover - connections come from the pool, lent per operation
        raise RuntimeError("PostgresStore lends pooled connections per operation (_with_connection)")

    def _db(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is None:
            raise RuntimeError("a PostgresStore statement ran outside _with_connection")
        return db

    def _with_connection(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a pooled connection (checked before it is lent); once more on a fresh one after a
        connection error, unless a write may have been committed."""
        errors = (self._psycopg.OperationalError, self._psycopg.InterfaceError)
        for attempt in (1, 2):
            self._local.in_transaction = self._local.unsure = False
            try:
                with self._pool.connection() as db:
                    self._local.db = db
                    try:
                        return fn(*args)
                    finally:
                        self._local.db = None
            except errors as exc:
                if attempt == 2 or self._local.unsure:
                    raise
                log.warning("database connection error (%s); retrying once on a fresh connection", exc)
                time.sleep(self.RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._executor.submit(self._with_connection, fn, *args))

    def _init_schema(self) -> None:
        self._with_connection(self._create_schema)

    def _create_schema(self) -> None:
        db = self._db()
        with db.transaction():  # two processes starting at once: one creates the tables, the other waits
            db.execute("SELECT pg_advisory_xact_lock(%s)", (self.SCHEMA_LOCK,))
            for statement in SCHEMA.format(serial=self.serial, real=self.real).split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(USER_INDEX)

    @contextmanager
    def _transaction(self, db: Any, lock: str) -> Iterator[None]:
        self._local.in_transaction = True
        try:
            with db.transaction():
                if lock == "users":
                    db.execute("SELECT pg_advisory_xact_lock(%s)", (self.USERS_LOCK,))
                else:
                    db.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (lock,))
                yield
                self._local.unsure = True  # the commit is sent next: it may happen even if its answer is lost
        finally:
            self._local.in_transaction = False

    def close(self) -> None:
        super().close()
        self._pool.close()


def open_store(database_url: str | None, db_path: Path, *, private_dir: bool = False) -> Store:
    """PostgreSQL when ``database_url`` is a ``postgresql://`` (or ``postgres://``) URL, else SQLite at ``db_path``."""
    if database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise SystemExit("CHAT_DATABASE_URL must be a postgresql:// URL (unset it for SQLite, with CHAT_DB)")
        return PostgresStore(database_url)
    return SQLiteStore(db_path, private_dir=private_dir)


def _chmod_own(path: Path, mode: int) -> None:
    """chmod a file or folder this process's user owns (leave anyone else's alone)."""
    try:
        if path.exists() and path.stat().st_uid == os.geteuid():
            os.chmod(path, mode)
    except OSError:
        pass


def _private_file(path: Path, *, private_dir: bool) -> None:
    """Make the database's folder (0700 when created here, or when ``private_dir``) and file (0600)."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _chmod_own(folder, 0o700)  # mkdir's mode is filtered by the umask; this is exactly 0700
    elif private_dir:
        _chmod_own(folder, 0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    _chmod_own(path, 0o600)


__all__ = ["ConversationGone", "PostgresStore", "SQLiteStore", "Store", "default_db_path", "open_store"]
