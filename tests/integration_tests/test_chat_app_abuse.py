"""The chat app under abuse (issue 27): one table of hostile probes, each with the behaviour it must now meet.

``PROBES`` is the table: a probe (what a hostile visitor does) → the expected behaviour, checked by its
function. Most run in-process (httpx's ASGI transport); the two that need real sockets run the server as
``make chat`` does (``python -m examples.chat_app.server`` under uvicorn, on loopback):

- the flood: one account floods profile imports and long prompts; another user's first streamed token comes
  within FIRST_TOKEN_S (measured at the client, from sending the message to its first ``token`` event) of the
  time the same message takes alone, just before (on a shared machine, its own slowness is not the flood's).
  Measured at load average ~10.5 on 2 cores: 1.28-1.41 s flooded, 0.87-0.99 s alone; with the per-user slot
  cap removed (planted), 59 s;
- half-open sockets: HALF_OPEN sockets that send part of a request header and stall, against a server whose
  open-files limit is 1024 (soft and hard: raising it is impossible), so the server's cap on connections (below
  the limit, evicting the connection that has waited longest for its headers) is what keeps ``/healthz``
  answering; the stalled ones are closed after CHAT_HEADER_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import copy
import os
import resource
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import HTTPException

from tests.helpers.chat_app import TEST_HOST, LiveServer, reset_admission_queue, server_module

pytestmark = pytest.mark.embedded

FIRST_TOKEN_S = 2.0
NESTED_S = 0.1
HALF_OPEN = 1100
OPEN_FILES = 1024
DAY = 86400.0
NESTED = ("format: persona-judge-profile\nbasis: " + "[" * 100_000 + "]" * 100_000).encode()  # 200 KB


class Lab:
    """What the probes share: the in-process app (module-wide), apps with other settings, real servers."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._apps: list[Any] = []
        self.app = self.new_app(max_tokens=4, temperature=0.0, max_message_tokens=50)

    def new_app(self, **settings: Any) -> Any:
        server = server_module()
        base = {"db_path": Path(self.tmp) / f"chat{len(self._apps)}.db", "preload": False,
                "allowed_hosts": (TEST_HOST,)}
        application = server.create_app(server.Settings(**{**base, **settings}))
        self._apps.append(application)
        return application

    def client(self, token: str | None = None, *, app: Any = None, address: str = "127.0.0.1") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app or self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}", headers=headers, timeout=120)

    async def account(self, app: Any = None) -> str:
        async with self.client(app=app) as c:
            response = await c.post("/api/users")
            assert response.status_code == 201, response.text
            return response.json()["token"]

    def close(self) -> None:
        for application in self._apps:
            application.state.service.profiles.close()
            application.state.service.store.close()
        reset_admission_queue()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    made = Lab(tmp_path_factory.mktemp("abuse"))
    yield made
    made.close()


@dataclass(frozen=True)
class Probe:
    probe: str
    expected: str
    run: Callable[[Lab], Awaitable[None]]


# -- the probes -----------------------------------------------------------------------------------------------


async def message_over_the_token_cap(lab: Lab) -> None:
    token = await lab.account()
    async with lab.client(token) as c:
        session = (await c.post("/api/sessions")).json()["id"]
        long = " ".join(["rain"] * 200)  # 200 words: far over 50 tokens, well under the character cap
        response = await c.post(f"/api/sessions/{session}/messages", json={"content": long})
        assert response.status_code == 422, response.text
        assert "CHAT_MAX_MESSAGE_TOKENS=50" in response.json()["detail"]
        assert (await c.get(f"/api/sessions/{session}")).json()["messages"] == []


def _profile() -> dict[str, Any]:
    from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile, resolve_basis

    basis = resolve_basis(None)
    profile = PreferenceProfile(basis, [0.1] * len(basis), ModelIdentity(None, "m", "f"),
                                evidence={"comparisons": 2})
    return profile.to_dict()


