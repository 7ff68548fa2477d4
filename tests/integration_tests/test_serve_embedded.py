"""The server on the real embedded SmolLM2 (llama.cpp, as ``auto`` picks on a CPU): an answer through it equals
ChatPersonaJudge's in process, and ``persona-judge serve`` starts, loads, answers and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from langchain_persona_judge import ChatPersonaJudge
from tests.serve_helpers import free_port, running_server

openai = pytest.importorskip("openai", reason="the client tests need the serve extra")
from langchain_persona_judge.serve import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.embedded

QUESTION = "Why is the sky blue?"
PREFERENCES = ["Explain it to a ten-year-old.", "concise"]


@pytest.fixture(scope="module")
def base_url(embedded_llamacpp: Any) -> Iterator[str]:
    # Loaded by name in the background, as `persona-judge serve` does (the same shared copy as the fixture's):
    # llama.cpp, what `auto` picks for the embedded GGUF on a CPU.
    app = create_app(ServeSettings(model=None, backend="llamacpp", device="cpu"))
    with running_server(app) as url:
        deadline = time.monotonic() + 120
        while httpx.get(url.removesuffix("/v1") + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.1)
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def in_process(**params: Any) -> str:
    llm = ChatPersonaJudge(backend="llamacpp", device="cpu", preferences=PREFERENCES, max_tokens=16, **params)
    return str(llm.invoke(QUESTION).content)


@pytest.mark.parametrize("params", [
    {"temperature": 0},
    {"temperature": 0.8, "seed": 7},
    {"temperature": 0, "combine": "product", "weights": [0.7, 0.3], "guidance": 1.5},
], ids=["greedy", "seeded-sampling", "product-guidance"])
def test_an_answer_through_the_server_equals_chat_persona_judge_s(client: Any, params: dict[str, Any]) -> None:
    expected = in_process(**params)
    openai_params = {k: params[k] for k in ("temperature", "seed") if k in params}
    extra = {k: v for k, v in params.items() if k not in openai_params}
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        extra_body={"preferences": PREFERENCES, **extra}, **openai_params,
    )
    assert answer.choices[0].message.content == expected
    judge = answer.model_extra["persona_judge"]
    assert judge["preferences"][0] == PREFERENCES[0] and judge["preferences"][1] != "concise"  # a registry persona
    assert judge["rule"] == params.get("combine", "judge") and judge["backend"] == "llamacpp"
    if params != {"temperature": 0}:
        return  # the stream is checked once: it is the same run, cut into chunks
    streamed = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        extra_body={"preferences": PREFERENCES, **extra}, stream=True, **openai_params,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_a_forced_tool_call_on_the_embedded_model(client: Any) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[tool], tool_choice="required", max_tokens=40, temperature=0)
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)


def test_the_serve_command_starts_loads_answers_and_stops(tmp_path: Any) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sekrit-key\n")
    port = free_port()
    command = [sys.executable, "-m", "langchain_persona_judge.cli", "serve", "--port", str(port), "--device", "cpu",
               "--api-keys", str(keys), "--log-level", "info"]  # info: the access log, which must hold no key
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/models").status_code == 401
        answer = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": "Bearer sekrit-key"},
                            json={"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 4
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
    assert "sekrit-key" not in output  # a key is never logged
