"""A small chat server for ChatPersonaJudge, for many people: accounts, streaming answers (server-sent events),
conversations in SQLite or PostgreSQL, each answer's per-token provenance, and a preference profile learned from
each user's picks between two answers.

Run it (from the repository root):

    make chat                                       # installs the `app` extra once, then serves on $PORT (8000)
    .venv/bin/python -m examples.chat_app.server    # the same, without the install step

and open http://127.0.0.1:8000/. Configuration: environment variables, listed in :mod:`.settings`.

HTTP API (JSON unless said otherwise). Every /api/ endpoint but POST /api/users needs
``Authorization: Bearer <token>`` (missing or unknown: 401) and acts on the caller's own data only (another
user's conversation or generation: 404, exactly as an unknown one):

    GET  /                              the one-page chat UI (static/index.html)
    GET  /healthz                       liveness and the store answering (no token); 503 when it does not
    POST /api/users                     a new account -> {"user_id", "token"}; the token is shown this once
    GET  /api/personas                  the built-in personas: name, description, tags, rendered text
    GET  /api/config                    limits and defaults the UI needs
    POST /api/sessions                  a new conversation -> {"id", "created_at"}
    GET  /api/sessions                  the caller's recent conversations
    GET  /api/sessions/{id}             one conversation with its last messages (?limit=, default 500, at most
                                        1000; ?before=<message id> pages back)
    DELETE /api/sessions/{id}           forget a conversation; its running answer (if any) is cancelled
    POST /api/sessions/{id}/messages    {"content", "personas": [names], "preferences": [texts], "temperature"?,
                                        "guidance"?, "combine"?, "seed"?, "max_tokens"?} -> text/event-stream:
                                        queued, start, token ({"text"}), done (usage, stats, timings, the
                                        per-token provenance) or error; 429 when the model's admission queue is
                                        full or the caller has CHAT_MAX_IN_FLIGHT answers going
    GET  /api/generations/{id}          one of the caller's generations: state (queued/running/completed/
                                        cancelled/error) and whether its decoding thread is still running
    GET  /api/stats                     running/queued generations, decoding threads busy, the admission queue,
                                        totals, and the caller's answers in flight
    GET  /api/profile                   the caller's preference profile: weights [{name, weight}], top poles,
                                        number of choices, description
    DELETE /api/profile                 reset it (the profile and the comparisons)
    POST /api/profile/comparisons       {"prompt"?} -> {"id", "prompt", "answer_a", "answer_b"}: two answers decoded
                                        under contrasting personas (the learner's rule); 429 like a message
    POST /api/profile/comparisons/{id}/choice  {"choice": "a" | "b" | "none"} -> the updated profile
    GET  /api/profile/export            the profile file, as `persona-judge learn` writes it (?format=yaml|json)
    PUT  /api/profile/import            a profile file (the body: YAML or JSON); 422 malformed, 409 another model
                                        or basis

A message that picks no persona and no free-text preference is decoded with the caller's profile, when they have
one (``ChatPersonaJudge(profile=...)``; its ``done`` event and stored metadata say so under ``profile``).

Admission (the library's queue, and this app's 429s): :mod:`.service`.

Disconnects: when the client goes away (closed tab, Stop button, dropped connection), or its conversation is
deleted, the generation's task is cancelled; that closes the model's ``astream``, which tells its thread to stop
at its next chunk. The generation is marked cancelled at once; its slot in the admission queue is the
library's, held until that thread has really returned. A thread still waiting for a slot leaves the queue at
once.

With CHAT_MODEL_URL=http://... the answers are decoded by a Persona-judge server (``persona-judge serve``) instead
of in this process: the remote model tier (:mod:`.models`), so app processes and model replicas scale apart.

Several processes on one PostgreSQL database share users and conversations; what lives in a process's memory
stays per process: its generations (``/api/generations/{id}`` answers on the process that runs it; deleting a
conversation cancels an answer running on the same process), the one-answer-at-a-time order per conversation,
and CHAT_MAX_IN_FLIGHT.

This module is the routes and the entry point; the rest is beside it:

==================  ==========================================================================================
``settings``        the limits, and ``Settings`` read from the environment
``schemas``         the request bodies (``MessageIn``...), the caller (``User``), a message's ``Plan``
``service``         ``ChatService``: model and admission, store, accounts, personas, the generations
``models``          where answers are decoded: ``LocalModel`` (this process) or ``RemoteModel`` (CHAT_MODEL_URL)
``answers``         ``AnswerRun``: one answer from the message stored to the answer stored
``generations``     ``Generation`` (one answer's state and events) and the executor that tracks its threads
``ratelimit``       ``RateLimiter``: sign-ups per client address (a token bucket)
==================  ==========================================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .generations import Generation
from .ratelimit import RateLimiter
from .schemas import ChoiceIn, ComparisonIn, MessageIn, User
from .security import Guard, allowed_hosts, hash_token, new_token, page_csp
from .service import ChatService
from .settings import (
    DEFAULT_HOST,
    DEFAULT_LOG_LEVEL,
    DEFAULT_PORT,
    HEALTH_TIMEOUT_S,
    HEARTBEAT_S,
    ID,
    KEEP_ALIVE_S,
    PREFERENCE_CHARS,
    SIGNUP_BURST,
    Settings,
    env_int,
)

log = logging.getLogger("examples.chat_app")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"


async def current_user(request: Request) -> User:
    """The caller, from ``Authorization: Bearer <token>`` (401 otherwise)."""
    service: ChatService = request.app.state.service
    return await service.authenticate(request.headers.get("authorization"))


Caller = Annotated[User, Depends(current_user)]


def _sse(name: str, data: dict[str, Any]) -> str:
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: null, so that the page can still parse the event
        text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    return f"event: {name}\ndata: {text}\n\n"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _public_model_name(name: str) -> str:
    """A model's name as clients see it: a local file or folder by its last part, never the server's path."""
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return path.name
    return name


async def _event_stream(service: ChatService, gen: Generation) -> AsyncIterator[str]:
    """The generation's events as SSE; leaving early (client gone) cancels the generation."""
    getter: asyncio.Future[Any] | None = None
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(gen.events.get())
            done, _ = await asyncio.wait({getter}, timeout=HEARTBEAT_S)
            if not done:
                yield ": ping\n\n"  # sending is also how an ASGI 2.4 server tells us the peer is gone
                continue
            name, data = getter.result()
            getter = None
            if name is None:
                return
            yield _sse(name, data)
    finally:
        if getter is not None:
            getter.cancel()
        if not gen.done:
            service.cancel(gen, "client disconnected")