def hostile_profile_value(path: str, value: Any, named: str) -> Callable[[Lab], Awaitable[None]]:
    async def run(lab: Lab) -> None:
        data = copy.deepcopy(_profile())
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parents:
            node = node[part]
        node[last] = value
        token = await lab.account()
        async with lab.client(token) as c:
            response = await c.put("/api/profile/import", content=yaml.safe_dump(data).encode())
            assert response.status_code == 422, response.text
            assert named in response.json()["detail"]
            assert (await c.get("/api/profile")).json()["exists"] is False

    return run


async def nested_import(lab: Lab) -> None:
    token = await lab.account()
    async with lab.client(token) as c:
        assert (await c.get("/api/profile")).status_code == 200  # the account is warm: time the import alone
        took = []
        for _ in range(3):  # the best of three: a busy machine's pause is not the check's cost
            began = time.perf_counter()
            response = await c.put("/api/profile/import", content=NESTED)
            took.append(time.perf_counter() - began)
            assert response.status_code == 422 and "nested" in response.json()["detail"], response.text
        assert min(took) < NESTED_S, f"the nested upload took {min(took):.3f} s to refuse"


async def second_import_while_one_is_read(lab: Lab) -> None:
    profiles = lab.app.state.service.profiles
    reading, release = threading.Event(), threading.Event()

    def slow_read(raw: bytes) -> Any:
        if raw != b"slow":
            raise HTTPException(422, "read at once")
        reading.set()
        release.wait(10)
        raise HTTPException(422, "never imported")

    token = await lab.account()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profiles, "_read_upload", slow_read)
        async with lab.client(token) as c:
            first = asyncio.create_task(c.put("/api/profile/import", content=b"slow"))
            while not reading.is_set():
                await asyncio.sleep(0.01)
            second = await c.put("/api/profile/import", content=b"x: 1")
            assert second.status_code == 429
            other = await lab.account()  # another account is not held up by it
            async with lab.client(other) as d:
                assert (await d.put("/api/profile/import", content=b"x: 1")).json()["detail"] == "read at once"
            reading_thread = [t.name for t in threading.enumerate() if t.name.startswith("profile-import")]
            assert reading_thread, "the upload is read on the imports' own executor"
            release.set()
            assert (await first).json()["detail"] == "never imported"
    assert profiles._importing == {}


async def config_path(lab: Lab) -> None:
    secret = Path(lab.tmp) / "private" / "weights" / "model.gguf"
    application = lab.new_app(model=str(secret))
    token = await lab.account(application)
    async with lab.client(token, app=application) as c:
        config = (await c.get("/api/config")).json()
    assert config["model"] == "model.gguf" and "private" not in str(config)


async def sign_ups_at_50_a_second(lab: Lab) -> None:
    server = server_module()
    application = lab.new_app(signups_per_minute=30)  # the server's default (CHAT_SIGNUPS_PER_MINUTE)
    async with lab.client(app=application, address="203.0.113.7") as c:
        began = time.monotonic()
        statuses = []
        for i in range(50):  # one every 20 ms: 50 a second
            await asyncio.sleep(max(0.0, began + i * 0.02 - time.monotonic()))
            statuses.append((await c.post("/api/users")).status_code)
        refill = (time.monotonic() - began) * 30 / 60  # sign-ups earned back meanwhile (30 a minute)
        refused = await c.post("/api/users")
    assert server.SIGNUP_BURST <= statuses.count(201) <= server.SIGNUP_BURST + int(refill) + 1
    assert statuses.count(429) == 50 - statuses.count(201) and statuses.count(429) > 25  # mostly refused
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    async with lab.client(app=application, address="198.51.100.9") as other:  # another address is not held up
        assert (await other.post("/api/users")).status_code == 201


