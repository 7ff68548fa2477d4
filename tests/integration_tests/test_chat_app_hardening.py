"""The chat app's hardening, one probe each: what was found by sending it, kept as a test.

- a 20 MB body (no cap; the 422 echoed it whole: 11.7 s, and every other request stalled): 413 at once;
- validation errors name the field, never echo the input (a NaN in it even made a 500);
- any Host header was accepted (DNS rebinding): only the allowed hosts;
- security headers on the page (CSP by hash, no framing, nosniff);
- the admission queue is bounded, and a burst is refused with 429 before anything is stored;
- deleting a conversation cancels its running answer (the server's record of the generation says so);
- seed accepted 10**30, true and "7": a strict int in [0, 2**63);
- a free-text preference had no length cap; an unknown one-word one passed validation and failed after storing;
- error events and /api/stats exposed exception texts, paths, the pid and memory: generic messages, details logged;
- /docs and /openapi.json were served: off unless CHAT_DOCS=1;
- the database and its WAL files were world-readable in the source tree: 0600 files in a 0700 per-user folder.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.chat_app import (
    PERSONAS,
    TEST_HOST,
    parse_sse,
    reset_admission_queue,
    server_module,
)

pytestmark = pytest.mark.embedded


def _settings(tmp: Path, **overrides: Any) -> Any:
    server = server_module()
    values: dict[str, Any] = {"db_path": tmp / "chat.db", "max_tokens": 4, "max_tokens_cap": 400,
                              "temperature": 0.0, "preload": False, "allowed_hosts": (TEST_HOST,)}
    values.update(overrides)
    return server.Settings(**values)


class Probe:
    """An app and a signed-in in-process client."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.c = client
        self.service = app.state.service

    async def session(self) -> str:
        response = await self.c.post("/api/sessions")
        assert response.status_code == 201, response.text
        return response.json()["id"]

    async def stored(self, session: str) -> list[dict[str, Any]]:
        return (await self.c.get(f"/api/sessions/{session}")).json()["messages"]


@asynccontextmanager
async def _probe(settings: Any) -> AsyncIterator[Probe]:
    app = server_module().create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}",
                                     timeout=120) as c:
            token = (await c.post("/api/users")).json()["token"]
            c.headers["Authorization"] = f"Bearer {token}"
            yield Probe(app, c)
    finally:
        for task in list(app.state.service._tasks):
            task.cancel()
        app.state.service.store.close()
        reset_admission_queue()


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[Probe]:
    async with _probe(_settings(tmp_path)) as p:
        yield p


# -- request size and validation errors --------------------------------------------------------------------


async def test_a_20_mb_body_is_refused_at_once_with_413(probe: Probe) -> None:
    session = await probe.session()
    huge = json.dumps({"content": "x" * (20 * 2**20), "seed": "not a number"})
    started = time.monotonic()
    response, health = await asyncio.gather(
        probe.c.post(f"/api/sessions/{session}/messages", content=huge, headers={"Content-Type": "application/json"}),
        probe.c.get("/healthz"),
    )
    took = time.monotonic() - started
    assert response.status_code == 413 and "CHAT_MAX_BODY_BYTES" in response.json()["detail"]
    assert len(response.content) < 1000 and health.status_code == 200
    assert took < 3, f"refusing a 20 MB body took {took:.1f} s"
    assert await probe.stored(session) == []