# -- the app -------------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. ``settings`` defaults to ``Settings.from_env()``."""
    settings = settings or Settings.from_env()
    service = ChatService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await service.preload()
        yield
        await service.shutdown()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Persona-judge chat", lifespan=lifespan, **docs)
    app.state.service = service
    app.add_middleware(Guard, hosts=allowed_hosts(settings.allowed_hosts), max_body_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    _page_routes(app, service)
    _session_routes(app, service)
    _message_routes(app, service)
    _profile_routes(app, service)
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # What was wrong and where, never the input itself (FastAPI's default echoes it whole, and a NaN in it
    # cannot even be written as JSON).
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _page_routes(app: FastAPI, service: ChatService) -> None:
    """The page, liveness, accounts, the UI's configuration and the personas."""
    settings = service.settings

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": page_csp(html), "Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:  # the store answers a trivial query (PostgreSQL may be restarting): else 503
            await asyncio.wait_for(service.store.ping(), HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - logged; the probe only needs the verdict
            log.warning("health check: the database does not answer", exc_info=True)
            return JSONResponse({"ok": False, "store": "unavailable"}, status_code=503)
        return JSONResponse({"ok": True})

    signups = RateLimiter(settings.signups_per_minute, SIGNUP_BURST) if settings.signups_per_minute else None

    @app.post("/api/users", status_code=201)
    async def create_user(request: Request) -> dict[str, Any]:
        wait = signups.take(request.client.host if request.client else "?") if signups else 0.0
        if wait:
            raise HTTPException(429, f"Too many new accounts from your address; retry in {wait:.0f} s "
                                     f"(CHAT_SIGNUPS_PER_MINUTE={settings.signups_per_minute}).",
                                headers={"Retry-After": RateLimiter.retry_after(wait)})
        token = new_token()
        row = await service.create_account(hash_token(token))
        if row is None:
            raise HTTPException(403, f"This server has all the accounts it takes (CHAT_MAX_USERS="
                                     f"{settings.max_users}).")
        return {"user_id": row["id"], "token": token, "created_at": row["created_at"]}

    @app.get("/api/config")
    async def config(user: Caller) -> dict[str, Any]:
        return {
            "max_tokens": settings.max_tokens,
            "max_tokens_cap": settings.max_tokens_cap,
            "temperature": settings.temperature,
            "repetition_penalty": settings.repetition_penalty,
            "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue,
            "max_message_chars": settings.max_message_chars,
            "max_preference_chars": PREFERENCE_CHARS,
            "max_conversations": settings.max_conversations,
            "max_in_flight": settings.max_in_flight,
            "model": _public_model_name(await service.model_name()),
            "user_id": user.id,
            "profile_every": settings.profile_every,
            "profile_max_tokens": settings.profile_max_tokens,
        }

    @app.get("/api/personas")
    async def personas(user: Caller) -> list[dict[str, Any]]:
        return service.personas()


def _session_routes(app: FastAPI, service: ChatService) -> None:
    """The caller's conversations."""
    settings = service.settings

    @app.post("/api/sessions", status_code=201)
    async def create_session(user: Caller) -> dict[str, Any]:
        row = await service.store.create_session(user.id, settings.max_conversations)
        if row is None:
            raise HTTPException(409, f"You have {settings.max_conversations} conversations, the most one user may "
                                     f"keep (CHAT_MAX_CONVERSATIONS); delete one first.")
        return row

    @app.get("/api/sessions")
    async def list_sessions(user: Caller, limit: int = 50) -> list[dict[str, Any]]:
        return await service.store.list_sessions(user.id, max(1, min(limit, 500)))

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: str, user: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 500,
                          before: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        """The last ``limit`` messages (with ids below ``before``: page back with the first id seen)."""
        await _owned_session(service, user, session_id)
        messages = await service.store.messages(user.id, session_id, limit=limit, before=before)
        return {"id": session_id, "messages": messages}

    @app.delete("/api/sessions/{session_id}")
    async def delete_session(session_id: str, user: Caller) -> dict[str, Any]:
        await _owned_session(service, user, session_id)
        cancelled = service.forget_session(session_id)
        return {"deleted": await service.store.delete_session(user.id, session_id), "cancelled": cancelled}


async def _owned_session(service: ChatService, user: User, session_id: str) -> str:
    """``session_id``, if it is one of the caller's conversations (404 otherwise, as for an unknown one)."""
    if not ID.fullmatch(session_id) or not await service.store.session_owned(user.id, session_id):
        raise HTTPException(404, "No such conversation; POST /api/sessions creates one.")
    return session_id


def _message_routes(app: FastAPI, service: ChatService) -> None:
    """A message and its streamed answer; the generations; the server's counters."""
    settings = service.settings

    @app.post("/api/sessions/{session_id}/messages")
    async def post_message(session_id: str, body: MessageIn, user: Caller) -> StreamingResponse:
        await _owned_session(service, user, session_id)
        if not body.content.strip():
            raise HTTPException(422, "The message is empty.")
        if len(body.content) > settings.max_message_chars:
            raise HTTPException(422, f"The message has {len(body.content)} characters; the most is "
                                     f"{settings.max_message_chars} (CHAT_MAX_MESSAGE_CHARS).")
        await service.refuse_if_too_long(body.content)
        held = await service.store.count_messages(user.id, session_id)
        if held + 2 > settings.max_messages:  # this message and its answer
            raise HTTPException(409, f"This conversation has {held} messages, the most one may keep "
                                     f"(CHAT_MAX_MESSAGES={settings.max_messages}); start a new one.")
        if body.max_tokens is not None and body.max_tokens > settings.max_tokens_cap:
            raise HTTPException(422, f"max_tokens={body.max_tokens} is over this server's cap of "
                                     f"{settings.max_tokens_cap} (CHAT_MAX_TOKENS_CAP).")
        plan = await service.plan_with_profile(user, service.plan(body))
        service.refuse_if_full(user)
        gen = service.start(user, session_id, body, plan)
        return StreamingResponse(
            _event_stream(service, gen),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Generation-Id": gen.id},
        )

    @app.get("/api/generations/{generation_id}")
    async def get_generation(generation_id: str, user: Caller) -> dict[str, Any]:
        gen = service.generation_for(user, generation_id)
        if gen is None:
            raise HTTPException(404, "No such generation (unknown, another process's, or forgotten long ago).")
        return gen.to_dict()

    @app.get("/api/stats")
    async def stats(user: Caller) -> JSONResponse:
        return JSONResponse(service.stats(user))


def _profile_routes(app: FastAPI, service: ChatService) -> None:
    """The caller's preference profile."""

    @app.get("/api/profile")
    async def get_profile(user: Caller) -> dict[str, Any]:
        return await service.profiles.get(user.id)

    @app.delete("/api/profile")
    async def reset_profile(user: Caller) -> dict[str, Any]:
        return await service.profiles.reset(user.id)

    @app.post("/api/profile/comparisons", status_code=201)
    async def new_comparison(user: Caller, body: ComparisonIn | None = None) -> dict[str, Any]:
        return await service.profiles.propose(user, None if body is None else body.prompt)

    @app.post("/api/profile/comparisons/{comparison_id}/choice")
    async def choose(comparison_id: str, body: ChoiceIn, user: Caller) -> dict[str, Any]:
        return await service.profiles.choose(user, comparison_id, body.choice)

    @app.get("/api/profile/export")
    async def export_profile(user: Caller,
                             fmt: Annotated[Literal["yaml", "json"], Query(alias="format")] = "yaml") -> Response:
        text, name = await service.profiles.export(user.id, fmt)
        media = "application/json" if fmt == "json" else "application/yaml"
        return Response(text, media_type=f"{media}; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.put("/api/profile/import")
    async def import_profile(request: Request, user: Caller) -> dict[str, Any]:
        return await service.profiles.import_(user.id, await request.body())


def main() -> None:
    import uvicorn

    from langchain_persona_judge.serve.connections import uvicorn_options

    level = os.environ.get("LOG_LEVEL", DEFAULT_LOG_LEVEL).upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = env_int("PORT", DEFAULT_PORT, 0)
    host = os.environ.get("HOST", DEFAULT_HOST)
    settings = Settings.from_env()
    app = create_app(settings)
    # Connections: the open-files limit is raised to its hard limit; open connections are capped below it (one
    # more closes the one that has waited longest for its request headers); headers must arrive within
    # CHAT_HEADER_TIMEOUT; idle keep-alive connections close after KEEP_ALIVE_S. A reverse proxy in front still
    # should limit connections per client (README: Deployment). The same guard as `persona-judge serve`'s.
    connections = uvicorn_options(settings.header_timeout, settings.max_connections, KEEP_ALIVE_S)
    cap = connections.pop("cap")
    print(f"Persona-judge chat on http://{host}:{port}/ (conversations in {app.state.service.store.description}; "
          f"at most {cap} connections)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=level.lower(), timeout_graceful_shutdown=5, **connections)


if __name__ == "__main__":
    main()