async def abandoned_accounts_fill_the_cap(lab: Lab) -> None:
    application = lab.new_app(max_users=3, account_idle_days=30)
    service = application.state.service
    kept, used, abandoned = [await lab.account(application) for _ in range(3)]
    async with lab.client(kept, app=application) as c:
        assert (await c.post("/api/sessions")).status_code == 201  # an account holding a conversation
    async with lab.client(app=application) as c:
        assert (await c.post("/api/users")).status_code == 403  # the cap: every later visitor refused
    real = time.time
    service.clock = lambda: real() + 29 * DAY  # 29 days on: nothing expires yet
    async with lab.client(app=application) as c:
        assert (await c.post("/api/users")).status_code == 403
    async with lab.client(used, app=application) as c:  # used on day 29: the clock of its idleness restarts
        assert (await c.get("/api/sessions")).status_code == 200
    service.clock = lambda: real() + 31 * DAY  # 31 days on: the one abandoned empty account has expired
    async with lab.client(app=application) as c:
        assert (await c.post("/api/users")).status_code == 201  # the cap reached: swept, then the new account
    for token, status in ((kept, 200), (used, 200), (abandoned, 401)):
        async with lab.client(token, app=application) as c:
            assert (await c.get("/api/sessions")).status_code == status


async def flood_of_imports_and_long_prompts(lab: Lab) -> None:
    live = LiveServer(Path(lab.tmp) / "flood.db", CHAT_TEMPERATURE="0", CHAT_MAX_TOKENS="8")
    await asyncio.to_thread(live.start)  # loads the model first (CHAT_PRELOAD): its first answer is warm
    try:
        await _flood(live)
    finally:
        await asyncio.to_thread(live.stop)