async def test_a_body_without_content_length_is_capped_too(probe: Probe) -> None:
    session = await probe.session()

    async def chunks() -> AsyncIterator[bytes]:  # chunked transfer: no Content-Length to look at
        yield b'{"content": "'
        for _ in range(64):
            yield b"x" * 8192
        yield b'"}'

    response = await probe.c.post(f"/api/sessions/{session}/messages", content=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert await probe.stored(session) == []


async def test_a_message_over_the_size_limit_is_refused_clearly(tmp_path: Path) -> None:
    async with _probe(_settings(tmp_path, max_message_chars=100)) as p:
        session = await p.session()
        response = await p.c.post(f"/api/sessions/{session}/messages", json={"content": "x" * 101})
        assert response.status_code == 422
        assert "101 characters" in response.json()["detail"] and "CHAT_MAX_MESSAGE_CHARS" in response.json()["detail"]
        assert await p.stored(session) == []


async def test_validation_errors_do_not_echo_the_input(probe: Probe) -> None:
    session = await probe.session()
    secret = "SENTINEL-" + "y" * 5000
    response = await probe.c.post(f"/api/sessions/{session}/messages",
                                  json={"content": secret, "seed": secret, "temperature": secret})
    assert response.status_code == 422
    assert "SENTINEL" not in response.text and len(response.content) < 1000
    errors = response.json()["detail"]
    assert {tuple(e["loc"]) for e in errors} == {("body", "seed"), ("body", "temperature")}
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


@pytest.mark.parametrize("raw", ['{"content": "Hi", "temperature": NaN}', '{"content": "Hi", "temperature": Infinity}',
                                 '{"content": "Hi", "guidance": -Infinity}', '{"content": "Hi", "guidance": NaN}'])
async def test_non_finite_numbers_are_422_not_500(probe: Probe, raw: str) -> None:
    session = await probe.session()
    response = await probe.c.post(f"/api/sessions/{session}/messages", content=raw,
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert await probe.stored(session) == []


@pytest.mark.parametrize("field", ["content", "personas", "preferences"])
async def test_a_nul_character_is_refused_before_storing(probe: Probe, field: str) -> None:
    # PostgreSQL's text cannot hold one: accepted, it would fail there after the request was taken.
    session = await probe.session()
    body: dict[str, Any] = {"content": "Hi", field: "Hi\x00there" if field == "content" else ["Be\x00kind."]}
    response = await probe.c.post(f"/api/sessions/{session}/messages", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", field]
    assert await probe.stored(session) == []


# -- seeds and preferences -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [10**30, 2**63, -1, True, False, "7", 7.0, 1.5, [7], {"seed": 7}])
async def test_seed_must_be_a_strict_int_in_torchs_range(probe: Probe, seed: Any) -> None:
    session = await probe.session()
    response = await probe.c.post(f"/api/sessions/{session}/messages", json={"content": "Hi", "seed": seed})
    assert response.status_code == 422, (seed, response.text)
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "seed"]]
    assert await probe.stored(session) == []


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
async def test_seeds_at_the_ends_of_the_range_are_accepted(probe: Probe, seed: int) -> None:
    session = await probe.session()
    response = await probe.c.post(f"/api/sessions/{session}/messages",
                                  json={"content": "Hi", "seed": seed, "temperature": 0.7, "max_tokens": 1})
    assert response.status_code == 200 and parse_sse(response.text)[-1][0] == "done", response.text


async def test_a_free_text_preference_is_capped_at_500_characters(probe: Probe) -> None:
    session = await probe.session()
    url = f"/api/sessions/{session}/messages"
    too_long = await probe.c.post(url, json={"content": "Hi", "preferences": ["Be kind. " + "x" * 492]})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["body", "preferences", 0]
    # 500 passes that check (the unknown persona then stops it, before any decoding).
    at_cap = await probe.c.post(url, json={"content": "Hi", "personas": ["no-such-persona"],
                                           "preferences": ["Be kind. " + "x" * 491]})
    assert at_cap.status_code == 422 and "no-such-persona" in at_cap.json()["detail"]
    assert await probe.stored(session) == []


async def test_an_unknown_one_word_preference_is_refused_before_storing(probe: Probe) -> None:
    session = await probe.session()
    url = f"/api/sessions/{session}/messages"
    refused = await probe.c.post(url, json={"content": "Hi", "preferences": ["pirate"]})
    assert refused.status_code == 422 and "pirate" in refused.json()["detail"]
    assert await probe.stored(session) == []  # it used to be stored, then fail
    # A one-word preference that names a persona, and a sentence, are fine (checked up to the unknown persona).
    fine = await probe.c.post(url, json={"content": "Hi", "personas": ["no-such-persona"],
                                         "preferences": ["concise", "Talk like a pirate."]})
    assert fine.status_code == 422 and "no-such-persona" in fine.json()["detail"]


# -- hosts and headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "", "[::2]:8000", "chat.test.evil"])
async def test_a_foreign_host_header_is_refused(probe: Probe, host: str) -> None:
    for method, path in (("GET", "/"), ("GET", "/healthz"), ("POST", "/api/users"), ("GET", "/api/config")):
        response = await probe.c.request(method, path, headers={"Host": host})
        assert response.status_code == 400, (host, path, response.status_code)
        assert "token" not in response.text


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:8000", "[::1]", "[::1]:8000",
                                  "LOCALHOST", "localhost.", TEST_HOST])
async def test_the_allowed_hosts_are_answered(probe: Probe, host: str) -> None:
    assert (await probe.c.get("/healthz", headers={"Host": host})).status_code == 200


def test_chat_allowed_hosts_adds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    server = server_module()
    from examples.chat_app.security import allowed_hosts

    monkeypatch.setenv("CHAT_ALLOWED_HOSTS", "chat.example.org, 192.168.1.5:8000,[fe80::1]")
    settings = server.Settings.from_env()
    hosts = allowed_hosts(settings.allowed_hosts)
    assert {"localhost", "127.0.0.1", "[::1]", "chat.example.org", "192.168.1.5", "[fe80::1]"} == set(hosts)


