"""benchmarks/load.py's checks can fail: each is fed what a broken app would send, and the whole run is pointed
at an app whose isolation is broken on purpose, then at the real one (where every figure must be 0).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from benchmarks import load
from tests.helpers.chat_app import TEST_HOST, reset_admission_queue, server_module

A, B = load.Account(0, "a" * 32, "token-a"), load.Account(1, "b" * 32, "token-b")


def _refs() -> load.References:
    # Clients 0 and 1 belong to A and B; their (seeded) answers differ.
    return load.References([["Alpha answer."], ["Bravo answer."]], [0, 1])


def _answer(text: str, session: str, generation: str = "g" * 32) -> load.Answer:
    events = [("queued", {"generation_id": generation, "session_id": session}), ("token", {"text": text}),
              ("done", {"generation_id": generation, "session_id": session, "usage": {"output_tokens": 2}})]
    return load.Answer(ok=True, text=text, events=events, done=events[-1][1])


def test_an_answer_that_is_another_accounts_counts_as_a_cross_user_leak() -> None:
    registry, results = load.Registry({"s" * 32: 0}), load.Results()
    assert load.check_answer(_answer("Alpha answer.", "s" * 32), 0, A, "s" * 32, 0, _refs(), registry, results, "ok")
    assert (results.completed, results.cross_user_leaks, results.mixed_up) == (1, 0, 0)
    # Client 0 (account A) receives client 1's answer (account B's): a leak, not merely a mix-up.
    assert not load.check_answer(_answer("Bravo answer.", "s" * 32), 0, A, "s" * 32, 0, _refs(), registry, results,
                                 "leak")
    assert results.cross_user_leaks == 1
    # Some other wrong text is a mix-up.
    assert not load.check_answer(_answer("Charlie.", "s" * 32), 0, A, "s" * 32, 0, _refs(), registry, results, "mix")
    assert results.mixed_up == 1


def test_events_naming_another_accounts_conversation_are_a_leak() -> None:
    registry, results = load.Registry({"s" * 32: 0, "t" * 32: 1}), load.Results()
    assert not load.check_answer(_answer("Alpha answer.", "t" * 32), 0, A, "s" * 32, 0, _refs(), registry, results,
                                 "events")
    assert results.cross_user_leaks == 1


def test_a_listing_with_another_accounts_conversation_is_a_leak() -> None:
    registry, results = load.Registry({"s" * 32: 0, "t" * 32: 1}), load.Results()
    load.check_listing(["s" * 32], A, registry, results, "own")
    assert results.cross_user_leaks == 0
    load.check_listing(["s" * 32, "t" * 32], A, registry, results, "foreign")
    assert results.cross_user_leaks == 1


@pytest.mark.parametrize(("status", "leaks", "errors"), [(404, 0, 0), (200, 1, 0), (204, 1, 0), (500, 0, 1),
                                                         (401, 0, 1)])
def test_a_probe_of_another_accounts_data_must_answer_404(status: int, leaks: int, errors: int) -> None:
    results = load.Results()
    load.check_probe(status, "GET its conversation", results, "probe")
    assert (results.cross_user_leaks, results.errors, results.leak_probes) == (leaks, errors, 1)


def test_a_disconnect_counts_only_when_the_server_records_a_cancellation() -> None:
    left = load.Answer(text="Alp")  # the client left before done
    results = load.Results()
    assert load.check_cancelled({"state": "cancelled", "cancel_reason": "client disconnected"}, left, results, "ok")
    # Ran to the end although the client left (the old check took "completed" for freed): a failure now.
    assert not load.check_cancelled({"state": "completed", "cancel_reason": None}, left, results, "ran on")
    assert not load.check_cancelled({"state": "cancelled", "cancel_reason": "server shutdown"}, left, results, "why")
    assert results.disconnects_not_cancelled == 2
    # An answer whose done arrived before the client left is not held against the server.
    assert load.check_cancelled({"state": "completed"}, _answer("Alpha answer.", "s" * 32), results, "done first")
    assert results.disconnects_completed_first == 1


def test_clients_get_distinct_seeds() -> None:
    args = load.parser().parse_args(["--clients", "8", "--users", "4", "--seed", "5"])
    plan = load.scripts(4, 2)
    convos = load.conversations(plan, 8, args)
    assert [c.seed for c in convos] == list(range(5, 13))
    assert len({(c.script, c.seed) for c in convos}) == 8  # no two clients share a conversation


# -- whole runs -------------------------------------------------------------------------------------------------


async def _run_in_process(tmp_path: Any, break_isolation: bool, monkeypatch: pytest.MonkeyPatch) -> load.LoadRun:
    server = server_module()
    app = server.create_app(server.Settings(db_path=tmp_path / "chat.db", max_tokens=3, max_tokens_cap=8,
                                            preload=False, allowed_hosts=(TEST_HOST,), max_in_flight=8))
    service = app.state.service
    if break_isolation:  # the app forgets who owns what: every conversation and generation is anybody's
        async def owned(user_id: str, session_id: str) -> bool:
            return True

        monkeypatch.setattr(service.store, "session_owned", owned)
        monkeypatch.setattr(service, "generation_for", lambda user, gid: service.generations.get(gid))
    args = load.parser().parse_args(["--clients", "2", "--users", "2", "--duration", "1.5", "--max-tokens", "3",
                                     "--turns", "1", "--disconnect-every", "0", "--free-timeout", "20"])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}",
                                     timeout=120) as client:
            return await load.exercise(client, args)
    finally:
        for task in list(service._tasks):
            task.cancel()
        service.store.close()
        reset_admission_queue()


@pytest.mark.embedded
async def test_a_run_against_an_app_without_isolation_reports_leaks(tmp_path: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    broken = await _run_in_process(tmp_path / "broken", True, monkeypatch)
    assert broken.results.cross_user_leaks > 0, broken.results.problems
    assert any("of another account answered 200" in p for p in broken.results.problems)


@pytest.mark.embedded
async def test_a_run_against_the_app_reports_no_leaks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = await _run_in_process(tmp_path / "fine", False, monkeypatch)
    r = run.results
    assert (r.cross_user_leaks, r.mixed_up, r.errors) == (0, 0, 0), r.problems
    assert r.completed >= 2 and r.leak_probes >= 5


@pytest.mark.embedded
def test_a_short_real_run_over_two_accounts_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark as people run it: the app in a subprocess, streaming, disconnects, two accounts."""
    code = load.main(["--clients", "2", "--users", "2", "--duration", "4", "--max-tokens", "6", "--turns", "1",
                      "--disconnect-every", "2", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["passed"], report["problems"]
    assert report["users"] == 2 and report["cross_user_leaks"] == 0 and report["leak_probes"] >= 3
    assert report["disconnects"] >= 1 and report["disconnects_not_cancelled"] == 0
    assert report["completed"] >= 1 and report["mixed_up"] == 0 and report["errors"] == 0


def _learning_app(choices_after: int, comparison_status: int = 201) -> httpx.MockTransport:
    """An app answering the learning calls: a comparison, the profile (3 choices), a pick (``choices_after``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/profile/comparisons":
            return httpx.Response(comparison_status, json={"id": "c" * 32, "answer_a": "A.", "answer_b": "B."})
        if request.url.path == "/api/profile":
            return httpx.Response(200, json={"choices": 3})
        assert request.url.path == f"/api/profile/comparisons/{'c' * 32}/choice"
        assert json.loads(request.content)["choice"] in ("a", "b")
        return httpx.Response(200, json={"choices": choices_after})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("choices_after", "status", "picks", "errors"),
                         [(4, 201, 1, 0), (5, 201, 1, 0), (3, 201, 0, 1), (4, 429, 0, 0), (4, 500, 0, 1)])
async def test_learning_under_load_counts_a_pick_only_when_the_profile_took_it(
        choices_after: int, status: int, picks: int, errors: int) -> None:
    import random

    results = load.Results()
    async with httpx.AsyncClient(transport=_learning_app(choices_after, status), base_url="http://app") as client:
        await load.learn_once(client, A, random.Random(0), results, "learn")
    assert (results.picks, results.errors) == (picks, errors)
    assert results.comparisons == (1 if status == 201 else 0)