async def _flood(live: LiveServer) -> None:
    flooder, victim = live.new_user(), live.new_user()
    sent: dict[str, float] = {}
    first_token: dict[str, float] = {}
    ended: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=live.url, timeout=120) as c:

        async def answer(key: str, headers: dict[str, str], content: str, **extra: Any) -> int:
            session = (await c.post("/api/sessions", headers=headers)).json()["id"]
            sent[key] = time.monotonic()
            async with c.stream("POST", f"/api/sessions/{session}/messages", headers=headers,
                                json={"content": content, **extra}) as response:
                if response.status_code == 200:
                    async for line in response.aiter_lines():
                        if line == "event: token":
                            first_token.setdefault(key, time.monotonic())
                ended[key] = time.monotonic()
                return response.status_code

        assert await answer("alone", victim, "Why is the sky blue?") == 200  # the same, with no flood: a baseline
        long = " ".join(["rain"] * 900)  # under the default cap of 1024 tokens: a prefill of seconds
        floods = [asyncio.create_task(answer(f"long{i}", flooder, long, max_tokens=400)) for i in range(2)]
        imports = [asyncio.create_task(c.put("/api/profile/import", headers=flooder, content=NESTED))
                   for _ in range(30)]
        deadline = time.monotonic() + 30
        while True:  # the flood is on: one long prompt holds a slot, the other waits for its turn
            stats = (await c.get("/api/stats", headers=flooder)).json()
            if stats["yours"]["in_flight"] == 2 and (stats["admission"] or {}).get("running", 0) >= 1:
                break
            assert time.monotonic() < deadline and not {"long0", "long1"} & ended.keys(), f"no flood: {stats}"
            await asyncio.sleep(0.1)
        assert await answer("third", flooder, long, max_tokens=400) == 429  # CHAT_MAX_IN_FLIGHT
        assert await answer("victim", victim, "Why is the sky blue?") == 200
        statuses = {r.status_code for r in await asyncio.gather(*imports)}
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
    latency = first_token["victim"] - sent["victim"]
    alone = first_token["alone"] - sent["alone"]
    print(f"\nflood: the other user's first token after {latency:.2f} s (alone, just before: {alone:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    assert statuses <= {422, 429}, statuses
    # Within FIRST_TOKEN_S of the same message alone just before (a fraction of a second on a quiet machine; on a
    # shared one, what the machine itself adds is not the flood's doing).
    assert latency < FIRST_TOKEN_S + alone, f"the other user's first token took {latency:.2f} s ({alone:.2f} alone)"
    assert all(ended.get(f"long{i}", float("inf")) > first_token["victim"] for i in range(2)), \
        "a flooder's long answer ended before the other user's first token: the flood was over"


def _open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


async def half_open_sockets(lab: Lab) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HALF_OPEN + 200:
        if hard != resource.RLIM_INFINITY and hard < HALF_OPEN + 200:
            pytest.skip(f"this test opens {HALF_OPEN} sockets; the open-files limit here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HALF_OPEN + 200, hard))
    live = LiveServer(Path(lab.tmp) / "sockets.db", CHAT_PRELOAD="0", CHAT_HEADER_TIMEOUT="3")
    live.preexec = _open_files_limit  # the usual limit, and no raising it: the server must cap its connections
    await asyncio.to_thread(live.start)
    try:
        await asyncio.to_thread(_half_open, live)
    finally:
        await asyncio.to_thread(live.stop)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _half_open(live: LiveServer) -> None:
    assert live.proc is not None
    sockets: list[socket.socket] = []
    try:
        for _ in range(HALF_OPEN):
            s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
            sockets.append(s)
        with httpx.Client(base_url=live.url, timeout=10) as c:
            began = time.monotonic()
            assert c.get("/healthz").status_code == 200
            took = time.monotonic() - began
            assert took < FIRST_TOKEN_S, f"/healthz took {took:.2f} s under {HALF_OPEN} half-open sockets"
            server_fds = len(os.listdir(f"/proc/{live.proc.pid}/fd"))
            assert server_fds < OPEN_FILES
            time.sleep(3.5)  # CHAT_HEADER_TIMEOUT has passed: every stalled socket is closed
            closed = sum(_closed(s) for s in sockets)
            assert closed == len(sockets)
            assert c.get("/healthz").status_code == 200  # the keep-alive client itself was not cut off
        print(f"\nhalf-open: /healthz answered in {took:.3f} s with {HALF_OPEN} stalled sockets; the server held "
              f"{server_fds} file descriptors (limit {OPEN_FILES})")
    finally:
        for s in sockets:
            s.close()


def _closed(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:  # still open
        return False


# -- the table ------------------------------------------------------------------------------------------------

HOSTILE = [
    ("basis.personas.0.weight", 10**400, "weight"),
    ("basis.personas.0.weight", 1e308, "weight"),
    ("evidence.comparisons", "many", "evidence.comparisons"),
    ("evidence.l2", float("nan"), "evidence.l2"),
    ("evidence.junk", 1, "unknown key"),
    ("description", "banana", "description"),
    ("poles", 10**9, "poles"),
]

PROBES = [
    Probe(f"profile import with {path}={value!r}"[:60], f"422 naming {named!r}, nothing imported",
          hostile_profile_value(path, value, named))
    for path, value, named in HOSTILE
] + [
    Probe("profile import of 200 KB of nested [[[...]]]", f"422 'nested', refused in under {NESTED_S} s",
          nested_import),
    Probe("a second import by one account while its first is read", "429; another account's import goes on; "
          "read on the imports' own executor", second_import_while_one_is_read),
    Probe("a message within the character cap, over the token cap", "422 naming CHAT_MAX_MESSAGE_TOKENS, "
          "nothing stored", message_over_the_token_cap),
    Probe("one account floods imports (30 nested files) and long prompts (~900 tokens, 400-token answers)",
          f"its third answer 429; another user's first token within {FIRST_TOKEN_S} s while the flood decodes",
          flood_of_imports_and_long_prompts),
    Probe("50 sign-ups a second from one address", "all but the burst (and the refill) 429 with Retry-After; "
          "another address still signs up", sign_ups_at_50_a_second),
    Probe("abandoned sign-ups fill CHAT_MAX_USERS; 31 days pass (a fake clock)", "the idle empty account expires "
          "and a new visitor gets one; accounts with a conversation, or used lately, stay",
          abandoned_accounts_fill_the_cap),
    Probe(f"{HALF_OPEN} half-open sockets at a {OPEN_FILES}-file limit", f"/healthz answers within {FIRST_TOKEN_S} "
          "s; the server stays under the limit; every stalled socket closed after CHAT_HEADER_TIMEOUT",
          half_open_sockets),
    Probe("/api/config with a local model file", "the file's name only, never the server's path", config_path),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.probe for p in PROBES])
async def test_abuse(probe: Probe, lab: Lab) -> None:
    """Each probe of the table, against its expected behaviour (``probe.expected``)."""
    await probe.run(lab)


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
