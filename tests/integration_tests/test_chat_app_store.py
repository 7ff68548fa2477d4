"""The chat app's storage interface, the same tests against SQLite and a real PostgreSQL server.

The PostgreSQL server is started here, for this module: Debian's ``postgresql`` package's ``initdb`` and
``pg_ctl`` (``/usr/lib/postgresql/*/bin``, or $PG_BINDIR), a throw-away cluster in a temporary folder that
listens on a Unix socket only (no TCP port), run as the ``postgres`` user when the tests run as root (PostgreSQL
refuses root). ``make test`` installs the package (scripts/install-browser.sh); without it these tests skip
here, saying why, and fail under CI (``CI`` set), where it must be there.

Then two app processes on that one database: an account and its conversations made through one are there
through the other, and isolation holds across them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.chat_app.storage import ConversationGone, PostgresStore, SQLiteStore, Store
from tests.helpers.postgres import PostgresServer, pg_bindir

# (No NUL: PostgreSQL's text cannot hold one, and the app refuses it in any field before it reaches a store.)
DAY = 86400.0
HOSTILE = ["' OR '1'='1", "x'; DROP TABLE sessions; --", "%s", "?", "\\", "0" * 32, "é\u202e"]


# -- a PostgreSQL server for these tests (tests.helpers.postgres) ----------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    bindir = pg_bindir()
    if bindir is None:
        message = ("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin, $PG_BINDIR or on "
                   "PATH: apt-get install postgresql (scripts/install-browser.sh does it; make test runs that)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("psycopg", reason="psycopg comes with the app extra: pip install -e '.[app]'")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


_databases = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A function that opens a store on this test's own (empty) database; each call is one more connection
    pool on it, like another process."""
    if request.param == "sqlite":
        path = tmp_path / "chat.db"
        return lambda: SQLiteStore(path)
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.fresh_database(f"chat_test_{next(_databases)}")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(backend: Any) -> AsyncIterator[Store]:
    opened = backend()
    yield opened
    opened.close()


# -- the interface, on both ---------------------------------------------------------------------------------


async def test_users_are_found_by_token_hash_only(store: Store) -> None:
    a = await store.create_user("a" * 64, max_users=10)
    b = await store.create_user("b" * 64, max_users=10)
    assert a and b and a["id"] != b["id"]
    found = await store.user_by_token_hash("a" * 64)
    assert found == {"id": a["id"], "token_hash": "a" * 64, "created_at": pytest.approx(a["created_at"]),
                     "last_seen": pytest.approx(a["created_at"])}
    assert await store.user_by_token_hash("c" * 64) is None
    for hostile in HOSTILE:
        assert await store.user_by_token_hash(hostile) is None


async def test_accounts_are_capped(store: Store) -> None:
    made = await asyncio.gather(*(store.create_user(f"{i:064x}", max_users=3) for i in range(8)))
    assert sum(m is not None for m in made) == 3


async def test_idle_accounts_that_hold_nothing_expire_and_the_others_stay(store: Store) -> None:
    now = time.time()
    await store.create_user("a" * 64, 10)  # idle from the start
    talking = (await store.create_user("b" * 64, 10))["id"]
    await store.create_session(talking, 10)
    learned = (await store.create_user("c" * 64, 10))["id"]
    await store.save_profile(learned, '{"v": 1}', choices=1, expected_revision=None)
    back = (await store.create_user("d" * 64, 10))["id"]
    await store.touch_user(back, now + 10 * DAY)  # used again ten days on
    compared = (await store.create_user("e" * 64, 10))["id"]
    await store.add_comparison(compared, "Q?", "one", "two", {}, keep=10)  # comparisons alone hold nothing
    assert (await store.user_by_token_hash("d" * 64))["last_seen"] == pytest.approx(now + 10 * DAY)

    assert await store.expire_idle_users(now - DAY) == 0  # none idle since before yesterday
    assert await store.expire_idle_users(now + 5 * DAY) == 2
    left = {h: await store.user_by_token_hash(h * 64) for h in "abcde"}
    assert {h for h, row in left.items() if row is not None} == {"b", "c", "d"}
    assert await store.recent_prompts(compared, 10) == []  # its comparisons went with it
    assert await store.expire_idle_users(now + 5 * DAY) == 0
    assert await store.expire_idle_users(now + 11 * DAY) == 1  # then the one used on day ten, idle since
    assert await store.user_by_token_hash("d" * 64) is None
    assert len(await store.list_sessions(talking)) == 1 and await store.get_profile(learned) is not None