async def test_the_page_has_security_headers_and_a_csp_by_hash(probe: Probe) -> None:
    page = await probe.c.get("/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert csp["connect-src"] == "'self'" and "unsafe-inline" not in page.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert csp["script-src"] == f"'sha256-{digest}'"
    # Under that policy inline handlers and style attributes would not run: the page has none.
    assert not re.search(r"\son[a-z]+\s*=", page.text) and 'style="' not in page.text
    # API answers carry the headers too, and are not cached.
    config = await probe.c.get("/api/config")
    assert config.headers["x-content-type-options"] == "nosniff" and config.headers["cache-control"] == "no-store"


async def test_docs_and_openapi_are_off_by_default(probe: Probe, tmp_path: Path) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await probe.c.get(path)).status_code == 404, path
    async with _probe(_settings(tmp_path / "docs", docs=True)) as p:
        assert (await p.c.get("/openapi.json")).status_code == 200
        assert (await p.c.get("/docs")).status_code == 200


def test_chat_docs_turns_them_on(monkeypatch: pytest.MonkeyPatch) -> None:
    server = server_module()
    monkeypatch.delenv("CHAT_DOCS", raising=False)
    assert server.Settings.from_env().docs is False
    monkeypatch.setenv("CHAT_DOCS", "1")
    assert server.Settings.from_env().docs is True


# -- errors and stats say nothing of the server's insides ----------------------------------------------------


async def test_error_events_are_generic_and_the_details_are_logged(
    probe: Probe, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "/home/someone/secret/model.bin exploded (pid 4242)"

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    from examples.chat_app.answers import AnswerRun

    monkeypatch.setattr(AnswerRun, "_decode", explode)
    session = await probe.session()
    with caplog.at_level(logging.ERROR, logger="examples.chat_app"):
        response = await probe.c.post(f"/api/sessions/{session}/messages", json={"content": "Hi"})
    events = parse_sse(response.text)
    name, data = events[-1]
    assert name == "error" and data["status"] == 500
    assert "secret" not in response.text and "RuntimeError" not in response.text and "4242" not in response.text
    assert "log" in data["message"]
    stored = await probe.stored(session)
    assert stored[-1]["status"] == "error" and "secret" not in json.dumps(stored)
    generation = (await probe.c.get(f"/api/generations/{data['generation_id']}")).json()
    assert generation["state"] == "error" and "secret" not in json.dumps(generation)
    assert secret in caplog.text  # the details are in the server's log


async def test_stats_expose_no_pid_memory_or_paths(probe: Probe) -> None:
    stats = (await probe.c.get("/api/stats")).json()
    text = json.dumps(stats)
    for key in ("pid", "rss_mb", "peak_rss_mb"):
        assert key not in stats
    assert str(os.getpid()) not in text and "/" not in text


# -- the queue and cancellation --------------------------------------------------------------------------------


async def test_a_burst_beyond_the_queue_is_refused_with_429_before_storing(tmp_path: Path) -> None:
    # One slot and one place to wait: of six messages sent at once, two are taken and four refused, and a refused
    # one leaves nothing behind (the library's queue had not seen any of them yet when they were all accepted).
    async with _probe(_settings(tmp_path, max_concurrent=1, max_queue=1, max_in_flight=10)) as p:
        sessions = [await p.session() for _ in range(6)]
        responses = await asyncio.gather(*(
            p.c.post(f"/api/sessions/{s}/messages", json={"content": "Hi", "personas": PERSONAS, "max_tokens": 2})
            for s in sessions
        ))
        codes = [r.status_code for r in responses]
        assert sorted(codes) == [200, 200, 429, 429, 429, 429], codes
        for session, response in zip(sessions, responses, strict=True):
            stored = await p.stored(session)
            if response.status_code == 429:
                assert stored == [] and response.headers["retry-after"]
                assert "MAX_QUEUE=1" in response.json()["detail"]
            else:
                assert parse_sse(response.text)[-1][0] == "done", response.text
                assert [m["role"] for m in stored] == ["user", "assistant"]
        stats = (await p.c.get("/api/stats")).json()
        assert stats["refused"] == 4 and stats["errors"] == 0 and stats["completed"] == 2


async def test_one_user_cannot_hold_more_than_max_in_flight(tmp_path: Path) -> None:
    async with _probe(_settings(tmp_path, max_in_flight=1)) as p:
        first, second = await p.session(), await p.session()
        busy = asyncio.create_task(p.c.post(f"/api/sessions/{first}/messages",
                                            json={"content": "Tell me a story.", "max_tokens": 6}))
        deadline = time.monotonic() + 60
        while not p.service.generations:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        refused = await p.c.post(f"/api/sessions/{second}/messages", json={"content": "Hi"})
        assert refused.status_code == 429 and "CHAT_MAX_IN_FLIGHT=1" in refused.json()["detail"]
        assert await p.stored(second) == []
        # Another user is not held back by this one's answer.
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=p.app), base_url=f"http://{TEST_HOST}")
        async with other:
            token = (await other.post("/api/users")).json()["token"]
            other.headers["Authorization"] = f"Bearer {token}"
            theirs = (await other.post("/api/sessions")).json()["id"]
            ok = await other.post(f"/api/sessions/{theirs}/messages", json={"content": "Hi", "max_tokens": 1})
            assert ok.status_code == 200
        assert parse_sse((await busy).text)[-1][0] == "done"


