"""One answer being produced (:class:`Generation`), and the executor that tracks each generation's decoding
threads (:class:`TrackingExecutor`)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

CURRENT_GENERATION: contextvars.ContextVar[Generation | None] = contextvars.ContextVar(
    "chat_app_generation", default=None
)


@dataclass
class Generation:
    """One answer being produced: its state, timings, text so far, events for its client, its decoding threads."""

    id: str
    session_id: str
    user_id: str
    created: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running -> completed | cancelled | error
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    text: list[str] = field(default_factory=list)
    pieces: int = 0  # text chunks streamed so far
    output_tokens: int = 0  # the model's count, known when the answer is complete
    cancel_reason: str | None = None
    error: str | None = None
    message_id: int | None = None
    user_message_id: int | None = None
    decoded: bool = False  # the whole answer is decoded (what is left: storing it, telling the client)
    orphaned: bool = False  # its conversation was deleted: nothing more is stored for it
    worker_threads_started: int = 0
    worker_threads_live: int = 0
    worker_returned_at: float | None = None
    events: asyncio.Queue[tuple[str | None, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def publish(self, name: str | None, data: dict[str, Any] | None = None) -> None:
        self.events.put_nowait((name, data or {}))

    @property
    def done(self) -> bool:
        return self.state in ("completed", "cancelled", "error")

    def to_dict(self) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.created, 4)

        return {
            "id": self.id,
            "session_id": self.session_id,
            "state": self.state,
            "output_tokens": self.output_tokens,
            "pieces": self.pieces,
            "characters": sum(len(t) for t in self.text),
            "cancel_reason": self.cancel_reason,
            "error": self.error,
            "message_id": self.message_id,
            "user_message_id": self.user_message_id,
            "started_after_s": since(self.started),
            "first_token_after_s": since(self.first_token),
            "finished_after_s": since(self.finished),
            "worker_started": self.worker_threads_started > 0,
            "worker_running": self.worker_threads_live > 0,
            "worker_returned_after_s": since(self.worker_returned_at),
        }


class TrackingExecutor(ThreadPoolExecutor):
    """The executor the chat model decodes in (``ChatPersonaJudge(executor=...)``), recording which generation
    each job belongs to.

    ``ChatPersonaJudge.astream`` submits its worker with ``loop.run_in_executor(executor, ...)``; ``submit`` runs
    on the event loop thread inside the generation's task, so ``CURRENT_GENERATION`` names the generation whose
    thread this is. The counts are only touched on the event loop thread.
    """

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="chat-decode")
        self.live = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        gen = CURRENT_GENERATION.get()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not from the event loop: nothing to record
            gen = None
        if gen is None:
            return super().submit(fn, *args, **kwargs)
        gen.worker_threads_started += 1
        gen.worker_threads_live += 1
        self.live += 1

        def returned() -> None:
            self.live -= 1
            gen.worker_threads_live -= 1
            if gen.worker_threads_live == 0:
                gen.worker_returned_at = time.monotonic()

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                try:
                    loop.call_soon_threadsafe(returned)
                except RuntimeError:  # the loop is closed (server shutting down)
                    pass

        return super().submit(run)
