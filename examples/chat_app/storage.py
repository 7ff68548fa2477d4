"""The chat app's storage: users, their conversations and messages.

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


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/langchain-persona-judge/chat.db`` (``~/.local/share/...`` when XDG_DATA_HOME is unset):
    per user, outside the source tree."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if base.strip() and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / APP_DIR / "chat.db"


class ConversationGone(Exception):
    """A message was written to a conversation that no longer exists (deleted meanwhile)."""


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
"""
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
    async def messages(self, user_id: str, session_id: str) -> list[dict[str, Any]]:
        """The conversation's messages in order (none when it is not the user's)."""

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

    @abstractmethod
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

    def _messages(self, user_id: str, session_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT m.id, m.role, m.content, m.status, m.personas, m.preferences, m.meta, m.created_at "
            "FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE m.session_id = ? AND s.user_id = ? ORDER BY m.id",
            (session_id, user_id),
        )
        for item in rows:
            item["id"] = int(item["id"])
            for key in ("personas", "preferences", "meta"):
                item[key] = json.loads(item[key])
        return rows

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

    async def messages(self, user_id: str, session_id: str) -> list[dict[str, Any]]:
        return await self._run(self._messages, user_id, session_id)

    async def add_message(self, session_id: str, role: str, content: str, *, status: str = "complete",
                          personas: list[str] | None = None, preferences: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> int:
        return await self._run(self._add_message, session_id, role, content, status, personas or [],
                               preferences or [], meta or {})

    async def delete_message(self, message_id: int) -> None:
        await self._run(self._delete_message, message_id)

    async def delete_session(self, user_id: str, session_id: str) -> bool:
        return await self._run(self._delete_session, user_id, session_id)


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

    A few threads, each with its own connection (autocommit; explicit transactions where a limit is checked:
    the user's row is locked, so two processes cannot both create the user's last allowed conversation).
    """

    threads = 4
    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"
    SCHEMA_LOCK = 0x63686174  # pg_advisory_xact_lock key while creating tables ("chat")
    USERS_LOCK = 0x75736572  # ... while counting users before adding one ("user")

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the app extra installs it
            raise SystemExit("CHAT_DATABASE_URL needs psycopg: pip install -e '.[app]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.integrity_errors = (psycopg.errors.ForeignKeyViolation,)
        super().__init__()

    @property
    def description(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        where = info.get("host") or "localhost"
        return f"PostgreSQL database {info.get('dbname') or info.get('user') or '?'} on {where}"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        return self._psycopg.connect(self.url, autocommit=True, row_factory=dict_row)

    def _init_schema(self) -> None:
        db = self._db()
        with db.transaction():  # two processes starting at once: one creates the tables, the other waits
            db.execute("SELECT pg_advisory_xact_lock(%s)", (self.SCHEMA_LOCK,))
            for statement in SCHEMA.format(serial=self.serial, real=self.real).split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(USER_INDEX)

    @contextmanager
    def _transaction(self, db: Any, lock: str) -> Iterator[None]:
        with db.transaction():
            if lock == "users":
                db.execute("SELECT pg_advisory_xact_lock(%s)", (self.USERS_LOCK,))
            else:
                db.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (lock,))
            yield


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
