"""The chat app learns each user's preferences: two answers side by side, a pick, the stored profile.

In-process (httpx's ASGI transport), as the other chat app tests: every profile endpoint x {no token, bad token}
→ 401 and nothing changed; another user's comparison id → 404, exactly as an unknown one; the pick loop changes
the stored profile, and an answer that picks no persona is then decoded with it (its metadata says so); a pick
still counts when this process's learner was rebuilt (another process, a restart); reset, export (the CLI's
file) and import, which refuses a corrupted or crafted file (422) and another model's or basis' profile (409),
saying why; making a comparison counts as an answer in flight. Then the page in headless Chromium: a user makes a
few picks and the profile panel's bars change; export, reset and import through the panel.

Each comparison decodes two short answers (PROFILE_TOKENS) and scores them over the 20 basis personas: a few
seconds each on the embedded model on CPU.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.chat_app import (
    BAD_TOKENS,
    CHROMIUM_ARGS,
    TEST_HOST,
    LiveServer,
    bad_token_headers,
    chromium,
    parse_sse,
    reset_admission_queue,
    server_module,
    sign_up_two,
)

pytestmark = pytest.mark.embedded

PROFILE_TOKENS = 12
ENDPOINTS: list[tuple[str, str, Any]] = [  # (method, path, body); {c}: a comparison id
    ("GET", "/api/profile", None),
    ("DELETE", "/api/profile", None),
    ("POST", "/api/profile/comparisons", {"prompt": "Why do cats purr?"}),
    ("POST", "/api/profile/comparisons/{c}/choice", {"choice": "a"}),
    ("GET", "/api/profile/export", None),
    ("PUT", "/api/profile/import", "format: persona-judge-profile\n"),
]


def _request(c: httpx.AsyncClient, method: str, url: str, body: Any, headers: dict[str, str]) -> Any:
    if isinstance(body, str):
        return c.request(method, url, content=body.encode(), headers=headers)
    return c.request(method, url, json=body, headers=headers)


class World:
    """Users A and B on one app; A has an unanswered comparison and a profile (imported)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.service = app.state.service
        self.token_a = ""
        self.a: dict[str, str] = {}
        self.b: dict[str, str] = {}
        self.comparison = ""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=f"http://{TEST_HOST}",
                                 timeout=600)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = server_module()
    settings = server.Settings(db_path=tmp_path_factory.mktemp("profile") / "chat.db", max_tokens=4,
                               temperature=0.0, preload=False, allowed_hosts=(TEST_HOST,), max_in_flight=4,
                               profile_max_tokens=PROFILE_TOKENS)
    app = server.create_app(settings)
    yield World(app)
    app.state.service.store.close()
    reset_admission_queue()


@pytest.fixture(scope="module")
def handle() -> Any:
    """The embedded model as profiles are scored with it (the app's own: shared weights)."""
    from langchain_persona_judge.profiles import resolve_model

    return resolve_model(None)


def profile_file(handle: Any, weights: dict[str, float] | None = None, *, basis: Any = None, **data: Any) -> str:
    """A profile file as `persona-judge learn` writes it (YAML), over the built-in basis unless ``basis``."""
    from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile, resolve_basis

    basis = resolve_basis(basis)
    values = [float((weights or {}).get(name, 0.0)) for name in basis.names]
    profile = PreferenceProfile(basis, values, ModelIdentity.of(handle), evidence={"comparisons": 4})
    content = {**profile.to_dict(), **data}
    return yaml.safe_dump(content, sort_keys=False)


@pytest.fixture
async def ready(world: World, handle: Any) -> World:
    if world.comparison:
        return world
    async with world.client() as c:
        world.token_a, world.a, world.b = await sign_up_two(c)
        imported = await c.put("/api/profile/import", headers=world.a,
                               content=profile_file(handle, {"concise": 0.5, "friendly": -0.25}).encode())
        assert imported.status_code == 200, imported.text
        made = await c.post("/api/profile/comparisons", headers=world.a, json={"prompt": "Why do cats purr?"})
        assert made.status_code == 201, made.text
        world.comparison = made.json()["id"]
    return world


