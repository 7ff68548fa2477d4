"""The chat app's storage: users, their conversations and messages, their preference profiles.

One interface (:class:`~.store.Store`, every method scoped to a user where a user owns the data) with two
implementations that share their SQL (:mod:`.sql_store`), both here:

- :class:`SQLiteStore` (the default): one file, WAL journal, created owner-only (0700 directory when this
  module makes it, 0600 file; SQLite gives the -wal and -shm files the database file's mode);
- :class:`PostgresStore` (``CHAT_DATABASE_URL=postgresql://...``): several app processes can share one
  database; needs ``psycopg`` and ``psycopg-pool`` (the ``app`` extra); a lost connection is replaced.

:func:`open_store` picks one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .sql_store import ADD_LAST_SEEN, SCHEMA, USER_INDEX, SQLStore
from .store import ConversationGone, Store

APP_DIR = "langchain-persona-judge"
log = logging.getLogger("examples.chat_app")


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/langchain-persona-judge/chat.db`` (``~/.local/share/...`` when XDG_DATA_HOME is unset):
    per user, outside the source tree."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if base.strip() and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / APP_DIR / "chat.db"

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
        if "last_seen" not in {r["name"] for r in db.execute("PRAGMA table_info(users)").fetchall()}:
            db.execute(ADD_LAST_SEEN.format(if_not_exists="", real=self.real))
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
            db.execute(ADD_LAST_SEEN.format(if_not_exists="IF NOT EXISTS ", real=self.real))
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
