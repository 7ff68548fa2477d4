"""The ASGI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Decoding runs in worker threads (one per request, waiting in the model's admission queue); the event loop only
parses, streams and watches for a client that goes away, which cancels its decode at the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decoding import ModelBackend
from ..decoding.backends import TransformersBackend
from ..runtime import count_prompt_tokens, display_name, iterate_in_thread, shared_model
from .completions import Finished, chunk, completion, events, new_id, now, start_run, usage
from .completions import persona_judge as persona_judge_of
from .errors import ApiError, from_exception, from_validation
from .schema import ChatCompletionRequest, TokenizeRequest, refused_field
from .settings import ServeSettings

T = TypeVar("T")


def given_handle(settings: ServeSettings) -> ModelBackend:
    """``settings.hf_model`` as a handle: itself when it is one (from ``load_model``), else a transformers model
    wrapped once with ``settings.tokenizer``."""
    if isinstance(settings.hf_model, ModelBackend):
        return settings.hf_model
    return TransformersBackend(settings.hf_model, settings.tokenizer)


class ModelState:
    """The served model: loaded in the background (requests get 503 until it is ready), or given in memory."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.model: ModelBackend | None = None if settings.hf_model is None else given_handle(settings)
        self.error: str | None = None
        self.name = settings.served_name or display_name(settings.model, settings.hf_model)
        self.names = {self.name, *(n for n in (settings.model,) if n)}
        self.ready = threading.Event()
        if self.model is not None:
            self.ready.set()
        limit = (settings.max_concurrency or 16) + (64 if settings.max_queue is None else settings.max_queue) + 2
        self.executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="persona-judge-decode")

    def load(self) -> None:
        s = self.settings
        try:
            self.model = shared_model(s.model, device=s.device, dtype=s.dtype, backend=s.backend)
        except Exception as exc:  # reported by /health and every request, never a crash of the server
            self.error = f"The model failed to load: {exc}"
        finally:
            self.ready.set()

    def check_name(self, name: str) -> None:
        if name not in self.names:
            raise ApiError(404, f"The model {name!r} does not exist; this server serves {self.name!r}.",
                           param="model", code="model_not_found")

    def require(self) -> ModelBackend:
        if not self.ready.is_set():
            raise ApiError(503, "The model is still loading; retry in a few seconds.", code="model_loading",
                           headers={"Retry-After": "5"})
        if self.error is not None:
            raise ApiError(503, self.error, code="model_unavailable")
        assert self.model is not None
        return self.model


def check_auth(request: Request, keys: frozenset[str]) -> str | None:
    """``Authorization: Bearer KEY`` against every key, in constant time per key; the key is never logged. The
    key that matched (None when the server has no keys)."""
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    matched: str | None = None
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if scheme.lower() != "bearer" or matched is None:
        raise ApiError(401, "Invalid or missing API key; send 'Authorization: Bearer <key>'.", code="invalid_api_key")
    return matched


def admission_key(api_key: str | None, user: str | None) -> str | None:
    """Whom the model's admission queue serves round-robin a request as: its API key when the server has keys (a
    key's holder cannot pass for several users by varying ``user``), else the body's ``user``; None (one shared
    anonymous bucket) when neither. A key is kept only as a digest."""
    if api_key is not None:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return None if user is None else "user:" + user


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``cap`` bytes (declared or streamed)."""
    too_big = ApiError(413, f"The request body is over the server's cap of {cap} bytes; send a shorter conversation.",
                       code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > cap:
            raise too_big
        parts.append(part)
    return b"".join(parts)


def parse_body(raw: bytes) -> Any:
    """The body as a :data:`ChatCompletionRequest`; a 400 naming the field otherwise."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The body is not valid JSON ({exc}); send a JSON object.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, f"The body is a JSON {type(data).__name__}; send a JSON object.", code="invalid_json")
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    refused = refused_field(body)
    if refused is not None:
        raise ApiError(400, refused[1], param=refused[0], code="unsupported_parameter")
    return body


