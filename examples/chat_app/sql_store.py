"""The SQL both of the chat app's databases share (:class:`SQLStore`): the schema, and every statement.

Every statement is parameterised (``?`` placeholders, turned into ``%s`` for psycopg); no value is ever
formatted into SQL text. Connections are used from a few dedicated threads (one per thread), so the event loop
never waits for the disk or the network. The subclasses (:mod:`.storage`) open connections, map placeholders
and lock.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .store import ConversationGone, Store

ALL = 2**62  # a LIMIT, or an id bound, that leaves nothing out (both databases take it as a BIGINT)


class _NotWritten(Exception):
    """Raised inside a transaction to roll it back: a condition checked in it did not hold."""


# The schema, in the SQL both databases take; the only differences are the column types in TYPES.
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL,
    last_seen {real}
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
# users.last_seen: when the account was last used (written at most every TOUCH_EVERY_S; NULL in a database from
# before it: then created_at counts). A database from before it gets the column (ADD_LAST_SEEN) after SCHEMA.
ADD_LAST_SEEN = "ALTER TABLE users ADD COLUMN {if_not_exists}last_seen {real}"
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

# Accounts unused since a time that hold nothing: no conversation, no profile (comparisons go with them).
EXPIRE_IDLE_USERS = """
DELETE FROM users
WHERE COALESCE(last_seen, created_at) < ?
  AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = users.id)
  AND NOT EXISTS (SELECT 1 FROM profiles p WHERE p.user_id = users.id)
"""


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
            self._execute("INSERT INTO users (id, token_hash, created_at, last_seen) VALUES (?, ?, ?, ?)",
                          (row["id"], token_hash, row["created_at"], row["created_at"]))
        return row

    def _user_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        return self._one("SELECT id, token_hash, created_at, COALESCE(last_seen, created_at) AS last_seen "
                         "FROM users WHERE token_hash = ?", (token_hash,))

    def _expire_idle_users(self, idle_before: float) -> int:
        db = self._db()
        with self._transaction(db, "users"):  # with sign-ups: the account count changes under one lock
            return max(0, self._execute(EXPIRE_IDLE_USERS, (float(idle_before),)))

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

    async def touch_user(self, user_id: str, now: float) -> None:
        await self._run(self._execute, "UPDATE users SET last_seen = ? WHERE id = ?", (float(now), user_id))

    async def expire_idle_users(self, idle_before: float) -> int:
        return await self._run(self._expire_idle_users, idle_before)

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


__all__ = ["ADD_LAST_SEEN", "ALL", "EXPIRE_IDLE_USERS", "LIST_SESSIONS", "SCHEMA", "USER_INDEX", "SQLStore"]
