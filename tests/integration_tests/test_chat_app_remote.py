"""The chat app on a remote model tier (CHAT_MODEL_URL): what only that tier does, against a real Persona-judge server
on loopback (uvicorn in a thread) serving a tiny random model whose forwards can be held on a gate.

The chat flow itself (answers streamed, stored, a second turn that sees the first, conversations that do not mix)
runs both ways in test_chat_app.py; here: the server's full queue reaches the client as a 429 (with the server's
Retry-After) and nothing is stored; a server that cannot be reached is a 503 saying so; a cancelled answer closes
its upstream stream (the server's slot is freed, its decode stops); the app's accounts reach the server's fair
admission as ``user`` (one account's flood does not starve another's message).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from langchain_persona_judge.runtime import admission_queue
from tests.helpers import tiny_llama
from tests.helpers.chat_app import TEST_HOST, free_port, parse_sse, server_module
from tests.serve_helpers import running_server

pytest.importorskip("fastapi", reason="the chat app and the server need fastapi")
from langchain_persona_judge.serve import ServeSettings, create_app  # noqa: E402


@contextmanager
def model_server(tokenizer: Any, *, delay: float = 0.0, **settings: Any) -> Iterator[tuple[str, Any, Any]]:
    """A Persona-judge server on a tiny model: ``(its /v1 URL, the model, state)``; ``state["gate"]`` holds every
    forward until set (set from the start unless the test clears it), ``state["forwards"]`` counts them."""
    model = tiny_llama(seed=11, vocab_size=len(tokenizer), eos_token_id=None)
    state: dict[str, Any] = {"gate": threading.Event(), "forwards": 0}
    state["gate"].set()

    def hook(module: Any, args: Any) -> None:
        state["forwards"] += 1
        if not state["gate"].wait(timeout=60):
            raise RuntimeError("the test never opened the gate")
        if delay:
            time.sleep(delay)

    handle = model.register_forward_pre_hook(hook)
    app = create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="tiny", **settings))
    try:
        with running_server(app) as url:
            yield url, model, state
    finally:
        state["gate"].set()
        handle.remove()


@contextmanager
def chat_app(tmp_path: Path, url: str, **settings: Any) -> Iterator[Any]:
    server = server_module()
    values = {"max_tokens": 4, "max_tokens_cap": 300, "temperature": 0.0, "max_concurrent": 4, "max_queue": 16,
              "max_in_flight": 4, **settings}
    application = server.create_app(server.Settings(db_path=tmp_path / "chat.db", model_url=url, preload=False,
                                                    allowed_hosts=(TEST_HOST,), **values))
    try:
        yield application
    finally:
        application.state.service.profiles.close()
        application.state.service.store.close()


def forbid_loading_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the chat app loads a model in this process (a remote tier decodes, counts and names remotely)."""
    import langchain_persona_judge.runtime.models as models

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the chat app loaded a model in its own process")

    monkeypatch.setattr(models, "load_model", refuse)


@asynccontextmanager
async def signed_in(application: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the chat app, signed in as a new account."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=f"http://{TEST_HOST}",
                                 timeout=60) as c:
        token = (await c.post("/api/users")).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


async def new_session(c: httpx.AsyncClient) -> str:
    response = await c.post("/api/sessions")
    assert response.status_code == 201
    return response.json()["id"]


