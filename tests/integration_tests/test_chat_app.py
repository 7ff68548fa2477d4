"""The chat app (examples/chat_app): endpoints in-process, then a real server for disconnects, the browser, restarts.

- In-process (httpx's ASGI transport, no socket; each client signed in as a new account): pages and JSON
  endpoints, request validation, an answer streamed as server-sent events and stored with its per-token
  provenance, a second turn that sees the first, two conversations at once that do not mix (each answer equals
  the same conversation decoded alone, greedy), a full admission queue refused with HTTP 429. Each of these runs
  on both model tiers: ``local`` (the model in the app's process) and ``remote`` (CHAT_MODEL_URL: a Persona-judge
  server, ``create_app`` on the same embedded model, served on loopback by uvicorn in a thread); what only the
  remote tier does is in test_chat_app_remote.py.
- A real server (``python -m examples.chat_app.server`` in a subprocess, its own SQLite file): a client that
  disconnects mid-answer, and one that disconnects while queued, both free their work (the decoding thread
  returns, the slot is reused); the page driven in headless Chromium by two people in two browser contexts
  (each signs up by itself and sees only its own conversations; the provenance toggle colours the answer);
  a restart keeps every account and conversation.

Accounts, hardening, the stores and the load benchmark's checks have their own modules beside this one
(test_chat_app_auth.py, test_chat_app_hardening.py, test_chat_app_store.py, test_chat_app_load.py).

Answers are kept short (CHAT_APP_TEST_MAX_TOKENS, default 12): the machine's CPUs are shared. The browser test
needs Debian's chromium (scripts/install-browser.sh installs it; CI runs that script first) and is skipped, with
the reason, only when no chromium can be found.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.chat_app import (
    CHROMIUM_ARGS,
    PERSONAS,
    TEST_HOST,
    LiveServer,
    chromium,
    parse_sse,
    reset_admission_queue,
    server_module,
)
from tests.serve_helpers import running_server

pytestmark = pytest.mark.embedded

MAX_TOKENS = int(os.environ.get("CHAT_APP_TEST_MAX_TOKENS", "12"))
LONG = 400  # an answer length that would take minutes: a disconnect must stop it long before


def answer_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["text"] for name, d in events if name == "token")


async def reference(preferences: list[str], turns: list[str], answers: list[str], max_tokens: int) -> str:
    """The last turn's answer from ChatPersonaJudge directly (greedy), for the same conversation."""
    from langchain_core.messages import AIMessage, HumanMessage

    from langchain_persona_judge import ChatPersonaJudge

    messages: list[Any] = []
    for i, turn in enumerate(turns):
        messages.append(HumanMessage(turn))
        if i < len(answers):
            messages.append(AIMessage(answers[i]))
    # The app's own repetition penalty (its Settings default), so that both decode the same way.
    penalty = server_module().Settings().repetition_penalty
    llm = ChatPersonaJudge(preferences=preferences, temperature=0, max_tokens=max_tokens, repetition_penalty=penalty)
    return (await llm.ainvoke(messages)).content


# -- in-process ----------------------------------------------------------------------------------------------


@contextmanager
def model_tier(tier: str, max_concurrency: int = 2, max_queue: int = 16) -> Iterator[str | None]:
    """``local``: None (the app loads the model itself); ``remote``: the URL of a Persona-judge server on the same
    embedded model (the shared handle: answers equal ``ChatPersonaJudge``'s in this process), on loopback."""
    if tier == "local":
        yield None
        return
    from langchain_persona_judge import shared_model
    from langchain_persona_judge.runtime import display_name
    from langchain_persona_judge.serve import ServeSettings, create_app

    settings = ServeSettings(hf_model=shared_model(), served_name=display_name(None), max_concurrency=max_concurrency,
                             max_queue=max_queue)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module", params=["local", "remote"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = server_module()
    with model_tier(request.param) as url:
        settings = server.Settings(db_path=tmp_path_factory.mktemp("chat") / "chat.db", max_tokens=MAX_TOKENS,
                                   max_tokens_cap=64, temperature=0.0, max_concurrent=2, preload=False,
                                   allowed_hosts=(TEST_HOST,), max_in_flight=4, model_url=url)
        application = server.create_app(settings)
        yield application
        application.state.service.store.close()
        reset_admission_queue()


def remote(app: Any) -> bool:
    return app.state.service.settings.model_url is not None