def parse_tokenize(raw: bytes) -> TokenizeRequest:
    """The body of ``POST /tokenize``; a 400 naming the field otherwise."""
    try:
        return TokenizeRequest.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(400, "The body is not valid JSON; send a JSON object.", code="invalid_json") from exc
        raise from_validation(exc) from exc


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
    """``(True, the awaitable's result)``, or ``(False, None)`` with the awaitable cancelled if the client leaves
    first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task not in done:
        return False, None
    return True, task.result()


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The OpenAI-compatible ASGI app serving one model with Persona-judge."""
    state = ModelState(settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not state.ready.is_set():
            threading.Thread(target=state.load, name="persona-judge-load", daemon=True).start()
        yield
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Persona-judge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model = state
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours, Starlette's (unknown route, wrong method), and bugs (500)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        error = from_exception(exc)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _add_routes(app: FastAPI, state: ModelState) -> None:
    settings = state.settings

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.ready.is_set():
            status = "loading"
        else:
            status = "ok" if state.error is None else "error"
        body = {"status": status, "model": state.name, "replica": settings.replica}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    def model_card() -> dict[str, Any]:
        return {"id": state.name, "object": "model", "created": 0, "owned_by": "persona-judge"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request, settings.api_keys)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        check_auth(request, settings.api_keys)
        state.check_name(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, state)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        """``{"prompt": text}`` → ``{"count", "max_model_len"}`` (as vLLM's ``/tokenize`` counts): the text's
        tokens for the served model, no special tokens added, so that a client (the chat app on a remote model
        tier) can bound a message in tokens without loading the model."""
        check_auth(request, settings.api_keys)
        model = state.require()
        body = parse_tokenize(await read_body(request, settings.max_body_bytes))
        if body.model is not None:
            state.check_name(body.model)
        count = await asyncio.to_thread(count_prompt_tokens, model.tokenizer, body.prompt)
        return {"count": count, "max_model_len": model.context_length}


async def answer(request: Request, state: ModelState) -> Response:
    """``POST /v1/chat/completions``: check, parse, decode in a worker thread; a JSON answer or an SSE stream."""
    settings = state.settings
    api_key = check_auth(request, settings.api_keys)
    model = state.require()
    body = parse_body(await read_body(request, settings.max_body_bytes))
    if body.model is not None:
        state.check_name(body.model)
    user = admission_key(api_key, body.user)

    def produce(cancelled: threading.Event) -> Any:
        run, output = start_run(body, model, state.name, settings, cancelled, user=user)
        return events(run, output)

    stream = iterate_in_thread(produce, state.executor)
    cid, created = new_id(), now()
    try:
        if not body.stream:
            answered, items = await until_disconnect(request, _collect(stream))
            if not answered:
                return Response(status_code=499)  # nobody reads it: the client closed the connection
            return JSONResponse(completion(cid, created, state.name, items, settings))
        # The first event (admission, then the first text) before any header: its errors keep their status.
        answered, first = await until_disconnect(request, anext(stream))
        if not answered:
            return Response(status_code=499)
    except Exception as exc:
        await stream.aclose()
        raise from_exception(exc) from exc
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_chunks(first, stream, cid, created, state.name, include_usage, settings),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _collect(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


async def _chunks(
    first: Any, stream: AsyncIterator[Any], cid: str, created: int, model: str, include_usage: bool,
    settings: ServeSettings,
) -> AsyncIterator[str]:
    """The server-sent events of one answer: a role chunk, content and tool-call chunks, the last chunk with the
    finish reason and ``persona_judge``, the usage chunk if asked, ``[DONE]``; an error mid-answer is an error
    event, then ``[DONE]``."""
    failure: ApiError | None = None
    try:
        yield _sse(chunk(cid, created, model, {"role": "assistant", "content": ""}))
        item = first
        while not isinstance(item, Finished):
            yield _sse(chunk(cid, created, model, item))
            item = await anext(stream)
        judge = persona_judge_of(item.run, settings)
        yield _sse(chunk(cid, created, model, {}, item.finish_reason, persona_judge=judge))
        if include_usage:
            yield _sse(chunk(cid, created, model, None, usage=usage(item.run)))
    except Exception as exc:  # headers are sent: the error travels as an event
        failure = from_exception(exc)
    finally:
        await stream.aclose()  # a client gone mid-answer lands here too: the decode stops at its next chunk
    if failure is not None:
        yield _sse(failure.body())
    yield "data: [DONE]\n\n"


__all__ = ["ModelState", "admission_key", "answer", "check_auth", "create_app", "parse_body", "read_body"]