async def _a_state(c: httpx.AsyncClient, world: World) -> Any:
    """What A has: the profile, and the pending comparison (unanswered)."""
    row = await world.service.store.comparison((await c.get("/api/config", headers=world.a)).json()["user_id"],
                                               world.comparison)
    return (await c.get("/api/profile", headers=world.a)).json(), row["choice"], row["answer_a"]


def _weights(summary: dict[str, Any]) -> dict[str, float]:
    return {w["name"]: w["weight"] for w in summary["weights"]}


# -- accounts: 401 and 404 --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
@pytest.mark.parametrize("bad", list(BAD_TOKENS))
async def test_no_or_bad_token_is_401_and_changes_nothing(ready: World, method: str, path: str, body: Any,
                                                          bad: str) -> None:
    world = ready
    async with world.client() as c:
        before = await _a_state(c, world)
        headers = bad_token_headers(bad, world.token_a)
        response = await _request(c, method, path.format(c=world.comparison), body, headers)
        assert response.status_code == 401, (bad, response.status_code, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in response.json()["detail"]
        assert await _a_state(c, world) == before
        assert world.service.comparisons_running == 0  # nothing was decoded for it


async def test_another_users_comparison_is_404_like_an_unknown_one(ready: World) -> None:
    world = ready
    async with world.client() as c:
        before = await _a_state(c, world)
        url = "/api/profile/comparisons/{}/choice"
        theirs = await c.post(url.format(world.comparison), json={"choice": "a"}, headers=world.b)
        unknown = await c.post(url.format("0" * 32), json={"choice": "a"}, headers=world.b)
        assert theirs.status_code == 404, theirs.text
        assert (theirs.status_code, theirs.json()) == (unknown.status_code, unknown.json())  # indistinguishable
        assert world.comparison not in theirs.text
        for odd in ("not-an-id", world.comparison.upper(), f"{world.comparison}%0A", "' OR '1'='1"):
            assert (await c.post(url.format(odd), json={"choice": "a"}, headers=world.a)).status_code == 404
        assert await _a_state(c, world) == before  # A's comparison is still unanswered, A's profile unchanged
        # B's own profile endpoints act on B's (empty) profile only.
        mine_b = (await c.get("/api/profile", headers=world.b)).json()
        assert mine_b["exists"] is False and mine_b["choices"] == 0 and not any(_weights(mine_b).values())
        assert (await c.get("/api/profile/export", headers=world.b)).status_code == 404
        assert (await c.delete("/api/profile", headers=world.b)).json()["deleted"] is False
        assert await _a_state(c, world) == before


# -- the pick loop --------------------------------------------------------------------------------------------


async def test_the_pick_loop_changes_the_stored_profile_and_later_answers_use_it(world: World) -> None:
    from langchain_persona_judge.profiles import DEFAULT_PROMPTS

    async with world.client() as c:
        c.headers["Authorization"] = f"Bearer {(await c.post('/api/users')).json()['token']}"
        user_id = (await c.get("/api/config")).json()["user_id"]
        empty = (await c.get("/api/profile")).json()
        assert empty["exists"] is False and empty["choices"] == 0 and empty["top"] == []
        assert len(empty["weights"]) == 20 and not any(_weights(empty).values())  # the built-in basis, all zero

        history = [_weights(empty)]
        for number, (prompt, choice) in enumerate([("How do I boil an egg?", "a"), (None, "b"), (None, "none")], 1):
            started = time.monotonic()
            made = await c.post("/api/profile/comparisons", json={} if prompt is None else {"prompt": prompt})
            assert made.status_code == 201, made.text
            comparison = made.json()
            assert set(comparison) >= {"id", "prompt", "answer_a", "answer_b"}
            assert comparison["prompt"] == prompt if prompt else comparison["prompt"] in DEFAULT_PROMPTS
            assert comparison["answer_a"].strip() and comparison["answer_b"].strip()
            assert comparison["answer_a"] != comparison["answer_b"]
            # What was shown is what is stored, with what the pick needs.
            stored = await world.service.store.comparison(user_id, comparison["id"])
            assert (stored["answer_a"], stored["answer_b"]) == (comparison["answer_a"], comparison["answer_b"])
            assert len(stored["data"]["features"]) == 2 and len(stored["data"]["features"][0]) == 20
            picked = await c.post(f"/api/profile/comparisons/{comparison['id']}/choice", json={"choice": choice})
            assert picked.status_code == 200, picked.text
            summary = picked.json()
            print(f"comparison {number}: {time.monotonic() - started:.1f} s, {summary['personas']}")
            assert summary["choices"] == number and summary["exists"] and summary["choice"] == choice
            assert len(summary["personas"]) == 2  # what each answer was decoded under, told after the pick
            # The stored profile is the CLI's file, with the new weights.
            record = await world.service.store.get_profile(user_id)
            assert record["choices"] == number
            stored_profile = json.loads(record["profile"])
            assert stored_profile["format"] == "persona-judge-profile"
            assert {p["name"]: p["weight"] for p in stored_profile["basis"]["personas"]} == _weights(summary)
            assert stored_profile["evidence"]["comparisons"] == number
            assert (await c.get("/api/profile")).json() == {k: v for k, v in summary.items()
                                                            if k not in ("comparison_id", "choice", "personas")}
            history.append(_weights(summary))
            # A comparison is answered once; a choice is one of three.
            again = await c.post(f"/api/profile/comparisons/{comparison['id']}/choice", json={"choice": "b"})
            assert again.status_code == 409 and "already answered" in again.json()["detail"]
        assert history[1] != history[0] and history[2] != history[1], "a pick did not change the weights"
        assert all(math.isfinite(w) for w in history[-1].values())
        final = (await c.get("/api/profile")).json()
        assert final["top"] and final["top"][0]["name"] == max(history[-1], key=lambda n: abs(history[-1][n]))
        assert stored_profile["evidence"]["ties"] == 1  # the "no preference"

        # An answer that picks no persona is decoded with the profile; one that picks personas is not.
        session = (await c.post("/api/sessions")).json()["id"]
        events = parse_sse((await c.post(f"/api/sessions/{session}/messages", json={"content": "What is rain?"})).text)
        done = events[-1][1]
        assert events[-1][0] == "done", events
        poles = [p["name"] for p in done["profile"]["personas"]]
        assert poles and set(poles) <= set(history[-1])
        assert done["persona_judge"]["combine"] == "product"
        assert done["provenance"]["personas"] == poles
        assert done["profile"]["evidence"]["comparisons"] == 3
        messages = (await c.get(f"/api/sessions/{session}")).json()["messages"]
        assert messages[1]["meta"]["profile"] == done["profile"] and messages[0]["personas"] == []
        by_hand = parse_sse((await c.post(f"/api/sessions/{session}/messages",
                                          json={"content": "And snow?", "personas": ["concise", "friendly"]})).text)
        assert by_hand[-1][0] == "done" and "profile" not in by_hand[-1][1]
        assert by_hand[-1][1]["provenance"]["personas"] == ["concise", "friendly"]


async def test_a_pick_counts_when_the_learner_was_rebuilt(world: World) -> None:
    """Another process made the comparison, or this one restarted: the pick refits from the stored features."""
    async with world.client() as c:
        c.headers["Authorization"] = f"Bearer {(await c.post('/api/users')).json()['token']}"
        first = (await c.post("/api/profile/comparisons", json={"prompt": "Why is the sea salty?"})).json()
        second = (await c.post("/api/profile/comparisons", json={"prompt": "What is a rainbow?"})).json()
        world.service.profiles._entries.clear()  # as if this process had never seen the user
        picked = await c.post(f"/api/profile/comparisons/{first['id']}/choice", json={"choice": "a"})
        assert picked.status_code == 200 and picked.json()["choices"] == 1
        world.service.profiles._entries.clear()
        picked = await c.post(f"/api/profile/comparisons/{second['id']}/choice", json={"choice": "b"})
        assert picked.status_code == 200 and picked.json()["choices"] == 2
        assert any(_weights(picked.json()).values())


# -- reset, export, import ----------------------------------------------------------------------------------


async def test_a_reset_stops_a_comparison_being_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reset does not wait for the two answers of a comparison in progress: they stop within a token, the
    comparison answers 409 and stores nothing."""
    from langchain_persona_judge import decoding

    real = decoding.stream

    class Slow:  # each piece of an answer takes 0.2 s: a comparison of two 12-token answers takes seconds
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def chunks(self) -> Iterator[list[int]]:
            for chunk in self.inner.chunks():
                time.sleep(0.2)
                yield chunk

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(decoding, "stream", lambda *args, **kwargs: Slow(real(*args, **kwargs)))
    profiles = world.service.profiles
    async with world.client() as c:
        c.headers["Authorization"] = f"Bearer {(await c.post('/api/users')).json()['token']}"
        proposing = asyncio.create_task(c.post("/api/profile/comparisons", json={"prompt": "Why is the sea salty?"}))
        for _ in range(3000):  # until this user's learner decodes
            if any(e.learner._running for e in profiles._entries.values()):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the comparison never started decoding")
        started = time.monotonic()
        reset = await c.delete("/api/profile")
        took = time.monotonic() - started
        made = await proposing
    assert reset.status_code == 200 and took < 2.0, took  # not the seconds the answers would have taken
    assert made.status_code == 409 and "reset while these answers were being written" in made.json()["detail"]
    async with world.client() as c:  # nothing of it was stored
        c.headers["Authorization"] = reset.request.headers["Authorization"]
        assert (await c.get("/api/profile")).json()["exists"] is False


async def test_export_reset_and_import_round_trip_as_the_clis_file(world: World, handle: Any,
                                                                   tmp_path: Path) -> None:
    from langchain_persona_judge.profiles import PreferenceProfile

    async with world.client() as c:
        c.headers["Authorization"] = f"Bearer {(await c.post('/api/users')).json()['token']}"
        missing = await c.get("/api/profile/export")
        assert missing.status_code == 404 and "no profile" in missing.json()["detail"]
        made = (await c.post("/api/profile/comparisons", json={"prompt": "How do I keep a plant alive?"})).json()
        learned = (await c.post(f"/api/profile/comparisons/{made['id']}/choice", json={"choice": "a"})).json()

        exported = await c.get("/api/profile/export")
        assert exported.status_code == 200
        assert exported.headers["content-disposition"] == 'attachment; filename="persona-judge-profile.yaml"'
        path = tmp_path / "me.yaml"
        path.write_bytes(exported.content)
        loaded = PreferenceProfile.load(path)  # what the CLI and ChatPersonaJudge(profile=...) read
        assert loaded.weights == _weights(learned)
        loaded.check_model(handle)
        as_json = await c.get("/api/profile/export?format=json")
        assert as_json.headers["content-disposition"].endswith('.json"')
        assert json.loads(as_json.text)["basis"]["personas"] == loaded.to_dict()["basis"]["personas"]
        assert (await c.get("/api/profile/export?format=xml")).status_code == 422

        reset = await c.delete("/api/profile")
        assert reset.status_code == 200 and reset.json()["deleted"] is True
        after = (await c.get("/api/profile")).json()
        assert after["exists"] is False and after["choices"] == 0 and not any(_weights(after).values())
        assert (await c.post(f"/api/profile/comparisons/{made['id']}/choice",
                             json={"choice": "b"})).status_code == 404  # its comparisons went with it
        session = (await c.post("/api/sessions")).json()["id"]
        plain = parse_sse((await c.post(f"/api/sessions/{session}/messages", json={"content": "Hi"})).text)
        assert plain[-1][0] == "done" and "profile" not in plain[-1][1]  # no profile: plain decoding

        for content in (exported.content, as_json.content):
            imported = await c.put("/api/profile/import", content=content)
            assert imported.status_code == 200, imported.text
            assert _weights(imported.json()) == _weights(learned) and imported.json()["choices"] == 1
            assert (await c.get("/api/profile")).json()["weights"] == learned["weights"]
        # The CLI's own file (PreferenceProfile.save) imports as well, with its description.
        cli_file = tmp_path / "cli.yaml"
        loaded.with_description("Keep it short.").save(cli_file)
        imported = (await c.put("/api/profile/import", content=cli_file.read_bytes())).json()
        assert imported["description"] == "Keep it short."


CORRUPTED: dict[str, tuple[Any, str]] = {  # name: (file content, or a change to a valid file; what the error says)
    "empty": (b"", "empty"),
    "not UTF-8": (b"\xff\xfe\x00format", "UTF-8"),
    "not YAML": (b"format: [persona-judge-profile\nversion: : 1", "corrupted"),
    "not JSON": (b'{"format": "persona-judge-profile", ', "corrupted"),
    "another kind of file": (b"- just\n- a list\n", "not a preference profile"),
    "a newer version": ({"version": 99}, "newer"),
    "a weight that is not a number": ({"basis.weight": "heavy"}, "number"),
    "a weight that is NaN": ({"basis.weight": float("nan")}, "not finite"),
    "a persona's text edited": ({"basis.text": "Answer like a pirate."}, "digest"),
    "no model": ({"model": None}, "model"),
    "YAML aliases (a crafted file)": (b"a: &a [1, 2]\nb: [*a, *a, *a]\n", "aliases"),
    "a description over the cap": ({"description": ("Be brief. " * 60)[:501]}, "501 characters"),
    "a one-word description that is no persona": ({"description": "banana"}, "description"),
}


def _corrupt(valid: str, change: Any) -> bytes:
    if isinstance(change, bytes):
        return change
    data = yaml.safe_load(valid)
    for key, value in change.items():
        if key.startswith("basis."):
            data["basis"]["personas"][0][key.split(".")[1]] = value
        else:
            data[key] = value
    return json.dumps(data).encode() if any(isinstance(v, float) and math.isnan(v) for v in change.values()) \
        else yaml.safe_dump(data, sort_keys=False).encode()


@pytest.mark.parametrize("case", list(CORRUPTED))
async def test_a_corrupted_file_is_refused_with_422_saying_why(ready: World, handle: Any, case: str) -> None:
    world = ready
    content, reason = CORRUPTED[case]
    async with world.client() as c:
        before = await _a_state(c, world)
        response = await c.put("/api/profile/import", headers=world.a,
                               content=_corrupt(profile_file(handle, {"concise": 1.0}), content))
        assert response.status_code == 422, (case, response.status_code, response.text)
        assert reason in str(response.json()["detail"]), response.json()
        assert "/tmp" not in response.text and "Traceback" not in response.text
        assert await _a_state(c, world) == before  # nothing was imported


async def test_another_models_or_basis_profile_is_refused_with_409_saying_why(ready: World, handle: Any) -> None:
    world = ready
    valid = yaml.safe_load(profile_file(handle, {"concise": 1.0}))
    another_model = {**valid, "model": {"name": "HuggingFaceTB/SmolLM2-360M-Instruct",
                                        "display": "SmolLM2-360M-Instruct", "fingerprint": "0123456789abcdef"}}
    another_basis = profile_file(handle, {"concise": 1.0}, basis=["concise", "informative"])
    async with world.client() as c:
        before = await _a_state(c, world)
        model = await c.put("/api/profile/import", headers=world.a, content=yaml.safe_dump(another_model).encode())
        assert model.status_code == 409, model.text
        assert "SmolLM2-360M-Instruct" in model.json()["detail"] and "another" in model.json()["detail"]
        basis = await c.put("/api/profile/import", headers=world.a, content=another_basis.encode())
        assert basis.status_code == 409, basis.text
        assert "another basis" in basis.json()["detail"]
        assert await _a_state(c, world) == before


# -- requests refused before anything is decoded ------------------------------------------------------------


async def test_bad_requests_are_refused_clearly(ready: World) -> None:
    world = ready
    url = f"/api/profile/comparisons/{world.comparison}/choice"
    async with world.client() as c:
        c.headers.update(world.a)
        before = await _a_state(c, world)
        for body in ({"choice": "c"}, {"choice": 1}, {}, {"choice": None}):
            refused = await c.post(url, json=body)
            assert refused.status_code == 422, body
            assert refused.json()["detail"][0]["loc"][-1] == "choice"
        for body in ({"prompt": "x" * 1001}, {"prompt": "a\x00b"}, {"prompt": 7}):
            refused = await c.post("/api/profile/comparisons", json=body)
            assert refused.status_code == 422, body
        assert (await c.post("/api/profile/comparisons", content=b"{not json",
                             headers={"Content-Type": "application/json"})).status_code == 422
        assert await _a_state(c, world) == before
        assert world.service.comparisons_running == 0


async def test_making_a_comparison_counts_as_an_answer_in_flight(tmp_path: Path) -> None:
    server = server_module()
    app = server.create_app(server.Settings(db_path=tmp_path / "chat.db", max_tokens=4, temperature=0.0,
                                            preload=False, allowed_hosts=(TEST_HOST,), max_in_flight=1,
                                            profile_max_tokens=PROFILE_TOKENS))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}",
                                     timeout=600) as c:
            c.headers["Authorization"] = f"Bearer {(await c.post('/api/users')).json()['token']}"
            session = (await c.post("/api/sessions")).json()["id"]
            making = asyncio.create_task(c.post("/api/profile/comparisons", json={"prompt": "What is fog?"}))
            deadline = time.monotonic() + 60
            while (await c.get("/api/stats")).json()["comparisons"] == 0:
                assert not making.done() and time.monotonic() < deadline, "the comparison never started"
                await asyncio.sleep(0.02)
            assert (await c.get("/api/stats")).json()["yours"]["in_flight"] == 1
            another = await c.post("/api/profile/comparisons", json={})
            assert another.status_code == 429 and "CHAT_MAX_IN_FLIGHT=1" in another.json()["detail"]
            message = await c.post(f"/api/sessions/{session}/messages", json={"content": "Hi"})
            assert message.status_code == 429
            assert (await making).status_code == 201
            stats = (await c.get("/api/stats")).json()
            assert stats["comparisons"] == 0 and stats["yours"]["in_flight"] == 0
    finally:
        app.state.service.store.close()
        reset_admission_queue()


async def test_the_page_has_the_comparison_card_and_the_profile_panel(ready: World) -> None:
    async with ready.client() as c:
        page = (await c.get("/")).text
    for needle in ('id="compare"', 'id="compare-now"', 'id="choose-a"', 'id="choose-b"', 'id="choose-none"',
                   'id="profile-bars"', 'id="profile-reset"', 'id="profile-export"', 'id="profile-import"',
                   "/api/profile/comparisons", "/api/profile/export", "/api/profile/import"):
        assert needle in page, needle


# -- the page, in headless Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A comparison is offered after every answer here (CHAT_PROFILE_EVERY=1), so that one answer shows it.
    server = LiveServer(tmp_path_factory.mktemp("live-profile") / "chat.db", CHAT_TEMPERATURE="0",
                        CHAT_MAX_TOKENS="8", CHAT_PROFILE_MAX_TOKENS=str(PROFILE_TOKENS), CHAT_PROFILE_EVERY="1")
    server.start()
    yield server
    server.stop()


@pytest.mark.browser
def test_picks_in_the_page_change_the_profile_panel(live_profile: LiveServer, tmp_path: Path) -> None:
    """A user answers the card a few times (offered after an answer, then on demand) and the panel's bars
    change; the next answer, with no persona picked, is decoded with the profile; export, reset and import."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium at /usr/bin/chromium (or $CHROMIUM, or on PATH): run scripts/install-browser.sh, "
                    "which installs Debian's chromium; CI runs it before the tests")
    from playwright.sync_api import expect, sync_playwright

    def bars(page: Any) -> dict[str, float]:
        return {name: float(weight) for name, weight in page.locator("#profile-bars .bar").evaluate_all(
            "els => els.map(e => [e.dataset.name, e.dataset.weight])")}

    def widths(page: Any) -> list[float]:
        return page.locator("#profile-bars .bar .fill").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect().width)")

    def pick(page: Any, button: str, choices: int) -> None:
        card = page.locator("#compare")
        expect(card).to_be_visible()
        expect(card).to_have_attribute("data-state", "ready", timeout=180_000)
        a, b = page.locator("#answer-a").text_content(), page.locator("#answer-b").text_content()
        assert a and b and a != b
        page.click(button)
        expect(page.locator("#profile-summary")).to_have_attribute("data-choices", str(choices), timeout=60_000)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS, headless=True)
        try:
            problems: list[str] = []
            page = browser.new_context(accept_downloads=True).new_page()
            page.set_default_timeout(180_000)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.goto(live_profile.url)
            page.wait_for_selector("body[data-ready='1']")
            token = page.evaluate("localStorage.getItem('pj.token')")
            auth = {"Authorization": f"Bearer {token}"}
            # No profile yet: every bar at zero, the card hidden.
            expect(page.locator("#profile-bars .bar")).to_have_count(20)
            assert not any(bars(page).values()) and not any(widths(page))
            expect(page.locator("#compare")).to_be_hidden()

            # An answer (CHAT_PROFILE_EVERY=1): the card is offered by itself.
            page.fill("#input", "What is rain?")
            page.click("#send")
            expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=180_000)
            pick(page, "#choose-a", 1)
            first = bars(page)
            assert any(first.values()), "the first pick left every weight at zero"
            assert any(widths(page)), "no bar is drawn"
            expect(page.locator("#compare")).to_be_hidden()
            # On demand, twice more.
            page.click("#compare-now")
            pick(page, "#choose-b", 2)
            second = bars(page)
            assert second != first, "the second pick did not change the bars"
            page.click("#compare-now")
            pick(page, "#choose-none", 3)
            shown = bars(page)
            stored = httpx.get(f"{live_profile.url}/api/profile", headers=auth).json()
            assert shown == pytest.approx({w["name"]: w["weight"] for w in stored["weights"]}, abs=1e-6)
            assert stored["choices"] == 3
            # The longest bar is the strongest weight.
            strongest = max(shown, key=lambda n: abs(shown[n]))
            drawn = dict(zip(shown, widths(page)))
            assert max(drawn, key=lambda n: drawn[n]) == strongest

            # With no persona picked, the next answer is decoded with the profile, and says so.
            page.click("#use-profile")
            assert page.locator("#personas input:checked").count() == 0
            page.fill("#input", "What is snow?")
            page.click("#send")
            answer = page.locator(".msg.assistant").last
            expect(answer).to_have_attribute("data-state", "done", timeout=180_000)
            assert "your profile" in answer.locator(".meta").text_content()
            page.locator("#compare-skip").click()  # the card offered after this answer: not now

            # Export (a download of the CLI's file), reset (the bars go back to zero), import (they come back).
            with page.expect_download() as download:
                page.click("#profile-export")
            saved = tmp_path / "exported.yaml"
            download.value.save_as(saved)
            from langchain_persona_judge.profiles import PreferenceProfile

            assert PreferenceProfile.load(saved).weights == pytest.approx(shown, abs=1e-9)
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#profile-reset")
            # A reset waits for the account's profile operation in progress (one at a time per account): here the
            # comparison the page asked for after the answer, decoding in the background though its card was
            # skipped; on a loaded machine that takes longer than expect()'s default 5 s.
            expect(page.locator("#profile-summary")).to_have_attribute("data-choices", "0", timeout=120_000)
            assert not any(bars(page).values())
            page.set_input_files("#profile-import", str(saved))
            expect(page.locator("#profile-summary")).to_have_attribute("data-choices", "3")
            assert bars(page) == pytest.approx(shown, abs=1e-9)
            # A corrupted file: the panel says why, and the profile stays.
            broken = tmp_path / "broken.yaml"
            broken.write_text("format: persona-judge-profile\nversion: : 1\n")
            page.set_input_files("#profile-import", str(broken))
            expect(page.locator("#profile-status")).to_contain_text("corrupted")
            assert bars(page) == pytest.approx(shown, abs=1e-9)
            problems = [p for p in problems if "422" not in p]  # the refused import, on the console
            assert not problems, problems
        finally:
            browser.close()
