"""Real clients against a real server on loopback (uvicorn in a thread), on a tiny random model.

The ``openai`` SDK (sync and async, stream and not, tools, ``json_schema``, its exception classes) and LangChain's
``ChatOpenAI`` (invoke, stream, bind_tools, with_structured_output); admission (429 with Retry-After) and a client
that disconnects (its decode stops).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from langchain_persona_judge.runtime import admission_queue
from tests.helpers import tiny_llama
from tests.serve_helpers import WEATHER, running_server

openai = pytest.importorskip("openai", reason="the client tests need the serve extra")
langchain_openai = pytest.importorskip("langchain_openai", reason="the client tests need the serve extra")
from langchain_persona_judge.serve import ServeSettings, create_app  # noqa: E402

KEY = "test-key-123"
PREFERENCES = ["Be brief.", "Be playful."]
QUESTION = [{"role": "user", "content": "What is rain?"}]


class Rain(BaseModel):
    """Whether it rains."""

    rainy: bool = Field(description="Is it raining?")
    millimetres: int = Field(description="How much")


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(json_schema_extra={"enum": ["Paris", "Rome"]})


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def base_url(model: Any, tokenizer: Any) -> Iterator[str]:
    settings = ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="tiny", api_keys=frozenset({KEY}))
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


def create(client: Any, **kwargs: Any) -> Any:
    params = {"model": "tiny", "messages": QUESTION, "max_tokens": 6, "temperature": 0,
              "extra_body": {"preferences": PREFERENCES}}
    return client.chat.completions.create(**{**params, **kwargs})


# -- the openai SDK ----------------------------------------------------------------------------------------------


def test_openai_sync_answer_stream_and_async_agree(client: Any, base_url: str) -> None:
    whole = create(client)
    text = whole.choices[0].message.content
    assert isinstance(text, str) and text
    assert whole.usage.completion_tokens == 6 and whole.choices[0].finish_reason == "length"
    judge = whole.model_extra["persona_judge"]
    assert judge["rule"] == "judge" and judge["personas"] == [[p] for p in PREFERENCES]

    chunks = list(create(client, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    async def in_async() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        answer = await aclient.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0,
                                                       extra_body={"preferences": PREFERENCES})
        stream = await aclient.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0,
                                                       extra_body={"preferences": PREFERENCES}, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await aclient.close()
        return answer.choices[0].message.content, streamed

    assert asyncio.run(in_async()) == (text, text)


def test_openai_forced_tool_call(client: Any) -> None:
    answer = create(client, tools=[WEATHER], tool_choice="required", max_tokens=40)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")

    chunks = list(create(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                         max_tokens=40, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == ["get_weather"] and deltas[0].id.startswith("call_")
    assert json.loads(deltas[0].function.arguments)["city"] in ("Paris", "Rome")


def test_openai_json_schema_parses_into_the_model(client: Any) -> None:
    answer = client.chat.completions.parse(model="tiny", messages=QUESTION, max_tokens=40, temperature=0.9, seed=1,
                                           response_format=Rain)
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Rain)


def test_openai_exception_classes(client: Any, base_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        create(client, n=2)
    assert bad.value.param == "n" and bad.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        create(client, logprobs=True)
    with pytest.raises(openai.NotFoundError):
        create(client, model="gpt-4o")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in client.models.list()] == ["tiny"]


# -- LangChain's ChatOpenAI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(base_url: str) -> Any:
    return langchain_openai.ChatOpenAI(model="tiny", base_url=base_url, api_key=KEY, temperature=0, max_tokens=6,
                                       max_retries=0, extra_body={"preferences": PREFERENCES})


def test_chat_openai_invoke_and_stream_agree(chat: Any) -> None:
    message = chat.invoke("What is rain?")
    assert isinstance(message.content, str) and message.content
    assert message.usage_metadata["output_tokens"] == 6
    streamed = "".join(chunk.content for chunk in chat.stream("What is rain?"))
    assert streamed == message.content


def test_chat_openai_bind_tools_and_structured_output(chat: Any) -> None:
    chat = chat.model_copy(update={"max_tokens": 40})
    message = chat.bind_tools([GetWeather], tool_choice="any").invoke("Weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "GetWeather" and call["args"]["city"] in ("Paris", "Rome")
    structured = chat.model_copy(update={"temperature": 0.9, "seed": 2}).with_structured_output(Rain)
    assert isinstance(structured.invoke("Is it raining?"), Rain)
    via_tool = chat.with_structured_output(GetWeather, method="function_calling")
    assert via_tool.invoke("Weather in Rome?").city in ("Paris", "Rome")


# -- admission and disconnects -------------------------------------------------------------------------------------


@pytest.fixture
def slow(tokenizer: Any) -> Iterator[Any]:
    """A tiny model whose every forward takes 20 ms, counting its forwards, behind a server admitting one decode
    and queueing none."""
    model = tiny_llama(seed=5, vocab_size=len(tokenizer), eos_token_id=None)
    state = {"forwards": 0}

    def hook(module: Any, args: Any) -> None:
        state["forwards"] += 1
        time.sleep(0.02)

    handle = model.register_forward_pre_hook(hook)
    settings = ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="slow", max_concurrency=1, max_queue=0)
    with running_server(create_app(settings)) as url:
        yield url, model, state
    handle.remove()


def test_a_full_queue_is_429_with_retry_after_and_a_rate_limit_error(slow: Any) -> None:
    url, model, _ = slow
    body = {"model": "slow", "messages": QUESTION, "max_tokens": 200, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/chat/completions", json=body) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped iterator closes the stream, which cancels the decode
        next(lines)  # the decode holds the only slot now
        refused = http.post(f"{url}/chat/completions", json={**body, "stream": False, "max_tokens": 2})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=url, api_key="none", max_retries=0).chat.completions.create(
                model="slow", messages=QUESTION, max_tokens=2)
        assert admission_queue(model).running == 1  # the first decode was never disturbed


def test_a_client_that_disconnects_cancels_its_decode(slow: Any) -> None:
    url, model, state = slow
    body = {"model": "slow", "messages": QUESTION, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{url}/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
        # The connection is closed: the decode stops within a chunk and frees its slot.
        deadline = time.monotonic() + 5
        while admission_queue(model).running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission_queue(model).running == 0
        after = state["forwards"]
        time.sleep(0.3)
        assert state["forwards"] == after < 100  # nothing more decoded; far fewer than 400 tokens' forwards
        # A non-streaming request whose client gives up is cancelled too.
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{url}/chat/completions", json={**body, "stream": False}, timeout=0.5)
        deadline = time.monotonic() + 5
        while admission_queue(model).running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission_queue(model).running == 0
        assert http.post(f"{url}/chat/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200
