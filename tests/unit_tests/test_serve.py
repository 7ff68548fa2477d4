"""The server's protocol and errors, through httpx's ASGI transport on a tiny random model (no socket, no GGUF).

Every malformed request gets a 4xx in OpenAI's error shape naming the field, never a 500; authentication, the
body cap and the loading state answer with the statuses the SDKs map.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from langchain_persona_judge.cli import main
from langchain_persona_judge.cli.ask import UsageError
from langchain_persona_judge.cli.serve import build_parser, settings_from
from langchain_persona_judge.errors import InvalidOptionError
from tests.helpers import tiny_llama
from tests.serve_helpers import WEATHER

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from langchain_persona_judge.serve import ServeSettings, create_app, is_loopback, read_api_keys  # noqa: E402

USER = [{"role": "user", "content": "What is rain?"}]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)


def call(app: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            content = raw if raw is not None else None if body is None else json.dumps(body).encode()
            hdrs = {"content-type": "application/json", **(headers or {})}
            return await client.request(method, path, content=content, headers=hdrs)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def app(model: Any, tokenizer: Any) -> Any:
    return create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, served_name="tiny", max_body_bytes=20_000))


def post(app: Any, body: Any = None, **kwargs: Any) -> httpx.Response:
    return call(app, "POST", "/v1/chat/completions", body, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert "Traceback" not in error["message"] and error["message"]
    if param is not None:
        assert param.split("[")[0].split(".")[0] in error["message"]  # the message names the field too
    return error


# -- malformed requests: a table ---------------------------------------------------------------------------------

MALFORMED: list[tuple[str, Any, int, str | None]] = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("not UTF-8", b'{"messages": "\xff"}', 400, None),
    ("no messages", {"model": "tiny"}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("messages not a list", {"messages": "hi"}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "bot", "content": "hi"}]}, 400, "messages[0].role"),
    ("content of a wrong type", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content"),
    ("every message empty", {"messages": [{"role": "user", "content": "  "}]}, 400, "messages"),
    ("tool turn without id", {"messages": [*USER, {"role": "tool", "content": "4"}]}, 400, "messages[1].tool_call_id"),
    ("call arguments not JSON", {"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     400, "messages[1].tool_calls[0].function.arguments"),
    ("temperature a string", {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("temperature negative", {"messages": USER, "temperature": -1}, 400, "temperature"),
    ("top_p above 1", {"messages": USER, "top_p": 1.5}, 400, "top_p"),
    ("max_tokens zero", {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens beyond the context", {"messages": USER, "max_tokens": 100_000}, 400, "max_tokens"),
    ("max_completion_tokens beyond the context", {"messages": USER, "max_completion_tokens": 100_000}, 400,
     "max_completion_tokens"),
    ("conversation beyond the context", {"messages": [{"role": "user", "content": "rain " * 2000}]}, 400, "messages"),
    ("five stop strings", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("seed a float", {"messages": USER, "seed": 1.5}, 400, "seed"),
    ("unknown persona", {"messages": USER, "preferences": ["nosuchpersona"]}, 400, "preferences"),
    ("preferences a string", {"messages": USER, "preferences": "concise"}, 400, "preferences"),
    ("preference a number", {"messages": USER, "preferences": ["concise", 3]}, 400, "preferences[1]"),
    ("persona pair of one", {"messages": USER, "preferences": [["expert"]]}, 400, "preferences[0]"),
    ("persona pair, variables not an object", {"messages": USER, "preferences": [["expert", "biology"]]}, 400,
     "preferences[0]"),
    ("persona pair naming no persona", {"messages": USER, "preferences": [["nosuchpersona", {}]]}, 400,
     "preferences[0]"),
    ("persona pair with a misspelt variable", {"messages": USER, "preferences": ["concise", ["expert", {"feild": "x"}]]},
     400, "preferences[1]"),
    ("persona pair with a list value", {"messages": USER, "preferences": [["expert", {"field": ["a"]}]]}, 400,
     "preferences[0]"),
    ("unknown schedule", {"messages": USER, "schedule": "fast"}, 400, "schedule"),
    ("unknown combine rule", {"messages": USER, "combine": "vote"}, 400, "combine"),
    ("weights for the wrong number of personas", {"messages": USER, "preferences": ["concise", "humor", "formal"],
                                                  "combine": "product", "weights": [1, 2]}, 400, "weights"),
    ("guidance infinite", {"messages": USER, "guidance": "Infinity"}, 400, "guidance"),
    ("profile not a profile", {"messages": USER, "profile": {"weights": [1]}}, 400, "profile"),
    ("tool schema not an object", {"messages": USER, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": "x"}}]}, 400, "tools[0].function.parameters"),
    ("tool name with spaces", {"messages": USER, "tools": [
        {"type": "function", "function": {"name": "get weather"}}]}, 400, "tools[0].function.name"),
    ("tool schema the grammar cannot compile", {"messages": USER, "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "nonsense"}}}}}]}, 400, "tools"),
    ("tool_choice naming no tool", {"messages": USER, "tools": [WEATHER],
                                    "tool_choice": {"type": "function", "function": {"name": "g"}}},
     400, "tool_choice"),
    ("tool_choice required without tools", {"messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    ("unknown response format", {"messages": USER, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    ("json_schema without a schema object", {"messages": USER, "response_format": {"type": "json_schema"}}, 400,
     "response_format.json_schema"),
    ("unknown field", {"messages": USER, "temprature": 0.2}, 400, "temprature"),
    ("n=2", {"messages": USER, "n": 2}, 400, "n"),
    ("logprobs", {"messages": USER, "logprobs": True}, 400, "logprobs"),
    ("top_logprobs", {"messages": USER, "top_logprobs": 3}, 400, "top_logprobs"),
    ("logit_bias", {"messages": USER, "logit_bias": {"42": 5}}, 400, "logit_bias"),
    ("frequency_penalty", {"messages": USER, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("audio modality", {"messages": USER, "modalities": ["text", "audio"]}, 400, "modalities"),
    ("legacy functions", {"messages": USER, "functions": [{"name": "f"}]}, 400, "functions"),
    ("unknown model", {"messages": USER, "model": "gpt-4o"}, 404, "model"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_a_malformed_request_gets_a_4xx_naming_the_field(app: Any, case: str, body: Any, status: int,
                                                         param: str | None) -> None:
    raw = body if isinstance(body, bytes) else None
    response = post(app, None if raw is not None else body, raw=raw)
    assert_openai_error(response, status, param)


def test_a_body_over_the_cap_is_413_before_it_is_parsed(app: Any) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    error = assert_openai_error(post(app, raw=big), 413, None)
    assert "20000 bytes" in error["message"]
    # Streamed without a Content-Length header: counted as it arrives.
    async def chunked() -> httpx.Response:
        async def parts() -> Any:
            for _ in range(30):
                yield b" " * 1000

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", content=parts())

    assert_openai_error(asyncio.run(chunked()), 413, None)


# -- answers ------------------------------------------------------------------------------------------------------


def test_a_completion_has_openai_s_shape_usage_and_the_persona_judge_object(app: Any) -> None:
    body = {"model": "tiny", "messages": USER, "max_tokens": 6, "temperature": 0,
            "preferences": ["Be brief.", "Be playful."]}
    response = post(app, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "tiny" and answer["id"].startswith("chatcmpl-")
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    judge = answer["persona_judge"]
    assert judge["rule"] == "judge" and judge["personas"] == [["Be brief."], ["Be playful."]]
    assert judge["backend"] == "transformers" and judge["replica"]
    assert judge["statistics"]["emitted"] == usage["completion_tokens"]
    assert 0 <= judge["statistics"]["acceptance_rate"] <= 1


def test_one_preference_is_plain_decoding_and_says_so(app: Any) -> None:
    answer = post(app, {"messages": USER, "max_tokens": 4, "temperature": 0, "preferences": ["Be brief."]}).json()
    assert answer["persona_judge"]["rule"] == "plain"


def test_the_stream_ends_with_done_and_carries_usage_when_asked(app: Any) -> None:
    base = {"messages": USER, "max_tokens": 6, "temperature": 0, "preferences": ["Be brief.", "Be playful."]}
    whole = post(app, base).json()
    response = post(app, {**base, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]  # greedy: the same answer either way
    last_content = [c for c in chunks if c["choices"]][-1]
    assert last_content["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last_content["persona_judge"]["personas"] == whole["persona_judge"]["personas"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_without_include_usage_no_usage_chunk(app: Any) -> None:
    response = post(app, {"messages": USER, "max_tokens": 3, "stream": True})
    chunks = [json.loads(line[6:]) for line in response.text.split("\n\n") if line and line != "data: [DONE]"]
    assert all(c["choices"] for c in chunks)


def test_forced_tool_call_parses_and_finishes_with_tool_calls(app: Any) -> None:
    answer = post(app, {"messages": USER, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 40,
                        "temperature": 0}).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls", answer
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome")
    assert choice["message"]["content"] is None


def test_json_schema_response_always_parses(app: Any) -> None:
    schema = {"type": "object", "properties": {"rainy": {"type": "boolean"}, "mm": {"type": "integer"}},
              "required": ["rainy", "mm"], "additionalProperties": False}
    answer = post(app, {"messages": USER, "max_tokens": 40, "temperature": 0.8, "seed": 3, "response_format": {
        "type": "json_schema", "json_schema": {"name": "Rain", "schema": schema, "strict": True}}}).json()
    parsed = json.loads(answer["choices"][0]["message"]["content"])
    assert set(parsed) == {"rainy", "mm"} and isinstance(parsed["rainy"], bool) and isinstance(parsed["mm"], int)


def test_a_tool_call_history_is_read(app: Any, tokenizer: Any) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    response = post(app, {"messages": messages, "tools": [WEATHER], "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    # The result reached the prompt: the same conversation without it reads fewer tokens.
    shorter = post(app, {"messages": messages[:2], "tools": [WEATHER], "max_tokens": 4, "temperature": 0}).json()
    assert response.json()["usage"]["prompt_tokens"] > shorter["usage"]["prompt_tokens"]


def test_json_object_response_is_a_json_object(app: Any) -> None:
    answer = post(app, {"messages": USER, "max_tokens": 60, "temperature": 0.8, "seed": 5,
                        "response_format": {"type": "json_object"}}).json()
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)


def test_stop_strings_seed_and_developer_role_are_honoured(app: Any) -> None:
    base = {"messages": [{"role": "developer", "content": "Answer briefly."}, *USER], "max_tokens": 12,
            "temperature": 1.0, "seed": 11}
    first = post(app, base).json()["choices"][0]["message"]["content"]
    assert post(app, base).json()["choices"][0]["message"]["content"] == first  # same seed, same answer
    assert len(first) > 3
    stop = first[2:4]
    stopped = post(app, {**base, "stop": stop}).json()["choices"][0]
    assert stop not in stopped["message"]["content"] and stopped["finish_reason"] == "stop"
    assert first.startswith(stopped["message"]["content"])


def test_fields_clients_send_by_default_are_accepted(app: Any) -> None:
    body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be kind."}]}, *USER],
            "model": "tiny", "n": 1, "stream": False, "logprobs": False, "frequency_penalty": 0,
            "presence_penalty": 0.0, "user": "alice", "store": False, "metadata": {"a": "b"},
            "parallel_tool_calls": None, "max_completion_tokens": 3, "modalities": ["text"], "logit_bias": {}}
    response = post(app, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 3


def test_a_registry_persona_takes_its_template_variables_as_a_pair(app: Any) -> None:
    body = {"messages": USER, "max_tokens": 3, "temperature": 0,
            "preferences": [["expert", {"field": "marine biology"}], ["age", {"age": 7}], "Be brief."]}
    response = post(app, body)
    assert response.status_code == 200, response.text
    personas = [" ".join(p) for p in response.json()["persona_judge"]["personas"]]
    assert len(personas) == 3 and personas[2] == "Be brief."
    assert "PhD Student in marine biology" in personas[0]  # the variable reached the persona's text
    assert "7-year-old" in personas[1]
    misspelt = post(app, {**body, "preferences": [["expert", {"feild": "x"}]]}).json()["error"]
    assert "'feild'" in misspelt["message"] and "['field']" in misspelt["message"]  # what is wrong, and what is known


def test_tokenize_counts_a_text_s_tokens_for_the_served_model(app: Any, tokenizer: Any) -> None:
    text = "Why is the sky blue? Because of Rayleigh scattering."
    counted = call(app, "POST", "/tokenize", {"prompt": text})
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"count": len(tokenizer.encode(text, add_special_tokens=False)), "max_model_len": 512}
    assert_openai_error(call(app, "POST", "/tokenize", {"text": text}), 400, "prompt")
    assert_openai_error(call(app, "POST", "/tokenize", raw=b"{"), 400, None)
    assert_openai_error(call(app, "POST", "/tokenize", {"prompt": text, "model": "gpt-4o"}), 404, "model")


def test_models_and_health(app: Any) -> None:
    models = call(app, "GET", "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert call(app, "GET", "/v1/models/tiny").json()["id"] == "tiny"
    assert_openai_error(call(app, "GET", "/v1/models/gpt-4o"), 404, "model")
    health = call(app, "GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert call(app, "GET", "/v1/nothing").json()["error"]["code"] == "not_found"


# -- authentication, loading -------------------------------------------------------------------------------------


def test_api_keys_guard_every_v1_route_but_not_health(model: Any, tokenizer: Any) -> None:
    app = create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, api_keys=frozenset({"k-one", "k-two"})))
    body = {"messages": USER, "max_tokens": 2}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "k-one"},
                    {"authorization": "Basic k-one"}, {"authorization": "Bearer k-one-and-more"}):
        assert_openai_error(post(app, body, headers=headers), 401, None)
        assert_openai_error(call(app, "GET", "/v1/models", headers=headers), 401, None)
        assert_openai_error(call(app, "POST", "/tokenize", {"prompt": "hi"}, headers=headers), 401, None)
    assert post(app, body, headers={"authorization": "Bearer k-two"}).status_code == 200
    assert call(app, "GET", "/v1/models", headers={"authorization": "bearer k-one"}).status_code == 200
    assert call(app, "GET", "/health").status_code == 200


def test_while_the_model_loads_requests_get_503_with_retry_after() -> None:
    app = create_app(ServeSettings(model="not-loaded-because-no-lifespan-runs"))  # the ASGI transport runs none
    response = post(app, {"messages": USER})
    error = assert_openai_error(response, 503, None)
    assert error["code"] == "model_loading" and response.headers["retry-after"]
    assert call(app, "GET", "/health").status_code == 503


def test_a_model_that_fails_to_load_is_reported_not_raised() -> None:
    app = create_app(ServeSettings(model="/nonexistent/model.gguf"))
    app.state.model.load()
    assert call(app, "GET", "/health").json()["status"] == "error"
    assert assert_openai_error(post(app, {"messages": USER}), 503, None)["code"] == "model_unavailable"


# -- settings and the CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.4.5", True), ("localhost", True),
                                                ("::1", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.4", False), ("example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_host_needs_keys_or_no_auth(tmp_path: Any) -> None:
    parse = build_parser().parse_args
    with pytest.raises(UsageError, match="--api-keys"):
        settings_from(parse(["--host", "0.0.0.0"]))
    assert settings_from(parse(["--host", "0.0.0.0", "--no-auth"])).api_keys == frozenset()
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops\nalpha\n\n  beta  \n")
    assert settings_from(parse(["--host", "0.0.0.0", "--api-keys", str(keys)])).api_keys == {"alpha", "beta"}
    assert settings_from(parse([])).api_keys == frozenset()  # loopback: no keys needed
    with pytest.raises(UsageError, match="contradict"):
        settings_from(parse(["--api-keys", str(keys), "--no-auth"]))


def test_an_empty_or_missing_key_file_is_refused_without_echoing_keys(tmp_path: Any) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InvalidOptionError, match="holds no key"):
        read_api_keys(empty)
    with pytest.raises(InvalidOptionError, match="Cannot read"):
        read_api_keys(tmp_path / "missing.txt")


def test_persona_judge_serve_refuses_an_exposed_host_without_starting(capsys: Any) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--api-keys" in capsys.readouterr().err


def test_an_error_mid_stream_is_an_error_event_then_done(tokenizer: Any) -> None:
    model = tiny_llama(seed=5, vocab_size=len(tokenizer), eos_token_id=None)
    handle = model.register_forward_pre_hook(lambda module, args: __import__("time").sleep(0.02))
    try:
        app = create_app(ServeSettings(hf_model=model, tokenizer=tokenizer, timeout=0.3))
        response = post(app, {"messages": USER, "max_tokens": 400, "stream": True})
    finally:
        handle.remove()
    assert response.status_code == 200  # the headers went out with the first chunk
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "timeout" and "timeout" in error["message"]
    assert any(json.loads(e).get("choices") for e in events[:-2])  # some of the answer came first


def test_a_profile_in_the_body_decodes_its_weighted_personas(app: Any, model: Any, tokenizer: Any) -> None:
    from langchain_persona_judge.profiles import profile_from_description

    profile = profile_from_description("Keep it short.", model=(model, tokenizer),
                                       basis=["concise", "informative", "friendly"]).with_weights([0.6, -0.3, 0.0])
    body = {"messages": USER, "max_tokens": 4, "temperature": 0, "profile": profile.to_dict()}
    answer = post(app, body).json()
    judge = answer["persona_judge"]
    assert judge["rule"] == "product" and judge["profile"]["personas"][0]["name"] == "concise"
    assert judge["statistics"]["weights"][1] < 0  # the negative pole steers away
    assert_openai_error(post(app, {**body, "weights": [1.0, 1.0]}), 400, "weights")
    other = profile_from_description("x", model=(tiny_llama(seed=9, vocab_size=len(tokenizer)), tokenizer),
                                     basis=["concise", "informative", "friendly"]).with_weights([0.5, 0.0, 0.0])
    assert_openai_error(post(app, {**body, "profile": other.to_dict()}), 400, "profile")
