"""The chat app under abuse (issue 27): what one hostile account must not be able to do to the others.

In-process (httpx's ASGI transport), as the other chat app tests:

- a message over the token cap (CHAT_MAX_MESSAGE_TOKENS) is refused with 422 and nothing is stored;
- every hostile value in an uploaded profile is refused with 422 naming the field, and nothing is imported;
- a deeply nested upload is refused at once;
- a second import by the same account while one is being read is refused with 429 (imports have their own
  executor, never the decoding threads);
- /api/config names a local model file by its last part, never the server's path;
- 50 sign-ups in a row from one address: all but the burst refused with 429, another address unaffected.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import HTTPException

from tests.helpers.chat_app import TEST_HOST, reset_admission_queue, server_module

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = server_module()
    settings = server.Settings(db_path=tmp_path_factory.mktemp("abuse") / "chat.db", max_tokens=4, temperature=0.0,
                               preload=False, allowed_hosts=(TEST_HOST,), max_message_tokens=50)
    application = server.create_app(settings)
    yield application
    application.state.service.profiles.close()
    application.state.service.store.close()
    reset_admission_queue()


def _client(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}",
                             headers=headers, timeout=120)


async def _account(app: Any) -> str:
    async with _client(app) as c:
        return (await c.post("/api/users")).json()["token"]


def _profile() -> dict[str, Any]:
    from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile, resolve_basis

    basis = resolve_basis(None)
    profile = PreferenceProfile(basis, [0.1] * len(basis), ModelIdentity(None, "m", "f"),
                                evidence={"comparisons": 2})
    return profile.to_dict()


async def test_a_message_over_the_token_cap_is_422_and_nothing_is_stored(app: Any) -> None:
    token = await _account(app)
    async with _client(app, token) as c:
        session = (await c.post("/api/sessions")).json()["id"]
        long = " ".join(["rain"] * 200)  # 200 words: far over 50 tokens, well under the character cap
        response = await c.post(f"/api/sessions/{session}/messages", json={"content": long})
        assert response.status_code == 422, response.text
        assert "CHAT_MAX_MESSAGE_TOKENS=50" in response.json()["detail"]
        assert (await c.get(f"/api/sessions/{session}")).json()["messages"] == []


HOSTILE = [
    ("basis.personas.0.weight", 10**400, "weight"),
    ("basis.personas.0.weight", 1e308, "weight"),
    ("evidence.comparisons", "many", "evidence.comparisons"),
    ("evidence.l2", float("nan"), "evidence.l2"),
    ("evidence.junk", 1, "unknown key"),
    ("description", "banana", "description"),
    ("poles", 10**9, "poles"),
]


@pytest.mark.parametrize(("path", "value", "named"), HOSTILE, ids=[f"{p}={v!r}"[:40] for p, v, _ in HOSTILE])
async def test_each_hostile_profile_value_is_422_naming_the_field(app: Any, path: str, value: Any,
                                                                  named: str) -> None:
    data = copy.deepcopy(_profile())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node[part]
    node[last] = value
    token = await _account(app)
    async with _client(app, token) as c:
        response = await c.put("/api/profile/import", content=yaml.safe_dump(data).encode())
        assert response.status_code == 422, response.text
        assert named in response.json()["detail"]
        assert (await c.get("/api/profile")).json()["exists"] is False


async def test_a_nested_upload_is_refused_at_once(app: Any) -> None:
    token = await _account(app)
    body = ("format: persona-judge-profile\nbasis: " + "[" * 100_000 + "]" * 100_000).encode()
    async with _client(app, token) as c:
        began = time.perf_counter()
        response = await c.put("/api/profile/import", content=body)
        assert response.status_code == 422 and "nested" in response.json()["detail"]
        assert time.perf_counter() - began < 1.0  # the check itself: well under 0.1 s (test_profile_files.py)


async def test_a_second_import_while_one_is_read_is_429(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = app.state.service.profiles
    reading, release = threading.Event(), threading.Event()

    def slow_read(raw: bytes) -> Any:
        if raw != b"slow":
            raise HTTPException(422, "read at once")
        reading.set()
        release.wait(10)
        raise HTTPException(422, "never imported")

    monkeypatch.setattr(profiles, "_read_upload", slow_read)
    token = await _account(app)
    async with _client(app, token) as c:
        first = asyncio.create_task(c.put("/api/profile/import", content=b"slow"))
        while not reading.is_set():
            await asyncio.sleep(0.01)
        second = await c.put("/api/profile/import", content=b"x: 1")
        assert second.status_code == 429
        other = await _account(app)  # another account is not held up by it
        async with _client(app, other) as d:
            assert (await d.put("/api/profile/import", content=b"x: 1")).json()["detail"] == "read at once"
        reading_thread = [t.name for t in threading.enumerate() if t.name.startswith("profile-import")]
        assert reading_thread, "the upload is read on the imports' own executor"
        release.set()
        assert (await first).json()["detail"] == "never imported"
    assert profiles._importing == {}


async def test_the_config_never_shows_the_model_files_path(tmp_path: Path) -> None:
    server = server_module()
    secret = tmp_path / "private" / "weights" / "model.gguf"
    settings = server.Settings(db_path=tmp_path / "chat.db", preload=False, allowed_hosts=(TEST_HOST,),
                               model=str(secret))
    application = server.create_app(settings)
    try:
        token = await _account(application)
        async with _client(application, token) as c:
            config = (await c.get("/api/config")).json()
        assert config["model"] == "model.gguf" and "private" not in str(config)
    finally:
        application.state.service.profiles.close()
        application.state.service.store.close()


async def test_a_burst_of_sign_ups_from_one_address_is_mostly_refused(tmp_path: Path) -> None:
    server = server_module()
    settings = server.Settings(db_path=tmp_path / "chat.db", preload=False, allowed_hosts=(TEST_HOST,),
                               signups_per_minute=30)
    application = server.create_app(settings)

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=application, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}")

    try:
        async with client("203.0.113.7") as c:
            began = time.monotonic()
            statuses = [(await c.post("/api/users")).status_code for _ in range(50)]
            refill = (time.monotonic() - began) * 30 / 60  # sign-ups earned back meanwhile (30 a minute)
            refused = await c.post("/api/users")
        assert server.SIGNUP_BURST <= statuses.count(201) <= server.SIGNUP_BURST + int(refill) + 1
        assert statuses.count(429) == 50 - statuses.count(201) and statuses.count(429) > 25  # mostly refused
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        async with client("198.51.100.9") as other:  # another address is not held up
            assert (await other.post("/api/users")).status_code == 201
    finally:
        application.state.service.profiles.close()
        application.state.service.store.close()


def test_the_rate_limiter_refills_and_forgets_old_keys() -> None:
    from examples.chat_app.ratelimit import RateLimiter

    now = [0.0]
    limiter = RateLimiter(60, 2, max_keys=2, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)  # one a second: the next in 1 s
    now[0] += 1.0
    assert limiter.take("a") == 0.0
    limiter.take("b")
    limiter.take("c")  # a third key: "a", the least recently seen, is forgotten
    assert limiter.take("a") == 0.0 and limiter.take("a") == 0.0


def test_half_open_connections_are_closed_and_healthz_keeps_answering(tmp_path: Path) -> None:
    """300 sockets that stop mid-header (as a slowloris client): /healthz answers meanwhile, and the server closes
    each of them once CHAT_HEADER_TIMEOUT has passed."""
    import socket

    from tests.helpers.chat_app import LiveServer

    live = LiveServer(tmp_path / "chat.db", CHAT_PRELOAD="0", CHAT_HEADER_TIMEOUT="1")
    live.start()
    sockets: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
            sockets.append(s)
        with httpx.Client(base_url=live.url, timeout=5) as c:
            assert c.get("/healthz").status_code == 200
            time.sleep(2.5)
            closed = 0
            for s in sockets:
                s.settimeout(0.2)
                try:
                    closed += s.recv(1024) == b""
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:  # still open
                    pass
            assert closed == len(sockets)
            assert c.get("/healthz").status_code == 200  # the keep-alive client itself was not cut off
    finally:
        for s in sockets:
            s.close()
        live.stop()
