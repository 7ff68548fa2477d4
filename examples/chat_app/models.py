"""Where the chat app's answers are decoded: one interface, :class:`AnswerModel`, and its two tiers.

- :class:`LocalModel` (the default): ``ChatPersonaJudge`` in this process, its admission queue and tokenizer here.
- :class:`RemoteModel` (``CHAT_MODEL_URL``): a Persona-judge server (``persona-judge serve``, one replica or many
  behind a balancer), called over its OpenAI-compatible ``POST /v1/chat/completions`` with the persona fields at the
  top level, streamed as server-sent events; messages are bounded in tokens by the server's ``POST /tokenize``. App
  processes (sharing PostgreSQL) and model replicas then scale apart, and an app process loads no model to chat.

:meth:`AnswerModel.stream` yields the answer's text pieces ("" for a chunk that carries none: the first item says
the request left the admission queue), then one :class:`Ending`. Closing it early (the generation's task cancelled:
the client went away, the conversation was deleted) stops the decode: locally the model's thread stops at its next
chunk; remotely the HTTP stream is closed, and the server stops a decode whose client has gone.

Errors, as the app reports them: a full queue is :class:`~langchain_persona_judge.QueueFullError` (remote: the
server's 429, :class:`ModelBusyError`, with its ``Retry-After``); the model tier unreachable, loading or dropping an
answer is :class:`ModelUnavailableError` (the app's 503); a request the server refuses is
:class:`ModelTierError` (logged with the server's message; the client is told in general terms).

What the remote tier does not do (documented in the README): the per-token provenance view (the server sends no
trace), and profile *learning* and *import* (they score answers with the model's logits): those load the model
named by ``CHAT_MODEL`` in the app process on first use. Decoding with a learned profile goes through the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from langchain_persona_judge import QueueFullError
from langchain_persona_judge.errors import PersonaJudgeError, RequestTimeoutError

log = logging.getLogger("examples.chat_app")

CONNECT_TIMEOUT_S = 5.0
"""How long connecting to the model server may take before it counts as unreachable."""
DEFAULT_RETRY_AFTER_S = 5
DROPPED = "The model server dropped the answer (a replica stopped?); retry in a moment."
SHORT_TIMEOUT_S = 30.0
"""How long counting a message's tokens or asking the model's name may take."""


@dataclass
class Ending:
    """What the last chunks of an answer said."""

    usage: dict[str, Any] = field(default_factory=dict)
    """``input_tokens``, ``output_tokens``, ``total_tokens`` (LangChain's usage metadata)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """``finish_reason``, ``persona_judge`` (the decode's statistics), ``model_name``, ``profile``."""
    trace: list[dict[str, Any]] | None = None
    """The per-token trace (local tier only)."""


class ModelTierError(PersonaJudgeError, RuntimeError):
    """The model tier refused or failed a request; ``status`` is what the app answers with."""

    status = 502

    def __init__(self, message: str, *, public: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.public = public
        """What a client is told (the message, with the server's details, goes to the log)."""
        self.retry_after = retry_after


class ModelUnavailableError(ModelTierError):
    """The model server cannot be reached, is still loading, or dropped the answer: the app's 503."""

    status = 503


class ModelBusyError(QueueFullError):
    """The model server's admission queue is full (its 429); ``retry_after`` is its ``Retry-After``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AnswerModel(Protocol):
    """What the chat app decodes through."""

    tokenizer: Any
    """The model's tokenizer when it is in this process (the provenance view needs it); None on a remote tier."""

    async def preload(self) -> None:
        """Get ready before the first request (load the weights; or learn the remote model's name)."""

    async def display_name(self) -> str:
        """The served model's name."""

    def admission(self) -> dict[str, int] | None:
        """The admission queue's ``running`` and ``waiting`` counts, when it is in this process."""

    async def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for the served model (no special tokens)."""

    def stream(self, messages: list[dict[str, str]], options: dict[str, Any], user: str) -> AsyncGenerator[Any, None]:
        """The answer to ``messages`` (role/content dicts): text pieces, then an :class:`Ending`. ``options``: the
        call's decoding options (``preferences``, ``max_tokens``, ``temperature``, ``guidance``, ``combine``,
        ``seed``, ``profile``); ``user``: whom the admission queue serves it as (round-robin by user)."""

    async def close(self) -> None:
        """Free what the tier holds (the app is shutting down)."""


class LocalModel:
    """``ChatPersonaJudge`` in this process."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.tokenizer: Any = None
        self._queue: Any = None

    async def preload(self) -> None:
        await self.llm.ainvoke("Hi", max_tokens=1, temperature=0)
        self.note_loaded()

    def note_loaded(self) -> None:
        """Keep a handle on the model's admission queue and tokenizer (loads the weights if they are not yet)."""
        if self._queue is None:
            from langchain_persona_judge.runtime import admission_queue

            model = self.llm.model_handle()  # the shared handle
            if self.tokenizer is None:
                self.tokenizer = model.tokenizer
            self._queue = admission_queue(model)

    async def display_name(self) -> str:
        return str(self.llm.display_name)

    def admission(self) -> dict[str, int] | None:
        queue = self._queue
        return None if queue is None else {"running": queue.running, "waiting": queue.waiting}

    async def count_tokens(self, text: str) -> int:
        from langchain_persona_judge.runtime import count_prompt_tokens

        if self.tokenizer is None:
            await asyncio.to_thread(self.note_loaded)
        return count_prompt_tokens(self.tokenizer, text)

    async def stream(self, messages: list[dict[str, str]], options: dict[str, Any],
                     user: str) -> AsyncGenerator[Any, None]:
        from langchain_core.messages import AIMessage, HumanMessage

        context = [HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"]) for m in messages]
        ending = Ending()
        stream = self.llm.astream(context, **options, user=user)
        first = True
        try:
            async for chunk in stream:
                if first:  # the admission queue let it in: its queue is known by now
                    self.note_loaded()
                    first = False
                yield chunk.content if isinstance(chunk.content, str) else ""
                if chunk.usage_metadata:
                    ending.usage = dict(chunk.usage_metadata)
                if chunk.response_metadata.get("finish_reason"):
                    ending.metadata = {k: chunk.response_metadata.get(k)
                                       for k in ("finish_reason", "persona_judge", "model_name", "profile")}
                    ending.trace = chunk.response_metadata.get("trace")
        finally:
            await stream.aclose()
        yield ending

    async def close(self) -> None:
        return None


def base_url(url: str) -> str:
    """The server's root from ``CHAT_MODEL_URL`` (an OpenAI-style base URL ending in ``/v1`` works too)."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1")


class RemoteModel:
    """A Persona-judge server at ``url``, over HTTP.

    Args:
        url: the server's root or its ``/v1`` base URL. api_key: sent as ``Authorization: Bearer`` (servers started
            with ``--api-keys``). defaults: decoding options every request carries unless the call sets them (the
            app's temperature, answer length, repetition penalty, truncation). timeout: seconds an answer may take
            between two pieces of it (None: no limit). transport: an httpx transport (tests).
    """

    tokenizer: Any = None

    def __init__(self, url: str, api_key: str | None = None, *, defaults: dict[str, Any] | None = None,
                 timeout: float | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = base_url(url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.timeout = timeout
        self.transport = transport
        self._name: str | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        """The connection pool, one per event loop (the app has one; tests may run several). An answer's stream
        closed before its end closes its connection rather than returning it to the pool: that is how the server
        learns that the client has gone. No cap on connections: the app's own limits bound the answers in flight."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop or self._http.is_closed:
            self._http = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, transport=self.transport,
                timeout=httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
            self._loop = loop
        return self._http

    async def preload(self) -> None:
        try:
            await self.display_name()
        except ModelTierError as exc:  # the model tier may come up after the app: requests say so until it does
            log.warning("the model server at %s does not answer yet: %s", self.url, exc)

    async def display_name(self) -> str:
        if self._name is None:
            response = await self._call(self._client().get("/v1/models", timeout=SHORT_TIMEOUT_S))
            self._name = str(response.json()["data"][0]["id"])
        return self._name

    def admission(self) -> dict[str, int] | None:
        return None  # the server's own; its 429s reach the app as ModelBusyError

    async def count_tokens(self, text: str) -> int:
        response = await self._call(self._client().post("/tokenize", json={"prompt": text}, timeout=SHORT_TIMEOUT_S))
        return int(response.json()["count"])

    def request_body(self, messages: list[dict[str, str]], options: dict[str, Any], user: str) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body of one answer."""
        body: dict[str, Any] = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}
        if "profile" in body:
            body["profile"] = body["profile"].to_dict()  # a PreferenceProfile, as its file holds it
        body.update(messages=messages, user=user, stream=True, stream_options={"include_usage": True})
        return body

    async def stream(self, messages: list[dict[str, str]], options: dict[str, Any],
                     user: str) -> AsyncGenerator[Any, None]:
        body = self.request_body(messages, options, user)
        began = False
        try:
            async with self._client().stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._refusal(response)
                async for item in self._events(response):
                    began = True
                    yield item
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(f"the model server sent nothing for {self.timeout} s ({exc!r})") from exc
        except httpx.TransportError as exc:
            if not began:
                raise self._unreachable(exc) from exc
            raise ModelUnavailableError(f"the model server at {self.url} dropped the answer: {exc!r}",
                                        public=DROPPED, retry_after=DEFAULT_RETRY_AFTER_S) from exc

    async def _events(self, response: httpx.Response) -> AsyncIterator[Any]:
        """The server's chunks as text pieces, then the :class:`Ending`."""
        ending = Ending()
        finished = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise self._error_event(event["error"])
            if event.get("usage"):
                usage = event["usage"]
                ending.usage = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                                "total_tokens": usage["total_tokens"]}
            for choice in event.get("choices", []):
                yield (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    finished = True
                    judge = event.get("persona_judge") or {}
                    ending.metadata = {"finish_reason": choice["finish_reason"],
                                       "persona_judge": judge.get("statistics"), "model_name": event.get("model"),
                                       "profile": judge.get("profile"), "replica": judge.get("replica")}
        if not finished:
            raise ModelUnavailableError("the model server ended the stream before the answer's end",
                                        public=DROPPED, retry_after=DEFAULT_RETRY_AFTER_S)
        yield ending

    async def _call(self, request: Any) -> httpx.Response:
        """A short request's response, or the app's error for it."""
        try:
            response = await request
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            raise self._refusal(response)
        return response

    def _unreachable(self, exc: Exception) -> ModelUnavailableError:
        return ModelUnavailableError(f"the model server at {self.url} is unreachable: {exc!r}",
                                     public="The model server is unreachable; retry in a moment.",
                                     retry_after=DEFAULT_RETRY_AFTER_S)

    def _refusal(self, response: httpx.Response) -> Exception:
        """The error of a non-200 answer: 429 busy, 503 unavailable, 504 timeout, anything else refused."""
        try:
            error = response.json().get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        message = f"the model server answered {response.status_code}: {error.get('message') or response.text[:200]}"
        retry = _retry_after(response.headers.get("retry-after"))
        if response.status_code == 429:
            return ModelBusyError(message, retry)
        if response.status_code == 503:
            return ModelUnavailableError(message, public="The model server is not ready (loading, or out of "
                                                         "memory); retry in a moment.", retry_after=retry)
        if response.status_code == 504:
            return RequestTimeoutError(message)
        if error.get("param") == "profile":
            return ModelTierError(message, public="Your profile does not fit the model server's model (learned with "
                                                  "another); reset it or import one learned for this model.")
        if response.status_code == 401:
            return ModelTierError(message, public="The model server refused this app's credentials "
                                                  "(CHAT_MODEL_API_KEY); the operator must fix them.")
        return ModelTierError(message, public="The model server refused the request (its log and this app's say "
                                              "why).")

    def _error_event(self, error: dict[str, Any]) -> Exception:
        """An error the server sent in the stream, after its headers."""
        message = f"the model server failed the answer: {error.get('message')} ({error.get('code')})"
        code = error.get("code")
        if code == "queue_full":
            return ModelBusyError(message, DEFAULT_RETRY_AFTER_S)
        if code == "timeout":
            return RequestTimeoutError(message)
        if error.get("type") == "server_error" or code in ("out_of_memory", "model_unavailable", "model_loading"):
            return ModelUnavailableError(message, public="The model server failed the answer; retry in a moment.",
                                         retry_after=DEFAULT_RETRY_AFTER_S)
        return ModelTierError(message, public="The model server refused the request (its log and this app's say "
                                              "why).")

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._loop is asyncio.get_running_loop():
            await http.aclose()


def _retry_after(value: str | None) -> int:
    try:
        return max(1, int(value or DEFAULT_RETRY_AFTER_S))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


__all__ = ["AnswerModel", "Ending", "LocalModel", "ModelBusyError", "ModelTierError", "ModelUnavailableError",
           "RemoteModel", "base_url"]