async def ask(c: httpx.AsyncClient, session: str, content: str, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    response = await c.post(f"/api/sessions/{session}/messages",
                            json={"content": content, "personas": ["concise"], **extra})
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


async def until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_an_answer_is_decoded_by_the_server_with_the_app_s_options(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_loading_a_model(monkeypatch)
    with model_server(tokenizer) as (url, model, _), chat_app(tmp_path, url) as application:
        async with signed_in(application) as c:
            config = (await c.get("/api/config")).json()
            assert config["model"] == "tiny"  # the server's model, asked of it
            session = await new_session(c)
            events = await ask(c, session, "What is rain?", personas=["concise", "friendly"], max_tokens=3)
            names = [name for name, _ in events]
            assert names[:2] == ["queued", "start"] and names[-1] == "done", names
            done = events[-1][1]
            assert done["usage"]["output_tokens"] == 3 and done["finish_reason"] == "length"
            assert done["persona_judge"]["personas"] == 2  # both personas reached the server
            assert done["persona_judge"]["repetition_penalty"] == 1.2  # the app's default travels with the request
            assert "provenance" not in done  # the server sends no trace
            text = "".join(d["text"] for name, d in events if name == "token")
            stored = (await c.get(f"/api/sessions/{session}")).json()["messages"]
            assert [(m["role"], m["content"]) for m in stored] == [("user", "What is rain?"), ("assistant", text)]


async def test_the_server_s_full_queue_is_a_429_with_its_retry_after_and_nothing_stored(
    tmp_path: Path, tokenizer: Any
) -> None:
    with model_server(tokenizer, max_concurrency=1, max_queue=0) as (url, model, state), \
            chat_app(tmp_path, url) as application:
        async with signed_in(application) as a, signed_in(application) as b:
            first, second = await new_session(a), await new_session(b)
            state["gate"].clear()
            busy = asyncio.create_task(ask(a, first, "Tell me about dragons."))
            await until(lambda: admission_queue(model).running == 1, "the first answer to hold the server's slot")
            events = await ask(b, second, "Hi")
            assert [name for name, _ in events] == ["queued", "error"], events
            error = events[-1][1]
            assert error["status"] == 429 and error["retry_after"] == 1  # the server's Retry-After, passed on
            assert (await b.get(f"/api/sessions/{second}")).json()["messages"] == []  # the message taken back
            state["gate"].set()
            assert (await busy)[-1][0] == "done"


async def test_an_unreachable_model_server_is_a_503_saying_so(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_loading_a_model(monkeypatch)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with chat_app(tmp_path, url) as application:
        async with signed_in(application) as c:
            session = await new_session(c)
            response = await c.post(f"/api/sessions/{session}/messages", json={"content": "Hi"})
            assert response.status_code == 503, response.text
            assert response.json()["detail"] == "The model server is unreachable; retry in a moment."
            assert int(response.headers["retry-after"]) >= 1
            assert (await c.get(f"/api/sessions/{session}")).json()["messages"] == []
            assert (await c.get("/api/config")).json()["model"].startswith("unknown")


async def test_a_cancelled_answer_closes_its_upstream_stream(tmp_path: Path, tokenizer: Any) -> None:
    with model_server(tokenizer, delay=0.02, max_concurrency=1) as (url, model, state), \
            chat_app(tmp_path, url) as application:
        service = application.state.service
        async with signed_in(application) as c:
            session = await new_session(c)
            answer = asyncio.create_task(ask(c, session, "Tell me a long story.", max_tokens=200))
            await until(lambda: any(g.pieces >= 2 for g in service.generations.values()), "the answer's first tokens")
            assert (await c.delete(f"/api/sessions/{session}")).json()["cancelled"] == 1
            await answer
            # The app closed its stream to the server: the server's decode stops and frees its slot.
            await until(lambda: admission_queue(model).running == 0, "the server to free the slot", timeout=5)
            after = state["forwards"]
            await asyncio.sleep(0.3)
            assert state["forwards"] == after < 150  # nothing more decoded; far fewer than 200 tokens' forwards
            gen = next(iter(service.generations.values()))
            assert gen.state == "cancelled" and gen.cancel_reason == "conversation deleted"


async def test_the_app_s_accounts_reach_the_server_s_fair_admission(tmp_path: Path, tokenizer: Any) -> None:
    with model_server(tokenizer, max_concurrency=1) as (url, model, state), chat_app(tmp_path, url) as application:
        async with signed_in(application) as a, signed_in(application) as b:
            sessions = [await new_session(a) for _ in range(3)] + [await new_session(b)]
            order: list[str] = []

            async def send(c: httpx.AsyncClient, session: str, name: str) -> None:
                events = await ask(c, session, f"Question {name}")
                assert events[-1][0] == "done", events
                order.append(name)

            state["gate"].clear()
            queue = admission_queue(model)
            tasks = []
            for i, (c, name) in enumerate([(a, "a1"), (a, "a2"), (a, "a3"), (b, "b1")]):
                tasks.append(asyncio.create_task(send(c, sessions[i], name)))
                await until(lambda i=i: queue.running == 1 and queue.waiting == i, f"{name} to be in line")
            state["gate"].set()
            await asyncio.gather(*tasks)
            # a1 held the slot and a2 was next in line; then it is b's turn, before the rest of a's flood.
            assert order == ["a1", "a2", "b1", "a3"]


# -- the remote client's error mapping, on canned answers (no server) ----------------------------------------------


def canned(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
    from examples.chat_app.models import RemoteModel

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers=headers or {})

    model = RemoteModel("http://model.test/v1/", "sk-test", defaults={"temperature": 0.5, "repetition_penalty": None},
                        transport=httpx.MockTransport(handler))
    return model, seen


async def drain(model: Any) -> list[Any]:
    return [item async for item in model.stream([{"role": "user", "content": "Hi"}], {"preferences": ["concise"]},
                                                user="u1")]


def error_body(code: str, status_type: str = "invalid_request_error", param: str | None = None) -> bytes:
    import json

    return json.dumps({"error": {"message": "no", "type": status_type, "param": param, "code": code}}).encode()


async def test_the_remote_client_sends_the_request_the_server_reads() -> None:
    import json

    from examples.chat_app.models import Ending

    stream = (b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
              b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
              b'data: {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]}\n\n'
              b'data: {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], '
              b'"persona_judge": {"statistics": {"personas": 1}, "replica": "r1"}}\n\n'
              b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}\n\n'
              b'data: [DONE]\n\n')
    model, seen = canned(200, stream, {"content-type": "text/event-stream"})
    items = await drain(model)
    assert items[:3] == ["", "Hel", "lo"] and "".join(items[:-1]) == "Hello"  # "" first: the answer has begun
    ending = items[-1]
    assert isinstance(ending, Ending) and ending.usage == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    assert ending.metadata["finish_reason"] == "stop" and ending.metadata["persona_judge"] == {"personas": 1}
    request = seen[0]
    assert str(request.url) == "http://model.test/v1/chat/completions"  # a /v1 base URL works as the root does
    assert request.headers["authorization"] == "Bearer sk-test"
    body = json.loads(request.content)
    assert body["user"] == "u1" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["preferences"] == ["concise"] and body["temperature"] == 0.5
    assert "repetition_penalty" not in body  # None: the server's default


@pytest.mark.parametrize(("status", "body", "headers", "kind", "retry_after"), [
    (429, error_body("queue_full", "rate_limit_error"), {"retry-after": "7"}, "ModelBusyError", 7),
    (503, error_body("model_loading", "server_error"), {"retry-after": "3"}, "ModelUnavailableError", 3),
    (504, error_body("timeout", "server_error"), {}, "RequestTimeoutError", None),
    (401, error_body("invalid_api_key", "authentication_error"), {}, "ModelTierError", None),
    (400, error_body("invalid_value", param="profile"), {}, "ModelTierError", None),
    (500, b"<html>proxy error</html>", {}, "ModelTierError", None),
])
async def test_the_remote_client_maps_the_server_s_errors(status: int, body: bytes, headers: dict[str, str],
                                                          kind: str, retry_after: int | None) -> None:
    model, _ = canned(status, body, headers)
    with pytest.raises(Exception) as caught:
        await drain(model)
    assert type(caught.value).__name__ == kind
    assert getattr(caught.value, "retry_after", None) == retry_after
    if status == 401:
        assert "CHAT_MODEL_API_KEY" in caught.value.public and "sk-test" not in caught.value.public
    if status == 400:
        assert "profile" in caught.value.public


async def test_a_stream_cut_short_or_failing_is_an_error_not_an_answer() -> None:
    cut = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'  # no finish, no [DONE]
    model, _ = canned(200, cut, {"content-type": "text/event-stream"})
    with pytest.raises(Exception, match="ended the stream") as caught:
        await drain(model)
    assert type(caught.value).__name__ == "ModelUnavailableError"
    failing = cut + b'data: ' + error_body("queue_full", "rate_limit_error") + b'\n\ndata: [DONE]\n\n'
    model, _ = canned(200, failing, {"content-type": "text/event-stream"})
    with pytest.raises(Exception) as caught:
        await drain(model)
    assert type(caught.value).__name__ == "ModelBusyError"


async def test_a_connection_lost_mid_answer_is_a_dropped_answer_not_an_unreachable_server() -> None:
    from examples.chat_app.models import RemoteModel

    class CutStream(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=CutStream(), headers={"content-type": "text/event-stream"})

    model = RemoteModel("http://model.test", transport=httpx.MockTransport(handler))
    pieces: list[Any] = []
    with pytest.raises(Exception) as caught:
        async for item in model.stream([{"role": "user", "content": "Hi"}], {}, user="u1"):
            pieces.append(item)
    assert pieces == ["Hel"]
    assert type(caught.value).__name__ == "ModelUnavailableError" and "dropped the answer" in caught.value.public


def test_chat_model_url_must_be_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = server_module().Settings
    for bad in ("ftp://models", "127.0.0.1:8000", "http://"):
        monkeypatch.setenv("CHAT_MODEL_URL", bad)
        with pytest.raises(SystemExit, match="CHAT_MODEL_URL"):
            settings.from_env()
    monkeypatch.setenv("CHAT_MODEL_URL", "http://models.internal:8000/v1")
    monkeypatch.setenv("CHAT_MODEL_API_KEY", "sk-1")
    loaded = settings.from_env()
    assert loaded.model_url == "http://models.internal:8000/v1" and loaded.model_api_key == "sk-1"
