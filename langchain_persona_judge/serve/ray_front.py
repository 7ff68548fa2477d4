"""The web tier of a Ray Serve deployment: a small ASGI app that relays each request to a model replica.

Every replica runs the same app as ``persona-judge serve`` does (:func:`~.app.create_app`), in process; this
front only checks the key and the body cap, picks a replica (through a dispatch function: on Ray, the
deployment handle) and relays the replica's ASGI messages to the client as they come. It owns what a replica
cannot do for itself, the moment the replica dies:

- a request that never reached a replica (it died between being picked and receiving it) is sent again;
- a request the replica was answering ends with a clean error: a 503 in OpenAI's shape when no header was sent
  yet; in a stream that has begun, an error event and then ``data: [DONE]``, as the app itself ends a stream
  that fails mid-answer;
- a client that disconnects cancels the replica's request (and so its decode);
- fair admission (``admission``): chat completions wait here, in the runtime's round-robin queue keyed as the
  single-process server keys it (the API key, else the body's ``user``), for one of the ``slots`` the replicas
  hold in all, so one user flooding the deployment delays another by at most one request per free slot, and a
  full queue is a 429 with ``Retry-After`` before any replica is asked.

Each response carries the answering replica in an ``X-Persona-Judge-Replica`` header (the body's
``persona_judge.replica`` says the same, where the body has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from .app import admission_key, check_auth, read_body
from ..errors import ModelLoadError, QueueFullError
from ..runtime.admission import AdmissionQueue
from .errors import ApiError, from_exception
from .settings import ServeSettings

REPLICA_HEADER = "x-persona-judge-replica"
"""The response header naming the replica that answered."""
REPLICA_MESSAGE = "persona_judge.replica"
"""The first message of every replica stream: ``{"type": REPLICA_MESSAGE, "replica": name}``."""

Message = dict[str, Any]


class ReplicaStream(Protocol):
    """What a dispatch returns: batches of ASGI messages from one replica, and a way to cancel the request."""

    def __aiter__(self) -> AsyncIterator[list[Message]]: ...

    def cancel(self) -> None: ...


Dispatch = Callable[[dict[str, Any]], ReplicaStream]
"""Sends one request (:func:`replica_request`) to a replica."""
Classify = Callable[[BaseException], "tuple[ApiError, bool]"]
"""An exception raised by a replica stream → the error the client gets, and whether the request may be sent
again when no replica had received it yet."""


def replica_request(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """What a replica needs to rebuild the request: the HTTP scope's plain fields, and the whole body."""
    keep = ("method", "path", "raw_path", "query_string", "scheme", "http_version", "client", "server")
    request = {k: scope[k] for k in keep if k in scope}
    request["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    request["body"] = body
    return request


@dataclass
class _Progress:
    replica: str | None = None
    started: bool = False
    event_stream: bool = False
    finished: bool = False


def _error_start(error: ApiError, replica: str | None = None) -> tuple[Message, Message]:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if replica is not None:
        headers.append((REPLICA_HEADER.encode(), replica.encode()))
    return ({"type": "http.response.start", "status": error.status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Callable[[Message], Awaitable[None]], error: ApiError, replica: str | None = None
                     ) -> None:
    """``error`` as a whole JSON response (naming the replica in the header, when one was answering)."""
    for message in _error_start(error, replica):
        await send(message)


class RelayApp:
    """The ASGI app in front of the replicas (see the module's docstring).

    ``dispatch`` sends a request to a replica; ``classify`` turns what a failing replica stream raised into the
    client's error; ``retries``: how many times a request no replica received is sent again.
    """

    def __init__(self, dispatch: Dispatch, settings: ServeSettings, classify: Classify, retries: int = 2,
                 slots: int | None = None) -> None:
        self.dispatch = dispatch
        self.settings = settings
        self.classify = classify
        self.retries = retries
        self.admission: AdmissionQueue | None = None
        if slots is not None:
            self.admission = AdmissionQueue(limit=slots, max_queue=settings.max_queue)
            waiting = settings.max_queue if settings.max_queue is not None else 256
            # one thread per request waiting for its turn (the queue is the runtime's, a blocking one)
            self._waiters = ThreadPoolExecutor(max_workers=slots + waiting + 1, thread_name_prefix="admission")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        api_key = None
        try:
            if scope["path"].startswith("/v1"):
                api_key = check_auth(Request(scope), self.settings.api_keys)  # before reading a body nobody may send
            body = await read_body(Request(scope, receive), self.settings.max_body_bytes)
        except ApiError as error:
            await send_error(send, error)
            return
        request = replica_request(scope, body)
        if self.admission is not None and scope["path"] == "/v1/chat/completions":
            relay = asyncio.ensure_future(self.admitted(request, admission_key(api_key, body_user(body)), send))
        else:
            relay = asyncio.ensure_future(self.relay(request, send))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watcher):
                if not task.done():
                    task.cancel()  # the client left: cancelling the relay cancels the replica's request
                    with contextlib.suppress(BaseException):
                        await task
        if relay.done() and not relay.cancelled():
            relay.result()

    async def admitted(self, request: dict[str, Any], user: str | None, send: Any) -> None:
        """:meth:`relay` once the admission queue gives ``user`` a slot (429 when it is full); the slot is held
        until the answer ends, and given back however the request ends (a client gone while waiting included)."""
        assert self.admission is not None
        cancelled = threading.Event()
        gate = self.admission.admit(cancelled=cancelled, user=user)
        entered = asyncio.get_running_loop().run_in_executor(self._waiters, gate.__enter__)
        try:
            admitted = await asyncio.shield(entered)
        except asyncio.CancelledError:
            cancelled.set()  # the client left while waiting: leave the line (or give back a slot just taken)
            entered.add_done_callback(lambda done: _leave(gate, done))
            raise
        except QueueFullError as exc:
            await send_error(send, from_exception(exc))
            return
        try:
            if admitted:
                await self.relay(request, send)
        finally:
            gate.__exit__(None, None, None)

    async def relay(self, request: dict[str, Any], send: Any) -> None:
        """One request through a replica, sent again while no replica has received it."""
        for attempt in range(self.retries + 1):
            progress = _Progress()
            stream: ReplicaStream | None = None
            try:
                stream = self.dispatch(request)
                async for batch in stream:
                    for message in batch:
                        await self._forward(message, progress, send)
                if not progress.finished:
                    await self._fail(ApiError(503, "the replica's answer broke off before its end; retry the "
                                                   "request.", code="replica_unavailable"), progress, send)
                return
            except asyncio.CancelledError:
                if stream is not None:
                    stream.cancel()
                raise
            except Exception as exc:
                error, may_retry = self.classify(exc)
                if progress.replica is None and may_retry and attempt < self.retries:
                    continue
                await self._fail(error, progress, send)
                return

    async def _forward(self, message: Message, progress: _Progress, send: Any) -> None:
        kind = message.get("type")
        if kind == REPLICA_MESSAGE:
            progress.replica = str(message["replica"])
            return
        if kind == "http.response.start":
            headers = list(message.get("headers", []))
            content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            progress.event_stream = content_type.startswith(b"text/event-stream")
            if progress.replica is not None:
                headers.append((REPLICA_HEADER.encode(), progress.replica.encode()))
            message = {**message, "headers": headers}
            progress.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            progress.finished = True
        await send(message)

    async def _fail(self, error: ApiError, progress: _Progress, send: Any) -> None:
        """End the client's response cleanly: an error response, or (mid-stream) an error event and ``[DONE]``."""
        if progress.replica is not None and error.status >= 500:
            error.message = f"The replica {progress.replica} answering this request stopped: {error.message}"
        if not progress.started:
            await send_error(send, error, progress.replica)
            return
        if progress.finished:
            return
        tail = b""
        if progress.event_stream:
            tail = f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\ndata: [DONE]\n\n".encode()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def body_user(body: bytes) -> str | None:
    """The request body's ``user`` (a string), or None; a body that does not parse is the replica's to refuse."""
    try:
        user = json.loads(body).get("user")
    except (ValueError, AttributeError):
        return None
    return user if isinstance(user, str) else None


def _leave(gate: Any, entered: "asyncio.Future[bool]") -> None:
    """Close an admission that finished entering after its request was cancelled."""
    if not entered.cancelled() and entered.exception() is None:
        gate.__exit__(None, None, None)


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- the replica's side: the app in process, driven by the messages of one request ---------------------------


_RUNNING: set[asyncio.Future[Any]] = set()
"""Requests whose client left, still winding down (the app stops their decode at its next chunk)."""


async def run_asgi(app: Any, request: dict[str, Any], state: dict[str, Any] | None = None, coalesce: float = 0.0
                   ) -> AsyncIterator[list[Message]]:
    """Run ``app`` on one request (:func:`replica_request`); yields its messages in batches, as they come.

    ``coalesce``: seconds to let more of a stream's chunks gather after one arrives, so that a batch (one Ray
    object to the front) carries several tokens. Closing the generator early (the front cancelled: its client
    left) tells the app the client disconnected, so the app cancels its decode.
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "root_path": "", "state": dict(state or {}),
             "http_version": "1.1", "scheme": "http", "query_string": b"", **{k: v for k, v in request.items()
                                                                             if k != "body"}}
    scope.setdefault("raw_path", scope["path"].encode())
    outbox: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.get("body", b""), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        outbox.put_nowait(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: outbox.put_nowait(None))
    try:
        ended = False
        while not ended:
            batch = [await outbox.get()]
            if coalesce and batch[0] is not None and batch[0].get("more_body"):
                await asyncio.sleep(coalesce)
            while not outbox.empty():
                batch.append(outbox.get_nowait())
            ended = batch[-1] is None
            messages = [m for m in batch if m is not None]
            if messages:
                yield messages
        task.result()
    finally:
        gone.set()
        if not task.done():
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)


class Lifespan:
    """An ASGI app's lifespan, run by hand (a replica serves the app without a server around it)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[Any] | None = None

    async def _step(self, message: Message, timeout: float) -> None:
        assert self._task is not None
        self._inbox.put_nowait(message)
        reply = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({reply, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if reply not in done:
            reply.cancel()
            if self._task in done and self._task.exception() is not None:
                raise ModelLoadError(f"the app's {message['type']} failed") from self._task.exception()
            raise ModelLoadError(f"the app did not answer {message['type']} within {timeout:.0f} s")
        if reply.result()["type"].endswith(".failed"):
            raise ModelLoadError(f"the app's {message['type']} failed: {reply.result().get('message', '')}")

    async def startup(self, timeout: float = 60.0) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}

        async def send(message: Message) -> None:
            self._outbox.put_nowait(message)

        self._task = asyncio.ensure_future(self.app(scope, self._inbox.get, send))
        await self._step({"type": "lifespan.startup"}, timeout)

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self._task is not None and not self._task.done():
            await self._step({"type": "lifespan.shutdown"}, timeout)


__all__ = ["REPLICA_HEADER", "REPLICA_MESSAGE", "Lifespan", "RelayApp", "ReplicaStream", "replica_request",
           "run_asgi", "send_error"]