async def test_each_user_sees_only_their_own_conversations(store: Store) -> None:
    a = (await store.create_user("a" * 64, 10))["id"]
    b = (await store.create_user("b" * 64, 10))["id"]
    sa = (await store.create_session(a, 10))["id"]
    sb = (await store.create_session(b, 10))["id"]
    await store.add_message(sa, "user", "A's question", personas=["concise"], preferences=["Be brief."],
                            meta={"k": [1, 2]})
    await store.add_message(sa, "assistant", "A's answer", status="cancelled")
    assert await store.session_owned(a, sa) and not await store.session_owned(b, sa)
    assert [s["id"] for s in await store.list_sessions(a)] == [sa]
    assert [s["id"] for s in await store.list_sessions(b)] == [sb]
    listed = (await store.list_sessions(a))[0]
    assert listed["title"] == "A's question" and listed["messages"] == 2
    assert await store.count_sessions(a) == 1
    messages = await store.messages(a, sa)
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "A's question", "complete"), ("assistant", "A's answer", "cancelled")]
    assert messages[0]["personas"] == ["concise"] and messages[0]["preferences"] == ["Be brief."]
    assert messages[0]["meta"] == {"k": [1, 2]} and isinstance(messages[0]["id"], int)
    assert await store.messages(b, sa) == []  # B asking for A's conversation gets nothing
    # B cannot delete A's conversation; A can, and its messages go with it.
    assert await store.delete_session(b, sa) is False
    assert len(await store.messages(a, sa)) == 2
    assert await store.delete_session(a, sa) is True
    assert await store.messages(a, sa) == [] and not await store.session_owned(a, sa)
    with pytest.raises(ConversationGone):
        await store.add_message(sa, "assistant", "too late")
    assert [s["id"] for s in await store.list_sessions(b)] == [sb]


async def test_hostile_ids_are_plain_values(store: Store) -> None:
    a = (await store.create_user("a" * 64, 10))["id"]
    sa = (await store.create_session(a, 10))["id"]
    for hostile in HOSTILE:
        assert not await store.session_owned(hostile, sa)
        assert not await store.session_owned(a, hostile)
        assert await store.list_sessions(hostile) == []
        assert await store.messages(a, hostile) == []
        assert await store.delete_session(hostile, sa) is False
    assert await store.session_owned(a, sa)  # nothing was dropped or changed
    message = await store.add_message(sa, "user", "'; DROP TABLE messages; --")
    assert (await store.messages(a, sa))[0]["content"] == "'; DROP TABLE messages; --"
    await store.delete_message(message)
    assert await store.messages(a, sa) == []


async def test_conversations_per_user_are_capped_even_when_asked_at_once(backend: Any) -> None:
    first, second = backend(), backend()  # two pools on one database, as two app processes would have
    try:
        a = (await first.create_user("a" * 64, 10))["id"]
        b = (await second.create_user("b" * 64, 10))["id"]
        made = await asyncio.gather(*(s.create_session(a, 5) for s in [first, second] * 10))
        assert sum(m is not None for m in made) == 5
        assert await first.count_sessions(a) == await second.count_sessions(a) == 5
        assert await second.create_session(b, 5) is not None  # another user's cap is their own
        # What one pool wrote, the other reads.
        session = next(m for m in made if m is not None)["id"]
        await first.add_message(session, "user", "hello")
        assert [m["content"] for m in await second.messages(a, session)] == ["hello"]
        assert (await second.user_by_token_hash("a" * 64))["id"] == a
    finally:
        first.close()
        second.close()


async def test_opening_an_existing_database_again_keeps_its_data(backend: Any) -> None:
    first = backend()
    a = (await first.create_user("a" * 64, 10))["id"]
    session = (await first.create_session(a, 10))["id"]
    first.close()
    again = backend()
    try:
        assert [s["id"] for s in await again.list_sessions(a)] == [session]
    finally:
        again.close()