async def signed_up(client: httpx.AsyncClient) -> dict[str, str]:
    """A new account's Authorization header."""
    response = await client.post("/api/users")
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
async def client(app: Any) -> Any:
    """An in-process client signed in as a new user (every /api/ endpoint but POST /api/users needs a token)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}") as c:
        c.headers.update(await signed_up(c))
        yield c


@pytest.fixture(scope="module")
def registry() -> Any:
    from langchain_persona_judge.personas import PersonaRegistry

    return PersonaRegistry.default()


async def _new_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/sessions")
    assert response.status_code == 201
    return response.json()["id"]


async def _ask(client: httpx.AsyncClient, session: str, content: str, **extra: Any) -> list[tuple[str, dict]]:
    response = await client.post(f"/api/sessions/{session}/messages",
                                 json={"content": content, "personas": PERSONAS, **extra})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def test_page_and_config(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # The one page: a persona picker fed by /api/personas, and answers read from a stream as they come.
    for needle in ('id="personas"', "/api/personas", "/api/sessions", "getReader()", 'id="input"', 'id="stop"',
                   "/api/users", "Bearer", 'id="provenance"'):
        assert needle in page.text
    config = (await client.get("/api/config")).json()
    assert config["max_tokens"] == MAX_TOKENS and config["max_concurrent"] == 2
    assert (await client.get("/api/config", headers={"Authorization": ""})).status_code == 401
    assert config["model"] == "SmolLM2-135M-Instruct"
    assert (await client.get("/healthz")).json() == {"ok": True}


async def test_personas_come_from_the_registry(client: httpx.AsyncClient, registry: Any) -> None:
    personas = (await client.get("/api/personas")).json()
    assert [p["name"] for p in personas] == registry.names()
    for p in personas:
        assert p["text"] == registry.render(p["name"])
        assert p["tags"] == list(registry.get(p["name"]).tags)


async def test_sessions_can_be_created_listed_read_and_deleted(client: httpx.AsyncClient) -> None:
    session = await _new_session(client)
    assert len(session) == 32
    assert (await client.get(f"/api/sessions/{session}")).json() == {"id": session, "messages": []}
    assert session in [s["id"] for s in (await client.get("/api/sessions")).json()]
    assert (await client.delete(f"/api/sessions/{session}")).json() == {"deleted": True, "cancelled": 0}
    assert (await client.get(f"/api/sessions/{session}")).status_code == 404


async def test_bad_requests_are_refused_before_any_decoding(client: httpx.AsyncClient) -> None:
    session = await _new_session(client)
    url = f"/api/sessions/{session}/messages"
    unknown = await client.post(url, json={"content": "Hi", "personas": ["no-such-persona"]})
    assert unknown.status_code == 422 and "no-such-persona" in unknown.json()["detail"]
    assert (await client.post(url, json={"content": "   "})).status_code == 422
    assert (await client.post(url, json={"content": ""})).status_code == 422
    too_long = await client.post(url, json={"content": "Hi", "max_tokens": 65})
    assert too_long.status_code == 422 and "cap" in too_long.json()["detail"]
    assert (await client.post(url, json={"content": "Hi", "temperature": -1})).status_code == 422
    assert (await client.post("/api/sessions/" + "0" * 32 + "/messages", json={"content": "Hi"})).status_code == 404
    assert (await client.get("/api/sessions/not-an-id")).status_code == 404
    assert (await client.get("/api/generations/nope")).status_code == 404
    assert (await client.get(f"/api/sessions/{session}")).json()["messages"] == []  # nothing was stored
    stats = (await client.get("/api/stats")).json()
    assert stats["running"] == stats["queued"] == 0


async def test_an_answer_streams_is_stored_and_the_next_turn_sees_it(
    app: Any, client: httpx.AsyncClient, registry: Any
) -> None:
    session = await _new_session(client)
    first = await _ask(client, session, "Why is the sky blue?")
    names = [name for name, _ in first]
    assert names[:2] == ["queued", "start"] and names[-1] == "done"
    assert names.count("token") >= 2 and set(names[2:-1]) == {"token"}, names
    text = answer_text(first)
    done = first[-1][1]
    assert done["session_id"] == session and done["finish_reason"] in ("stop", "length")
    assert 0 < done["usage"]["output_tokens"] <= MAX_TOKENS
    assert done["persona_judge"]["personas"] == 2
    assert done["ttft_s"] >= done["queue_wait_s"] >= 0
    preferences = [registry.render(name) for name in PERSONAS]
    assert done["preferences_used"] == preferences
    if remote(app):
        assert "provenance" not in done  # a remote model tier sends no per-token trace
    else:
        check_provenance(done, text, PERSONAS)
    # The personas' texts reached the model: the same conversation through ChatPersonaJudge gives the same text.
    assert text == await reference(preferences, ["Why is the sky blue?"], [], MAX_TOKENS)

    second = await _ask(client, session, "And why are sunsets red?")
    assert second[-1][0] == "done"
    expected = await reference(preferences, ["Why is the sky blue?", "And why are sunsets red?"], [text], MAX_TOKENS)
    assert answer_text(second) == expected  # the second answer was decoded with the first turn in context

    messages = (await client.get(f"/api/sessions/{session}")).json()["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "Why is the sky blue?", "complete"),
        ("assistant", text, "complete"),
        ("user", "And why are sunsets red?", "complete"),
        ("assistant", expected, "complete"),
    ]
    assert messages[0]["personas"] == PERSONAS
    assert messages[1]["meta"]["generation_id"] == done["generation_id"]
    assert messages[1]["meta"]["usage"]["output_tokens"] == done["usage"]["output_tokens"]
    assert messages[1]["meta"].get("provenance") == done.get("provenance")  # a reload shows the same provenance


def check_provenance(done: dict[str, Any], text: str, labels: list[str]) -> None:
    """The done event's provenance: one trace entry per output token, each with its text (together, the
    answer), the persona it follows, and counts that add up."""
    prov = done["provenance"]
    assert prov["personas"] == labels
    trace = prov["trace"]
    assert len(trace) == done["usage"]["output_tokens"]
    assert "".join(t["text"] for t in trace) == text
    for t in trace:
        assert set(t) >= {"token_id", "drafter", "judge", "kind", "text"}
        assert -1 <= t["judge"] < max(len(labels), 1)
    assert sum(prov["tokens_by_persona"].values()) == len(trace)
    assert sum(prov["kinds"].values()) == len(trace)


async def test_concurrent_conversations_do_not_mix(client: httpx.AsyncClient, registry: Any) -> None:
    cases = [("What is photosynthesis?", "concise"), ("How do airplanes fly?", "elementary"),
             ("Why is the ocean salty?", "sassy")]
    sessions = [await _new_session(client) for _ in cases]
    results = await asyncio.gather(
        *(_ask(client, s, q, max_tokens=8, personas=[p, "friendly"]) for s, (q, p) in zip(sessions, cases, strict=True))
    )
    for session, (question, persona), events in zip(sessions, cases, results, strict=True):
        assert events[-1][0] == "done" and events[-1][1]["session_id"] == session
        expected = await reference([registry.render(persona), registry.render("friendly")], [question], [], 8)
        assert answer_text(events) == expected, f"the answer for {question!r} is not its own"
    stats = (await client.get("/api/stats")).json()
    assert (stats["running"], stats["queued"], stats["decoding_threads"]) == (0, 0, 0)
    assert stats["completed"] >= 3 and stats["errors"] == 0


@pytest.mark.parametrize("tier", ["local", "remote"])
async def test_a_full_admission_queue_is_refused_with_429(tmp_path: Path, tier: str) -> None:
    # One slot and no room to wait: while one answer decodes, the next message is refused before it is stored.
    server = server_module()
    with model_tier(tier, max_concurrency=1, max_queue=0) as url:
        settings = server.Settings(db_path=tmp_path / "chat.db", max_tokens=MAX_TOKENS, max_tokens_cap=64,
                                   temperature=0.0, max_concurrent=1, max_queue=0, preload=False,
                                   allowed_hosts=(TEST_HOST,), model_url=url)
        await _refuse_when_full(server.create_app(settings), remote=url is not None)


async def _refuse_when_full(application: Any, remote: bool) -> None:
    service = application.state.service
    try:
        await service.preload()  # loads the weights (remote: asks the server), so the app knows the admission queue
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                     base_url=f"http://{TEST_HOST}") as c:
            c.headers.update(await signed_up(c))
            first, second = await _new_session(c), await _new_session(c)
            busy = asyncio.create_task(_ask(c, first, "Tell me a story about a dragon.", max_tokens=48))
            deadline = time.monotonic() + 120
            while (await c.get("/api/stats")).json()["running"] == 0:
                assert not busy.done() and time.monotonic() < deadline, "the first answer never started"
                await asyncio.sleep(0.05)
            refused = await c.post(f"/api/sessions/{second}/messages", json={"content": "Hi", "personas": PERSONAS})
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert "MAX_QUEUE=0" in refused.json()["detail"]
            assert (await c.get(f"/api/sessions/{second}")).json()["messages"] == []  # nothing was stored
            assert (await busy)[-1][0] == "done"
            stats = (await c.get("/api/stats")).json()
            expected = None if remote else {"running": 0, "waiting": 0, "max_concurrency": 1, "max_queue": 0}
            assert stats["admission"] == expected  # a remote tier's queue is the server's
    finally:
        service.store.close()
        reset_admission_queue()


# -- a real server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # One decoding slot, so a second request waits in the queue; greedy; short answers unless asked for more.
    server = LiveServer(tmp_path_factory.mktemp("live") / "chat.db", MAX_CONCURRENT="1", CHAT_TEMPERATURE="0",
                        CHAT_MAX_TOKENS=str(MAX_TOKENS), CHAT_MAX_TOKENS_CAP=str(LONG))
    server.start()
    yield server
    server.stop()


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class OpenStream:
    """A streamed POST read event by event; ``close()`` drops the connection like a closed tab."""

    def __init__(self, client: httpx.Client, session: str, content: str, **extra: Any) -> None:
        self._cm = client.stream("POST", f"/api/sessions/{session}/messages",
                                 json={"content": content, "personas": PERSONAS, **extra})
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200
        self._lines = self.response.iter_lines()
        self.text = ""

    def next_event(self) -> tuple[str, dict[str, Any]]:
        name, data = "message", []
        for line in self._lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "" and data:
                event = (name, json.loads("\n".join(data)))
                if name == "token":
                    self.text += event[1]["text"]
                return event
        raise AssertionError("the stream ended")

    def until(self, wanted: str) -> dict[str, Any]:
        while True:
            name, data = self.next_event()
            if name == wanted:
                return data
            assert name not in ("error", "done"), (name, data)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def test_disconnects_stop_generation_and_free_the_slot(live: LiveServer) -> None:
    with live.client() as client:
        def generation(gid: str) -> dict[str, Any]:
            return client.get(f"/api/generations/{gid}").json()

        session_a, session_b = (client.post("/api/sessions").json()["id"] for _ in range(2))
        # A asks for an answer that would take minutes, and reads until its first token.
        a = OpenStream(client, session_a, "Tell me a very long story about a dragon.", max_tokens=LONG)
        a_id = a.until("queued")["generation_id"]
        a.until("token")
        assert generation(a_id)["state"] == "running" and generation(a_id)["worker_running"]
        # B waits behind it (one slot), then goes away while still queued.
        b = OpenStream(client, session_b, "What is rain?")
        b_id = b.until("queued")["generation_id"]
        assert client.get("/api/stats").json()["queued"] == 1
        b.close()
        gone = _wait_for(lambda: (g := generation(b_id))["state"] == "cancelled" and g, 30, "B to be cancelled")
        assert gone["started_after_s"] is None and gone["pieces"] == 0  # it never took the slot, never decoded
        assert gone["cancel_reason"] == "client disconnected"
        # B's thread waited in the library's admission queue, which watches the cancellation: it leaves the queue
        # at once, while A still holds the slot, and never decodes.
        b_freed = _wait_for(lambda: not (g := generation(b_id))["worker_running"] and g, 5, "B's thread to return")
        assert b_freed["pieces"] == 0 and generation(a_id)["state"] == "running"
        assert client.get("/api/stats").json()["admission"]["waiting"] == 0

        # A goes away mid-answer: the server notices, its decoding thread returns, and far fewer than LONG tokens.
        received = a.text
        closed_at = time.monotonic()
        a.close()
        freed = _wait_for(lambda: (g := generation(a_id))["state"] == "cancelled" and not g["worker_running"] and g,
                          30, "A's decoding thread to return")
        took = time.monotonic() - closed_at
        assert freed["worker_started"] and freed["cancel_reason"] == "client disconnected"
        assert freed["pieces"] < LONG / 4, freed
        stats = client.get("/api/stats").json()
        assert (stats["running"], stats["queued"], stats["decoding_threads"]) == (0, 0, 0), stats
        assert stats["admission"]["running"] == stats["admission"]["waiting"] == 0, stats
        assert stats["cancelled"] >= 2
        # The partial answer is kept, marked cancelled (and left out of the model's context later).
        stored = client.get(f"/api/sessions/{session_a}").json()["messages"]
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
        assert stored[1]["content"].startswith(received)

        # The slot is free again: the next answer streams to the end.
        c = OpenStream(client, session_b, "What is rain?")
        done = c.until("done")
        c.close()
        assert done["queue_wait_s"] < 5, f"the next answer waited {done['queue_wait_s']} s for a slot"
        print(f"disconnect freed the decoding thread {took:.2f} s after the client left")


@pytest.mark.browser
def test_the_page_streams_an_answer_in_headless_chromium(live: LiveServer) -> None:
    """Two people in two browser contexts: each page signs up on its first visit (its token in localStorage),
    streams its answer, and sees only its own conversations; the provenance toggle colours the answer's tokens."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium at /usr/bin/chromium (or $CHROMIUM, or on PATH): run scripts/install-browser.sh, "
                    "which installs Debian's chromium; CI runs it before the tests")
    from playwright.sync_api import expect, sync_playwright

    def open_page(context: Any, problems: list[str]) -> Any:
        page = context.new_page()
        page.set_default_timeout(180_000)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        # A Content-Security-Policy violation is reported on the console, not as a page error.
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.goto(live.url)
        page.wait_for_selector("body[data-ready='1']")
        return page

    def ask(page: Any, question: str) -> Any:
        page.fill("#input", question)
        page.click("#send")
        answer = page.locator(".msg.assistant").last
        expect(answer).to_have_attribute("data-state", "done", timeout=180_000)
        return answer

    def bearer(page: Any) -> dict[str, str]:
        token = page.evaluate("localStorage.getItem('pj.token')")
        assert token, "the page kept no token"
        return {"Authorization": f"Bearer {token}"}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS, headless=True)
        try:
            problems: list[str] = []
            page = open_page(browser.new_context(), problems)
            auth_a = bearer(page)
            # The persona picker lists the registry; pick two.
            boxes = page.locator("#personas input[type=checkbox]")
            expect(boxes).to_have_count(len(httpx.get(f"{live.url}/api/personas", headers=auth_a).json()))
            for box in boxes.all():
                box.uncheck()
            page.check("#personas input[value='concise']")
            page.check("#personas input[value='friendly']")
            # Count the answer's text updates while it streams (one per token event, not one at the end).
            page.evaluate("""() => {
                window.__updates = [];
                new MutationObserver(() => {
                    const a = document.querySelector('.msg.assistant:last-of-type');
                    if (a) window.__updates.push([a.dataset.state, a.querySelector('.body').textContent]);
                }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
            }""")
            answer = ask(page, "Why is the sky blue?")
            text = answer.locator(".body").text_content()
            assert text and text.strip()
            updates = page.evaluate("window.__updates")
            streaming = [t for state, t in updates if state == "streaming" and t]
            assert len(set(streaming)) >= 2, f"the answer did not appear token by token: {updates}"
            assert all(text.startswith(t) for t in streaming)
            assert "tokens" in answer.locator(".meta").text_content()

            # What the page showed is what the server stored for this account.
            session_a = page.evaluate("localStorage.getItem('pj.session')")
            stored = httpx.get(f"{live.url}/api/sessions/{session_a}", headers=auth_a).json()["messages"]
            assert [(m["role"], m["content"]) for m in stored] == [("user", "Why is the sky blue?"),
                                                                    ("assistant", text)]
            assert stored[0]["personas"] == ["concise", "friendly"]

            # Provenance: off, the answer is plain; on, every token is coloured by the persona it follows, with
            # a legend (one key per persona used) and the acceptance statistics.
            tokens = answer.locator(".body .tok")
            assert tokens.count() >= 2 and "".join(tokens.all_text_contents()) == text
            legend = answer.locator(".legend")
            expect(legend).to_be_hidden()
            transparent = "rgba(0, 0, 0, 0)"
            assert tokens.first.evaluate("e => getComputedStyle(e).backgroundColor") == transparent
            page.check("#provenance")
            expect(legend).to_be_visible()
            trace = stored[1]["meta"]["provenance"]["trace"]
            colours = tokens.evaluate_all("els => els.map(e => [e.dataset.judge, getComputedStyle(e).backgroundColor])")
            assert all(colour != transparent for _, colour in colours), colours
            assert [int(j) for j, _ in colours] == [t["judge"] for t in trace if t["text"]]
            by_judge: dict[str, set[str]] = {}
            for judge, colour in colours:
                by_judge.setdefault(judge, set()).add(colour)
            assert all(len(c) == 1 for c in by_judge.values()), by_judge  # one colour per persona...
            assert len({next(iter(c)) for c in by_judge.values()}) == len(by_judge)  # ...and a different one each
            legend_text = legend.text_content()
            assert "tokens" in legend_text
            for judge in by_judge:
                assert ["concise", "friendly"][int(judge)] in legend_text
            # The toggle is remembered, and a reload shows the stored provenance again.
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator(".msg.assistant .body")).to_have_text([text])
            assert page.is_checked("#provenance")
            expect(page.locator(".msg.assistant .legend")).to_be_visible()
            page.uncheck("#provenance")
            expect(page.locator(".msg.assistant .legend")).to_be_hidden()

            # A second person, in another browser context: another account, none of the first one's data.
            page_b = open_page(browser.new_context(), problems)
            auth_b = bearer(page_b)
            assert auth_b != auth_a
            expect(page_b.locator("#sessions li")).to_have_count(1)  # the empty conversation it opened
            expect(page_b.locator(".msg")).to_have_count(0)
            ask(page_b, "What is rain?")
            expect(page_b.locator("#sessions li")).to_have_text(["What is rain?"])
            # Pointing B's page at A's conversation gets B nothing: the server answers 404, the page starts afresh.
            page_b.evaluate(f"localStorage.setItem('pj.session', '{session_a}')")
            page_b.reload()
            page_b.wait_for_selector("body[data-ready='1']")
            assert page_b.evaluate("localStorage.getItem('pj.session')") != session_a
            assert "Why is the sky blue?" not in page_b.locator("#messages").text_content()
            expect(page_b.locator("#sessions li")).to_have_text(["(empty conversation)", "What is rain?"])
            # And A still sees only A's conversation.
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#sessions li")).to_have_text(["Why is the sky blue?"])
            assert httpx.get(f"{live.url}/api/sessions/{session_a}", headers=auth_b).status_code == 404
            problems = [p for p in problems if "404" not in p]  # the refused look at A's conversation, on B's console
            assert not problems, problems
        finally:
            browser.close()


