"""The Ray deployment's two halves without Ray: the web tier (RelayApp) in front of replicas that run the real app
in process (run_asgi) on a tiny random model, replicas that die at chosen moments, and the options that reach
Ray Serve. The real cluster is exercised in tests/integration_tests/test_serve_ray.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from langchain_persona_judge.cli.ask import UsageError
from langchain_persona_judge.cli.serve import build_parser, ray_options_from
from langchain_persona_judge.errors import InvalidOptionError, PersonaJudgeError
from tests.helpers import tiny_llama

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from langchain_persona_judge.serve import ServeSettings, create_app  # noqa: E402
from langchain_persona_judge.serve.errors import ApiError  # noqa: E402
from langchain_persona_judge.serve.ray_deploy import RayOptions, deployment_options  # noqa: E402
from langchain_persona_judge.serve.ray_front import (  # noqa: E402
    REPLICA_HEADER,
    REPLICA_MESSAGE,
    Lifespan,
    RelayApp,
    run_asgi,
)

USER = [{"role": "user", "content": "What is rain?"}]


class Died(Exception):
    """What a fake replica raises when it 'dies'."""


def classify(exc: BaseException) -> tuple[ApiError, bool]:
    if isinstance(exc, Died):
        return ApiError(503, "the replica is gone", code="replica_unavailable"), True
    return ApiError(500, "bug", code="internal_error"), False


class Replica:
    """A replica in this process: the app, run by run_asgi; it can die before its first message or after
    ``die_after`` messages of the app."""

    def __init__(self, app: Any, name: str, die_after: int | None = None, die_at_once: bool = False) -> None:
        self.app, self.name, self.die_after, self.die_at_once = app, name, die_after, die_at_once
        self.calls = 0

    def __call__(self, request: dict[str, Any]) -> Any:
        self.calls += 1
        replica = self

        class Stream:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True

            async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
                if replica.die_at_once:
                    raise Died("before the first message")
                yield [{"type": REPLICA_MESSAGE, "replica": replica.name}]
                sent = 0
                async for batch in run_asgi(replica.app, request):
                    for message in batch:
                        if replica.die_after is not None and sent >= replica.die_after:
                            raise Died("mid-answer")
                        sent += 1
                        yield [message]

        return Stream()


class Pool:
    """Dispatch to replicas in turn (the first may be a dead one)."""

    def __init__(self, *replicas: Replica) -> None:
        self.replicas = list(replicas)
        self.turn = 0

    def __call__(self, request: dict[str, Any]) -> Any:
        replica = self.replicas[self.turn % len(self.replicas)]
        self.turn += 1
        return replica(request)


@pytest.fixture(scope="module")
def model_app(tokenizer: Any) -> Any:
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="tiny", api_keys=frozenset()))


def post(front: Any, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", content=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **(headers or {})})

    return asyncio.run(go())


def events(response: httpx.Response) -> list[Any]:
    out = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_replica_s_answer_reaches_the_client_with_its_name(model_app: Any) -> None:
    front = RelayApp(Replica(model_app, "r1"), ServeSettings(), classify)
    answer = post(front, {"messages": USER, "max_tokens": 5, "temperature": 0})
    assert answer.status_code == 200, answer.text
    assert answer.headers[REPLICA_HEADER] == "r1"
    assert answer.json()["usage"]["completion_tokens"] <= 5
    streamed = events(post(front, {"messages": USER, "max_tokens": 5, "temperature": 0, "stream": True}))
    assert streamed[-1] == "[DONE]" and streamed[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed[:-1])
    assert text == answer.json()["choices"][0]["message"]["content"]  # the same greedy answer, relayed


def test_a_stream_whose_replica_dies_ends_with_an_error_event_then_done(model_app: Any) -> None:
    # The app's messages: the response start, the role chunk, then content: die after two of them.
    front = RelayApp(Replica(model_app, "r1", die_after=2), ServeSettings(), classify)
    response = post(front, {"messages": USER, "max_tokens": 8, "temperature": 0, "stream": True})
    assert response.status_code == 200
    got = events(response)
    assert got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == "replica_unavailable" and "r1" in got[-2]["error"]["message"]
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"  # what was relayed before the death stays


def test_an_answer_whose_replica_dies_before_its_headers_is_a_503_naming_the_replica(model_app: Any) -> None:
    front = RelayApp(Replica(model_app, "r1", die_after=0), ServeSettings(), classify)
    response = post(front, {"messages": USER, "max_tokens": 4})
    assert response.status_code == 503
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "r1" in error["message"]


def test_a_request_no_replica_received_goes_to_another(model_app: Any) -> None:
    dead, alive = Replica(model_app, "dead", die_at_once=True), Replica(model_app, "alive")
    front = RelayApp(Pool(dead, alive), ServeSettings(), classify)
    response = post(front, {"messages": USER, "max_tokens": 3})
    assert response.status_code == 200 and response.headers[REPLICA_HEADER] == "alive"
    assert (dead.calls, alive.calls) == (1, 1)
    # Never more than `retries` times: with only dead replicas the client gets the error.
    front = RelayApp(Pool(dead), ServeSettings(), classify, retries=2)
    assert post(front, {"messages": USER, "max_tokens": 3}).status_code == 503
    assert dead.calls == 1 + 3


def test_the_front_checks_the_key_and_the_body_cap_before_any_replica(model_app: Any) -> None:
    replica = Replica(model_app, "r1")
    front = RelayApp(replica, ServeSettings(api_keys=frozenset({"k"}), max_body_bytes=300), classify)
    assert post(front, {"messages": USER}).status_code == 401
    big = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert post(front, big, headers={"Authorization": "Bearer k"}).status_code == 413
    assert replica.calls == 0


def test_closing_a_replica_stream_tells_the_app_its_client_left() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append((await receive())["type"])  # waits until the client is gone

    async def go() -> None:
        stream = run_asgi(app, {"method": "GET", "path": "/", "headers": [], "body": b""})
        assert (await anext(stream))[0]["status"] == 200
        await stream.aclose()
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert seen == ["http.disconnect"]


def test_a_replica_runs_the_app_s_lifespan(model_app: Any) -> None:
    started: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            started.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    async def go() -> None:
        lifespan = Lifespan(app)
        await lifespan.startup()
        await lifespan.shutdown()

    asyncio.run(go())
    assert started == ["lifespan.startup", "lifespan.shutdown"]


def test_the_options_that_reach_ray_serve() -> None:
    settings = ServeSettings(max_concurrency=3, max_queue=10)
    fixed = deployment_options(settings, RayOptions(replicas=2), threads=1)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1}
    assert (fixed["max_ongoing_requests"], fixed["max_queued_requests"]) == (3, 10)
    scaled = deployment_options(settings, RayOptions(replicas=2, min_replicas=1, max_replicas=4), threads=2)
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                            "target_ongoing_requests": 3}
    assert "num_replicas" not in scaled and scaled["ray_actor_options"] == {"num_cpus": 2}
    on_gpu = deployment_options(ServeSettings(device="cuda"), RayOptions(replicas=2), threads=1)
    assert on_gpu["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    # Threads: the cores shared out among the most replicas, at least one; the flag wins.
    assert RayOptions(replicas=2).threads(cpus=8) == 4
    assert RayOptions(replicas=1, max_replicas=4).threads(cpus=2) == 1
    assert RayOptions(replicas=2, threads_per_replica=3).threads(cpus=2) == 3


def test_bad_ray_flags_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidOptionError, match="outside the autoscaling bounds"):
        RayOptions(replicas=5, max_replicas=4)
    with pytest.raises(InvalidOptionError, match="--replicas must be a positive integer"):
        RayOptions(replicas=0)
    assert issubclass(InvalidOptionError, PersonaJudgeError)
    with pytest.raises(UsageError, match="pass --replicas N too"):
        ray_options_from(build_parser().parse_args(["--max-replicas", "3"]))
    assert ray_options_from(build_parser().parse_args([])) is None
    options = ray_options_from(build_parser().parse_args(
        ["--replicas", "2", "--ray-address", "10.0.0.1:6379", "--threads-per-replica", "1"]))
    assert (options.replicas, options.ray_address, options.threads()) == (2, "10.0.0.1:6379", 1)


def test_a_replica_gathers_a_stream_s_chunks_into_fewer_messages() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(4):  # four chunks 5 ms apart, then the end
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def batches(coalesce: float) -> list[list[dict[str, Any]]]:
        request = {"method": "GET", "path": "/", "headers": [], "body": b""}
        return [batch async for batch in run_asgi(app, request, coalesce=coalesce)]

    each = asyncio.run(batches(0.0))
    gathered = asyncio.run(batches(0.2))
    assert sum(map(len, each)) == sum(map(len, gathered)) == 6  # nothing lost, in order
    assert b"".join(m.get("body", b"") for b in gathered for m in b) == b"0123"
    assert len(each) >= 5 and len(gathered) <= 3


class GatedReplica:
    """A replica that answers each request with a tiny JSON body once ``gate`` is open, recording the order in
    which requests reached it (the order the front admitted them) by their body's ``name``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.reached: list[str] = []

    def __call__(self, request: dict[str, Any]) -> Any:
        replica = self

        class Stream:
            def cancel(self) -> None:
                pass

            async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
                replica.reached.append(json.loads(request["body"])["name"])
                yield [{"type": REPLICA_MESSAGE, "replica": "gated"}]
                await replica.gate.wait()
                yield [{"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]},
                       {"type": "http.response.body", "body": b"{}", "more_body": False}]

        return Stream()


def lined_up_front(front: RelayApp, running: int, waiting: int) -> Any:
    async def wait() -> None:
        assert front.admission is not None
        for _ in range(3000):
            if front.admission.running == running and front.admission.waiting == waiting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{front.admission.running} running, {front.admission.waiting} waiting")

    return wait()


@pytest.mark.parametrize("keys", [False, True], ids=["by-user", "by-api-key"])
def test_the_front_admits_users_round_robin_and_refuses_a_full_queue(keys: bool) -> None:
    replica = GatedReplica()
    settings = ServeSettings(max_queue=5, api_keys=frozenset({"alice-key", "bob-key"}) if keys else frozenset())
    front = RelayApp(replica, settings, classify, slots=1)

    def request(name: str, user: str) -> tuple[dict[str, Any], dict[str, str]]:
        headers = {"Authorization": f"Bearer {user}-key"} if keys else {}
        # With keys the key decides: the body's user is the same for everyone and changes nothing.
        return {"name": name, "messages": USER, "user": "same" if keys else user}, headers

    async def go() -> tuple[list[int], list[str]]:
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            async def ask(name: str, user: str) -> int:
                body, headers = request(name, user)
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
                return response.status_code

            tasks = [asyncio.create_task(ask("alice0", "alice"))]
            await lined_up_front(front, 1, 0)
            for i, (name, user) in enumerate([("alice1", "alice"), ("alice2", "alice"), ("alice3", "alice"),
                                              ("bob", "bob")], start=1):
                tasks.append(asyncio.create_task(ask(name, user)))
                await lined_up_front(front, 1, i)
            # a sixth waiting request would pass max_queue=5? 4 wait now: one more fits, the one after is refused
            tasks.append(asyncio.create_task(ask("alice4", "alice")))
            await lined_up_front(front, 1, 5)
            body, headers = request("refused", "bob")
            refused = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            replica.gate.set()
            statuses = await asyncio.gather(*tasks)
        return statuses, replica.reached

    statuses, reached = asyncio.run(go())
    assert statuses == [200] * 6
    # alice0 held the slot and alice1 was first in line; then bob's turn, before the rest of alice's flood.
    assert reached == ["alice0", "alice1", "bob", "alice2", "alice3", "alice4"]
    assert front.admission is not None and front.admission.running == front.admission.waiting == 0


def test_a_client_gone_while_waiting_leaves_the_front_s_line() -> None:
    replica = GatedReplica()
    front = RelayApp(replica, ServeSettings(max_queue=4), classify, slots=1)

    async def go() -> None:
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json={"name": "a", "messages": USER}))
            await lined_up_front(front, 1, 0)
            gone = asyncio.create_task(client.post("/v1/chat/completions", json={"name": "b", "messages": USER}))
            await lined_up_front(front, 1, 1)
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            replica.gate.set()
            assert (await first).status_code == 200
            await lined_up_front(front, 0, 0)

    asyncio.run(go())
    assert replica.reached == ["a"]  # the request whose client left never reached a replica