def test_a_database_from_before_accounts_opens_and_hides_its_old_conversations(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL);
            CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL
                REFERENCES sessions(id) ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'complete', personas TEXT NOT NULL DEFAULT '[]',
                preferences TEXT NOT NULL DEFAULT '[]', meta TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
            INSERT INTO sessions VALUES ('0123456789abcdef0123456789abcdef', 1.0);
        """)
    store = SQLiteStore(path)

    async def check() -> None:
        a = (await store.create_user("a" * 64, 10))["id"]
        assert await store.list_sessions(a) == []
        assert not await store.session_owned(a, "0123456789abcdef0123456789abcdef")

    try:
        asyncio.run(check())
    finally:
        store.close()


OLD_USERS = "CREATE TABLE users (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created_at {real} NOT NULL)"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_from_before_last_seen_opens_and_its_accounts_expire_by_age(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "sqlite":
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as db:
            db.execute(OLD_USERS.format(real="REAL"))
            db.execute("INSERT INTO users VALUES ('old', 'h', 1.0), ('new', 'n', ?)", (time.time(),))
        opened: Store = SQLiteStore(path)
    else:
        import psycopg

        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.fresh_database(f"chat_old_{next(_databases)}")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(OLD_USERS.format(real="DOUBLE PRECISION"))
            db.execute("INSERT INTO users VALUES ('old', 'h', 1.0), ('new', 'n', %s)", (time.time(),))
        opened = PostgresStore(url)

    async def check() -> None:
        assert (await opened.user_by_token_hash("h"))["last_seen"] == 1.0  # no last use: its creation counts
        assert await opened.expire_idle_users(time.time() - DAY) == 1
        assert await opened.user_by_token_hash("h") is None and await opened.user_by_token_hash("n") is not None

    try:
        asyncio.run(check())
    finally:
        opened.close()


# -- two app processes on one PostgreSQL database ------------------------------------------------------------


@pytest.mark.embedded
def test_two_app_processes_share_one_postgres_database(postgres: PostgresServer, tmp_path: Path) -> None:
    from tests.helpers.chat_app import LiveServer

    url = postgres.fresh_database("chat_two_processes")
    servers = [LiveServer(tmp_path / f"p{i}" / "unused.db", CHAT_DATABASE_URL=url, CHAT_PRELOAD="0")
               for i in range(2)]
    for i, s in enumerate(servers):
        (tmp_path / f"p{i}").mkdir()
        s.start()
    try:
        one, two = servers
        user = one.new_user()
        with one.client(user) as c1, two.client(user) as c2:
            session = c1.post("/api/sessions").json()["id"]
            assert [s["id"] for s in c2.get("/api/sessions").json()] == [session]  # made on one, seen on two
            assert c2.get(f"/api/sessions/{session}").json() == {"id": session, "messages": []}
            with two.client() as stranger:  # another user, on the other process
                assert stranger.get(f"/api/sessions/{session}").status_code == 404
                assert stranger.delete(f"/api/sessions/{session}").status_code == 404
                assert stranger.get("/api/sessions").json() == []
            assert c2.delete(f"/api/sessions/{session}").json()["deleted"] is True
            assert c1.get(f"/api/sessions/{session}").status_code == 404  # deleted on two, gone on one
        assert not (tmp_path / "p0" / "unused.db").exists()  # PostgreSQL only: no SQLite file was made
    finally:
        for s in servers:
            s.stop()


# -- preference profiles and comparisons, on both ------------------------------------------------------------


async def test_a_profile_is_stored_per_user_and_written_only_at_the_revision_read(store: Store) -> None:
    a = (await store.create_user("a" * 64, 10))["id"]
    b = (await store.create_user("b" * 64, 10))["id"]
    assert await store.get_profile(a) is None
    # No profile yet: written only when the writer expected none.
    assert await store.save_profile(a, '{"v": 1}', choices=1, expected_revision="nope") is None
    first = await store.save_profile(a, '{"v": 1}', choices=1, expected_revision=None)
    assert first is not None and first["choices"] == 1
    assert await store.get_profile(a) == {"profile": '{"v": 1}', "choices": 1, "revision": first["revision"],
                                          "updated_at": pytest.approx(first["updated_at"])}
    assert await store.get_profile(b) is None  # B has none of A's
    # A writer that read an older revision (another process wrote meanwhile) writes nothing.
    second = await store.save_profile(a, '{"v": 2}', choices=2, expected_revision=first["revision"])
    assert second is not None and second["revision"] != first["revision"]
    assert await store.save_profile(a, '{"v": 3}', choices=3, expected_revision=first["revision"]) is None
    assert await store.save_profile(a, '{"v": 3}', choices=3, expected_revision=None) is None
    assert (await store.get_profile(a))["profile"] == '{"v": 2}'
    # An import replaces whatever is there.
    imported = await store.save_profile(a, '{"v": "imported"}', choices=7, expected_revision=None, replace=True)
    assert imported is not None and (await store.get_profile(a))["choices"] == 7
    # Reset: the profile and the comparisons go; a new profile gets a revision never used before.
    await store.add_comparison(a, "Q?", "one", "two", {}, keep=10)
    assert await store.delete_profile(a) is True
    assert await store.get_profile(a) is None and await store.recent_prompts(a, 10) == []
    assert await store.delete_profile(a) is False
    again = await store.save_profile(a, '{"v": 1}', choices=1, expected_revision=None)
    assert again is not None and again["revision"] not in {first["revision"], second["revision"],
                                                           imported["revision"]}


async def test_a_pick_names_a_stored_comparison_of_the_same_user_and_counts_once(store: Store) -> None:
    a = (await store.create_user("a" * 64, 10))["id"]
    b = (await store.create_user("b" * 64, 10))["id"]
    data = {"personas": ["concise", "informative"], "features": [[0.1, -0.2], [0.3, 0.4]], "complete": [True, False]}
    made = await store.add_comparison(a, "Why do cats purr?", "Answer one.", "Answer two.", data, keep=10)
    assert len(made["id"]) == 32
    stored = await store.comparison(a, made["id"])
    assert stored is not None and stored["data"] == data and stored["choice"] is None
    assert (stored["prompt"], stored["answer_a"], stored["answer_b"]) == ("Why do cats purr?", "Answer one.",
                                                                          "Answer two.")
    assert await store.comparison(b, made["id"]) is None  # another user's comparison is unknown to B
    # B cannot answer A's comparison, and nothing of B's profile is written by trying.
    assert await store.save_profile(b, "{}", choices=1, expected_revision=None, comparison_id=made["id"],
                                    choice="a") is None
    assert await store.get_profile(b) is None and (await store.comparison(a, made["id"]))["choice"] is None
    # A answers it once: the profile and the pick are written together.
    record = await store.save_profile(a, '{"p": 1}', choices=1, expected_revision=None, comparison_id=made["id"],
                                      choice="b")
    assert record is not None
    answered = await store.comparison(a, made["id"])
    assert answered["choice"] == "b" and answered["chosen_at"] is not None
    # A second pick of the same comparison writes nothing, not even the profile.
    assert await store.save_profile(a, '{"p": 2}', choices=2, expected_revision=record["revision"],
                                    comparison_id=made["id"], choice="a") is None
    assert (await store.get_profile(a))["profile"] == '{"p": 1}'
    assert (await store.comparison(a, made["id"]))["choice"] == "b"


async def test_comparisons_are_bounded_per_user_and_hostile_ids_are_plain_values(store: Store) -> None:
    a = (await store.create_user("a" * 64, 10))["id"]
    b = (await store.create_user("b" * 64, 10))["id"]
    made = [await store.add_comparison(a, f"Q{i}", "x", "y", {}, keep=3) for i in range(5)]
    await store.add_comparison(b, "B's", "x", "y", {}, keep=3)
    assert await store.recent_prompts(a, 10) == ["Q4", "Q3", "Q2"]  # only the newest three are kept
    assert await store.comparison(a, made[0]["id"]) is None and await store.comparison(a, made[4]["id"])
    assert await store.recent_prompts(b, 10) == ["B's"]  # another user's are their own
    for hostile in HOSTILE:
        assert await store.comparison(a, hostile) is None
        assert await store.comparison(hostile, made[4]["id"]) is None
        assert await store.get_profile(hostile) is None
        assert await store.delete_profile(hostile) is False
        assert await store.save_profile(a, "{}", choices=1, expected_revision=None, comparison_id=hostile,
                                        choice="a") is None
    weird = "x'); DROP TABLE profiles; --"
    record = await store.save_profile(a, weird, choices=1, expected_revision=None)
    assert record is not None and (await store.get_profile(a))["profile"] == weird
    assert len(await store.recent_prompts(a, 10)) == 3


async def test_a_profile_written_through_one_pool_is_read_through_another(backend: Any) -> None:
    first, second = backend(), backend()  # two app processes on one database
    try:
        a = (await first.create_user("a" * 64, 10))["id"]
        made = await first.add_comparison(a, "Q?", "one", "two", {"k": 1}, keep=10)
        assert (await second.comparison(a, made["id"]))["data"] == {"k": 1}
        record = await second.save_profile(a, '{"p": 1}', choices=1, expected_revision=None,
                                           comparison_id=made["id"], choice="none")
        assert (await first.get_profile(a))["revision"] == record["revision"]
        # Both try to write on top of the same revision at once: exactly one succeeds.
        results = await asyncio.gather(*(s.save_profile(a, f'{{"by": {i}}}', choices=2,
                                                        expected_revision=record["revision"])
                                         for i, s in enumerate([first, second] * 4)))
        assert sum(r is not None for r in results) == 1
    finally:
        first.close()
        second.close()