def test_a_restart_keeps_every_conversation(live: LiveServer) -> None:
    user = live.new_user()
    with live.client(user) as client:
        session = client.post("/api/sessions").json()["id"]
        first = parse_sse(client.post(f"/api/sessions/{session}/messages",
                                      json={"content": "What is rain?", "personas": PERSONAS}).text)
        assert first[-1][0] == "done"
        before = client.get(f"/api/sessions/{session}").json()
        listed = client.get("/api/sessions").json()

    live.restart()  # SIGTERM, then a new process on the same database file

    with live.client(user) as client:  # the account survives too
        assert client.get(f"/api/sessions/{session}").json() == before
        assert client.get("/api/sessions").json() == listed
        # The conversation goes on where it was: the new answer is stored after the old ones.
        second = parse_sse(client.post(f"/api/sessions/{session}/messages",
                                       json={"content": "Where does it come from?", "personas": PERSONAS}).text)
        assert second[-1][0] == "done"
        after = client.get(f"/api/sessions/{session}").json()["messages"]
        assert after[:2] == before["messages"]
        assert [(m["role"], m["content"]) for m in after[2:]] == [
            ("user", "Where does it come from?"), ("assistant", answer_text(second))
        ]


async def test_strength_and_rule_reach_the_model(client: httpx.AsyncClient) -> None:
    """The page's strength slider (guidance) and rule choice (combine) are per-message options."""
    page = (await client.get("/")).text
    assert 'id="strength"' in page and 'id="combine"' in page and "payload.guidance" in page
    session = await _new_session(client)
    events = await _ask(client, session, "What is rain?", guidance=2.0, combine="product", max_tokens=4)
    done = dict(events)["done"]
    stats = done["persona_judge"] if "persona_judge" in done else done["meta"]["persona_judge"]
    assert stats["guidance"] == 2.0 and stats["combine"] == "product" and stats["repetition_penalty"] == 1.2
    for bad in ({"guidance": "NaN"}, {"guidance": 9.0}, {"combine": "mean"}):
        refused = await client.post(f"/api/sessions/{session}/messages",
                                    json={"content": "Hi", "personas": PERSONAS, **bad})
        assert refused.status_code == 422, bad


async def test_a_session_id_with_a_trailing_newline_is_not_found(
    client: httpx.AsyncClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id pattern alone must refuse it (a "$" anchor lets "…\n" through), whatever the store would say."""
    session = await _new_session(client)
    store = app.state.service.store

    async def always(user_id: str, session_id: str) -> bool:
        return True

    monkeypatch.setattr(store, "session_owned", always)
    assert (await client.get(f"/api/sessions/{session}")).status_code == 200
    assert (await client.get(f"/api/sessions/{session}%0A")).status_code == 404
