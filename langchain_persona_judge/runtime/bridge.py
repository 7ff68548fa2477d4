"""Sync → async: run a blocking iterator in a worker thread and consume it from the event loop.

The worker puts each item on an ``asyncio.Queue`` through ``call_soon_threadsafe``, so the loop is never
blocked; leaving the ``async for`` (or cancelling the task) sets a flag that the worker checks before each item
and that the producer gets, so it can stop at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def iterate_in_thread(
    produce: Callable[[threading.Event], Iterator[T]], executor: Executor | None = None
) -> AsyncIterator[T]:
    """Items of ``produce(cancelled)``, computed in ``executor`` (None: the loop's default executor).

    Exceptions raised by the producer are re-raised here, on the event loop's side.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            cancelled.set()

    def work() -> None:
        try:
            items = produce(cancelled)
            try:
                for item in items:
                    if cancelled.is_set():
                        break
                    put(item)
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # re-raised on the event loop's side
            put(exc)
        finally:
            put(done)

    worker = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        await worker
    finally:
        cancelled.set()


__all__ = ["iterate_in_thread"]
