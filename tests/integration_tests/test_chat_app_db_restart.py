"""The chat app survives its PostgreSQL restarting: it answers again within seconds and loses nothing acknowledged.

A throw-away PostgreSQL cluster (test_chat_app_store.py's, with synchronous commits, so an acknowledged commit is
in the WAL) serves the app in-process. Four accounts write (new conversations) and read (their lists) in a loop;
the server is stopped with ``pg_ctl -m immediate`` (as a crash or a killed server: no shutdown checkpoint) and
started again. Checked: ``/healthz`` says 503 while the database is down; after it is back the app answers
within RECOVERY_S; every conversation whose creation was acknowledged (201) is there afterwards; errors happen
only around the restart (their number is printed). Bounded: the whole test takes about 15 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.chat_app import TEST_HOST, server_module
from tests.helpers.postgres import PostgresServer, pg_bindir

RECOVERY_S = 5.0
LOAD_S = 2.0  # of load before the restart, and again after it
WORKERS = 4


class DurablePostgres(PostgresServer):
    """The store tests' server, with synchronous commits (theirs turns them off for speed)."""

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "chat", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.boot()

    def boot(self) -> None:
        options = f"-c listen_addresses='' -k {self.root} -p {self.port} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def postgres() -> Iterator[DurablePostgres]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    pytest.importorskip("psycopg_pool", reason="psycopg-pool comes with the app extra: pip install -e '.[app]'")
    server = DurablePostgres(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Load:
    """Accounts that create conversations and list them, counting what was acknowledged and what failed."""

    def __init__(self, app: Any, tokens: list[str]) -> None:
        self.app = app
        self.tokens = tokens
        self.acknowledged: dict[str, list[str]] = {t: [] for t in tokens}
        self.errors = 0
        self.last_ok = 0.0
        self.running = True

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}", headers=headers, timeout=30)

    async def worker(self, token: str) -> None:
        async with self.client(token) as c:
            step = 0
            while self.running:
                step += 1
                try:
                    if step % 3:
                        response = await c.post("/api/sessions")
                        if response.status_code == 201:
                            self.acknowledged[token].append(response.json()["id"])
                    else:
                        response = await c.get("/api/sessions", params={"limit": 500})
                    if response.status_code >= 500:
                        self.errors += 1
                    else:
                        self.last_ok = time.monotonic()
                except httpx.HTTPError:
                    self.errors += 1
                await asyncio.sleep(0.02)


async def _until_answers(load: Load, token: str, limit: float) -> float:
    """Seconds until a read through the app succeeds (fails the test past ``limit``)."""
    began = time.monotonic()
    async with load.client(token) as c:
        while True:
            response = await c.get("/api/sessions")
            if response.status_code == 200:
                return time.monotonic() - began
            assert time.monotonic() - began < limit, f"the app still answers {response.status_code}"
            await asyncio.sleep(0.05)


async def test_a_postgres_restart_under_load_loses_nothing_acknowledged(postgres: DurablePostgres, tmp_path) -> None:  # noqa: ANN001
    server = server_module()
    url = postgres.fresh_database("chat_restart")
    settings = server.Settings(db_path=tmp_path / "unused.db", database_url=url, preload=False,
                               allowed_hosts=(TEST_HOST,), max_conversations=10_000)
    app = server.create_app(settings)
    try:
        load = Load(app, [])
        async with load.client() as c:
            load.tokens = [(await c.post("/api/users")).json()["token"] for _ in range(WORKERS)]
            load.acknowledged = {t: [] for t in load.tokens}
            assert (await c.get("/healthz")).status_code == 200
        workers = [asyncio.create_task(load.worker(t)) for t in load.tokens]
        await asyncio.sleep(LOAD_S)
        before = sum(map(len, load.acknowledged.values()))
        assert before > 0 and load.errors == 0

        await asyncio.to_thread(postgres.crash)
        async with load.client() as c:
            assert (await c.get("/healthz")).status_code == 503  # the probe sees the database gone
        await asyncio.to_thread(postgres.boot)
        recovered_in = await _until_answers(load, load.tokens[0], RECOVERY_S)
        async with load.client() as c:
            assert (await c.get("/healthz")).status_code == 200
        errors_at_restart = load.errors
        await asyncio.sleep(LOAD_S)
        load.running = False
        await asyncio.gather(*workers)

        after = sum(map(len, load.acknowledged.values()))
        assert after > before  # the load went on after the restart
        assert load.errors == errors_at_restart  # no error once the app answered again
        for token, ids in load.acknowledged.items():
            async with load.client(token) as c:
                listed = {s["id"] for s in (await c.get("/api/sessions", params={"limit": 500})).json()}
            assert set(ids) <= listed, f"{len(set(ids) - listed)} acknowledged conversation(s) lost"
        print(f"\nrestart: served again {recovered_in:.2f} s after PostgreSQL was back; {after} acknowledged "
              f"writes kept; {load.errors} request(s) failed while it was down")
    finally:
        app.state.service.profiles.close()
        app.state.service.store.close()


async def test_killed_backends_are_replaced_and_reads_and_writes_go_on(postgres: DurablePostgres) -> None:
    """Every pooled connection's backend is terminated (a killed backend, a failover, an idle timeout): the next
    read and write succeed, on fresh connections, without an error reaching the caller."""
    import psycopg

    from examples.chat_app.storage import PostgresStore

    url = postgres.fresh_database("chat_killed")
    store = PostgresStore(url)
    try:
        user = await store.create_user("hash", 10)
        assert user is not None
        await asyncio.gather(*(store.list_sessions(user["id"]) for _ in range(8)))  # a few pooled connections
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                   "datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert killed >= 1
        assert await store.list_sessions(user["id"]) == []
        session = await store.create_session(user["id"], 10)
        assert session is not None
        assert [s["id"] for s in await store.list_sessions(user["id"])] == [session["id"]]
        await store.ping()
    finally:
        store.close()
