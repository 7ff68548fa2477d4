"""The chat app's accounts: every /api/ endpoint x {no token, bad token, another user's id}.

``POST /api/users`` makes an account and shows its token once; the database keeps only the token's SHA-256.
Every other /api/ endpoint answers 401 without a valid ``Authorization: Bearer`` token, and acts on the caller's
own data only: another user's conversation or generation answers 404, exactly like an id that does not exist,
and changes nothing. In-process (httpx's ASGI transport); one short real answer gives user A a generation.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.chat_app import (
    BAD_TOKENS,
    PERSONAS,
    TEST_HOST,
    bad_token_headers,
    parse_sse,
    reset_admission_queue,
    server_module,
    sign_up_two,
)

pytestmark = pytest.mark.embedded

# (method, path template, body): {s} is a conversation id, {g} a generation id.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/personas", None),
    ("GET", "/api/config", None),
    ("GET", "/api/stats", None),
    ("POST", "/api/sessions", None),
    ("GET", "/api/sessions", None),
    ("GET", "/api/sessions/{s}", None),
    ("DELETE", "/api/sessions/{s}", None),
    ("POST", "/api/sessions/{s}/messages", {"content": "Hi", "personas": PERSONAS, "max_tokens": 2}),
    ("GET", "/api/generations/{g}", None),
]
WITH_IDS = [e for e in ENDPOINTS if "{" in e[1]]


class World:
    """Users A and B; A has a conversation with one answer (and so a generation)."""

    def __init__(self, app: Any, db: Path) -> None:
        self.app = app
        self.db = db
        self.a: dict[str, str] = {}
        self.b: dict[str, str] = {}
        self.token_a = ""
        self.session = ""
        self.generation = ""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=f"http://{TEST_HOST}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = server_module()
    db = tmp_path_factory.mktemp("auth") / "chat.db"
    app = server.create_app(server.Settings(db_path=db, max_tokens=4, temperature=0.0, preload=False,
                                            allowed_hosts=(TEST_HOST,)))
    yield World(app, db)
    app.state.service.store.close()
    reset_admission_queue()


@pytest.fixture
async def ready(world: World) -> World:
    if world.session:
        return world
    async with world.client() as c:
        world.token_a, world.a, world.b = await sign_up_two(c)
        world.session = (await c.post("/api/sessions", headers=world.a)).json()["id"]
        events = parse_sse((await c.post(f"/api/sessions/{world.session}/messages", headers=world.a,
                                         json={"content": "Hi", "personas": PERSONAS, "max_tokens": 2})).text)
        assert events[-1][0] == "done", events
        world.generation = events[-1][1]["generation_id"]
    return world


def _url(path: str, world: World, session: str | None = None, generation: str | None = None) -> str:
    return path.format(s=session or world.session, g=generation or world.generation)


async def _a_state(c: httpx.AsyncClient, world: World) -> Any:
    """Everything user A can see, to compare before and after B's attempts."""
    return (
        (await c.get(f"/api/sessions/{world.session}", headers=world.a)).json(),
        [s["id"] for s in (await c.get("/api/sessions", headers=world.a)).json()],
        (await c.get(f"/api/generations/{world.generation}", headers=world.a)).json()["state"],
    )


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
@pytest.mark.parametrize("bad", list(BAD_TOKENS))
async def test_no_or_bad_token_is_401_and_changes_nothing(ready: World, method: str, path: str,
                                                          body: dict[str, Any] | None, bad: str) -> None:
    world = ready
    async with world.client() as c:
        before = await _a_state(c, world)
        response = await c.request(method, _url(path, world), json=body, headers=bad_token_headers(bad, world.token_a))
        assert response.status_code == 401, (bad, response.status_code, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in response.json()["detail"]
        assert await _a_state(c, world) == before


@pytest.mark.parametrize(("method", "path", "body"), WITH_IDS, ids=[f"{m} {p}" for m, p, _ in WITH_IDS])
async def test_another_users_id_is_404_like_an_unknown_one(ready: World, method: str, path: str,
                                                           body: dict[str, Any] | None) -> None:
    world = ready
    async with world.client() as c:
        before = await _a_state(c, world)
        theirs = await c.request(method, _url(path, world), json=body, headers=world.b)
        unknown = await c.request(method, _url(path, world, "0" * 32, "0" * 32), json=body, headers=world.b)
        assert theirs.status_code == 404, theirs.text
        assert (theirs.status_code, theirs.json()) == (unknown.status_code, unknown.json())  # indistinguishable
        assert world.session not in theirs.text and world.generation not in theirs.text
        assert await _a_state(c, world) == before
        # A still reaches its own.
        mine = await c.request("GET", _url(path, world) if method == "GET" else f"/api/sessions/{world.session}",
                               headers=world.a)
        assert mine.status_code == 200


async def test_lists_and_stats_hold_only_the_callers_data(ready: World) -> None:
    world = ready
    async with world.client() as c:
        assert world.session in [s["id"] for s in (await c.get("/api/sessions", headers=world.a)).json()]
        theirs = await c.post("/api/sessions", headers=world.b)
        listed_b = (await c.get("/api/sessions", headers=world.b)).json()
        assert [s["id"] for s in listed_b] == [theirs.json()["id"]]
        assert world.session not in [s["id"] for s in (await c.get("/api/sessions?limit=500", headers=world.b)).json()]
        config_a = (await c.get("/api/config", headers=world.a)).json()
        config_b = (await c.get("/api/config", headers=world.b)).json()
        assert config_a["user_id"] != config_b["user_id"]
        stats = (await c.get("/api/stats", headers=world.b)).json()
        assert stats["yours"]["in_flight"] == 0
        assert world.session not in str(stats) and world.generation not in str(stats)


async def test_the_token_is_shown_once_and_stored_only_as_its_hash(ready: World) -> None:
    world = ready
    async with world.client() as c:
        made = await c.post("/api/users")
        assert made.status_code == 201
        token = made.json()["token"]
        assert len(token) >= 43  # 32 random bytes, URL-safe base64
        # Nothing gives it back later.
        for path in ("/api/config", "/api/stats", "/api/sessions"):
            assert token not in (await c.get(path, headers={"Authorization": f"Bearer {token}"})).text
    with sqlite3.connect(world.db) as db:
        rows = db.execute("SELECT token_hash FROM users").fetchall()
    hashes = {r[0] for r in rows}
    assert hashlib.sha256(token.encode()).hexdigest() in hashes
    assert hashlib.sha256(world.token_a.encode()).hexdigest() in hashes
    raw = b"".join(Path(f"{world.db}{suffix}").read_bytes() for suffix in ("", "-wal")
                   if Path(f"{world.db}{suffix}").exists())
    assert token.encode() not in raw and world.token_a.encode() not in raw


async def test_health_and_sign_up_need_no_token(ready: World) -> None:
    world = ready
    async with world.client() as c:
        assert (await c.get("/healthz")).json() == {"ok": True}
        assert (await c.post("/api/users")).status_code == 201
        assert (await c.get("/")).status_code == 200  # the page signs up by itself


async def test_accounts_are_capped(tmp_path: Path) -> None:
    server = server_module()
    app = server.create_app(server.Settings(db_path=tmp_path / "chat.db", preload=False, max_users=2,
                                            allowed_hosts=(TEST_HOST,)))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}") as c:
            assert [(await c.post("/api/users")).status_code for _ in range(2)] == [201, 201]
            refused = await c.post("/api/users")
            assert refused.status_code == 403 and "CHAT_MAX_USERS=2" in refused.json()["detail"]
    finally:
        app.state.service.store.close()
        reset_admission_queue()