async def test_conversations_per_user_are_capped(tmp_path: Path) -> None:
    async with _probe(_settings(tmp_path, max_conversations=2)) as p:
        await p.session()
        doomed = await p.session()
        refused = await p.c.post("/api/sessions")
        assert refused.status_code == 409 and "CHAT_MAX_CONVERSATIONS" in refused.json()["detail"]
        assert (await p.c.delete(f"/api/sessions/{doomed}")).status_code == 200
        assert (await p.c.post("/api/sessions")).status_code == 201


async def test_deleting_a_conversation_cancels_its_running_answer(probe: Probe) -> None:
    session = await probe.session()
    answer = asyncio.create_task(probe.c.post(f"/api/sessions/{session}/messages",
                                              json={"content": "Tell me a very long story.", "max_tokens": 400}))
    deadline = time.monotonic() + 120
    gen = None
    while gen is None or gen.pieces < 1:  # the answer is being decoded
        assert time.monotonic() < deadline and not answer.done(), "the answer never started"
        gen = next(iter(probe.service.generations.values()), None)
        await asyncio.sleep(0.02)
    deleted = await probe.c.delete(f"/api/sessions/{session}")
    assert deleted.json() == {"deleted": True, "cancelled": 1}
    # The server's own record of the generation: cancelled for that reason, its decoding thread returned.
    while True:
        record = (await probe.c.get(f"/api/generations/{gen.id}")).json()
        if record["state"] != "running" and not record["worker_running"]:
            break
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)
    assert record["state"] == "cancelled" and record["cancel_reason"] == "conversation deleted", record
    assert record["pieces"] < 100, record
    events = parse_sse((await answer).text)
    assert events[-1][0] == "error" and events[-1][1]["status"] == 410
    stats = (await probe.c.get("/api/stats")).json()
    assert (stats["running"], stats["queued"], stats["decoding_threads"]) == (0, 0, 0), stats
    assert (await probe.c.get(f"/api/sessions/{session}")).status_code == 404
    with sqlite3.connect(probe.service.settings.db_path) as db:  # nothing was written after the deletion
        assert db.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session,)).fetchone()[0] == 0


# -- the database's files ----------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_database_is_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "new-folder" / "chat.db"
    async with _probe(_settings(tmp_path, db_path=db)) as p:
        await p.session()  # a write: the WAL and its index exist now
        files = sorted(db.parent.iterdir())
        assert [f.name for f in files] == ["chat.db", "chat.db-shm", "chat.db-wal"]
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert _mode(db.parent) == 0o700


def test_the_default_database_is_per_user_outside_the_source_tree(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    server = server_module()
    monkeypatch.delenv("CHAT_DB", raising=False)
    monkeypatch.delenv("CHAT_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = server.Settings.from_env()
    assert settings.db_path == tmp_path / "xdg" / "langchain-persona-judge" / "chat.db"
    assert settings.default_db
    monkeypatch.delenv("XDG_DATA_HOME")
    assert server.Settings.from_env().db_path == Path.home() / ".local/share/langchain-persona-judge/chat.db"
    root = Path(server.__file__).resolve().parents[2]
    assert root not in server.Settings.from_env().db_path.parents


def test_an_existing_default_folder_and_old_files_are_made_owner_only(tmp_path: Path) -> None:
    from examples.chat_app.storage import SQLiteStore

    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    old = folder / "chat.db"
    sqlite3.connect(old).close()
    os.chmod(old, 0o644)
    store = SQLiteStore(old, private_dir=True)
    try:
        assert _mode(folder) == 0o700 and _mode(old) == 0o600
    finally:
        store.close()
