"""The server's fair admission: waiting requests are served round-robin by the body's ``user`` (or, on a server
with API keys, by the key), so one user flooding the queue does not starve another; a full queue is 429.

A tiny random model whose forwards wait on a gate holds the only slot while the test lines requests up, so the
order in which they are decoded depends on the admission queue alone, not on timing. The order is read from the
model's prefill forwards (each request's prompt has its own length), not from when the HTTP answers come back:
two answers finishing close together may resume their clients in either order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from langchain_persona_judge.runtime import admission_queue
from tests.helpers import tiny_llama

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from langchain_persona_judge.serve import ServeSettings, create_app  # noqa: E402
from langchain_persona_judge.serve.app import admission_key  # noqa: E402

QUESTION = [{"role": "user", "content": "What is rain?"}]


@pytest.fixture
def gated(tokenizer: Any) -> Iterator[tuple[Any, threading.Event]]:
    """A tiny model whose every forward waits until the gate is open; ``model.prefills`` lists the prompt length
    of every prefill forward (more than one position), in the order they ran."""
    model = tiny_llama(seed=3, vocab_size=len(tokenizer), eos_token_id=None)
    model.prefills = []
    gate = threading.Event()

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        if not gate.wait(timeout=60):
            raise RuntimeError("the test never opened the gate")
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is not None and ids.shape[-1] > 1:
            model.prefills.append(int(ids.shape[-1]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    yield model, gate
    gate.set()
    handle.remove()


def serve(model: Any, tokenizer: Any, **settings: Any) -> Any:
    return create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="gated", max_concurrency=1,
                                    **settings))


async def lined_up(model: Any, waiting: int) -> None:
    """Until one request holds the only slot and ``waiting`` wait for it."""
    queue = admission_queue(model)
    deadline = time.monotonic() + 30
    while not (queue.running == 1 and queue.waiting == waiting):
        assert time.monotonic() < deadline, f"{queue.running} running, {queue.waiting} waiting"
        await asyncio.sleep(0.01)


async def answered_in_order(app: Any, model: Any, gate: threading.Event,
                            flood: list[dict[str, Any]], late: list[dict[str, Any]]) -> list[str]:
    """Send ``flood`` (the first takes the slot, the rest wait), then ``late``, then open the gate; the requests'
    names (``name`` in each) in the order they were decoded (request i's question ends in i extra words, so its
    prefill is the i-th shortest)."""
    requests = flood + late
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        async def ask(request: dict[str, Any]) -> None:
            index = requests.index(request)
            messages = [{"role": "user", "content": "What is rain?" + " more" * index}]
            body = {"model": "gated", "messages": messages, "max_tokens": 2, **request.get("body", {})}
            response = await client.post("/v1/chat/completions", json=body, headers=request.get("headers", {}))
            assert response.status_code == 200, response.text

        tasks = [asyncio.create_task(ask(flood[0]))]
        await lined_up(model, 0)
        for i, request in enumerate(flood[1:] + late, start=1):
            tasks.append(asyncio.create_task(ask(request)))
            await lined_up(model, i)  # one at a time: their arrival order is the order sent
        gate.set()
        await asyncio.gather(*tasks)
    lengths = sorted(set(model.prefills))
    assert len(lengths) == len(model.prefills) == len(requests), f"prefills {model.prefills}: not one per request"
    return [requests[lengths.index(n)]["name"] for n in model.prefills]


async def test_one_user_flooding_does_not_starve_another(gated: Any, tokenizer: Any) -> None:
    model, gate = gated
    flood = [{"name": f"alice{i}", "body": {"user": "alice"}} for i in range(4)]
    order = await answered_in_order(serve(model, tokenizer), model, gate, flood, [{"name": "bob",
                                                                                   "body": {"user": "bob"}}])
    # alice0 held the slot; alice1 was first in line; then it is bob's turn, before the rest of alice's flood.
    assert order == ["alice0", "alice1", "bob", "alice2", "alice3"]


async def test_without_a_user_every_request_is_one_anonymous_line(gated: Any, tokenizer: Any) -> None:
    model, gate = gated
    flood = [{"name": f"anon{i}"} for i in range(4)]
    order = await answered_in_order(serve(model, tokenizer), model, gate, flood, [{"name": "late"}])
    assert order == ["anon0", "anon1", "anon2", "anon3", "late"]  # first come, first served


async def test_with_api_keys_the_key_is_the_user(gated: Any, tokenizer: Any) -> None:
    model, gate = gated
    app = serve(model, tokenizer, api_keys=frozenset({"key-one", "key-two"}))
    one, two = {"authorization": "Bearer key-one"}, {"authorization": "Bearer key-two"}
    flood = [{"name": f"one{i}", "headers": one, "body": {"user": "alice"}} for i in range(4)]
    late = [{"name": "one-as-bob", "headers": one, "body": {"user": "bob"}},  # another user name, the same key
            {"name": "two", "headers": two, "body": {"user": "alice"}}]  # the same user name, another key
    order = await answered_in_order(app, model, gate, flood, late)
    # key-two's request is served in its turn; key-one's holder cannot jump the line by naming another user.
    assert order == ["one0", "one1", "two", "one2", "one3", "one-as-bob"]


async def test_a_full_queue_is_429_with_retry_after_whoever_asks(gated: Any, tokenizer: Any) -> None:
    model, gate = gated
    app = serve(model, tokenizer, max_queue=1)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        body = {"model": "gated", "messages": QUESTION, "max_tokens": 2}
        first = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "user": "alice"}))
        await lined_up(model, 0)
        second = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "user": "alice"}))
        await lined_up(model, 1)
        for user in ("alice", "bob"):
            refused = await client.post("/v1/chat/completions", json={**body, "user": user})
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        assert (await first).status_code == (await second).status_code == 200


def test_the_admission_key_never_holds_an_api_key() -> None:
    assert admission_key(None, None) is None
    assert admission_key(None, "alice") == "user:alice"
    keyed = admission_key("secret-key-123", "alice")
    assert keyed is not None and "secret" not in keyed and "alice" not in keyed
    assert keyed == admission_key("secret-key-123", "bob") != admission_key("other-key", "alice")
