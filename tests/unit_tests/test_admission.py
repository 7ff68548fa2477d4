"""The admission queue: a request cancelled while it waits leaves the queue at once."""

from __future__ import annotations

import threading
import time

import pytest

from langchain_persona_judge.errors import QueueFullError, RequestTimeoutError
from langchain_persona_judge.runtime import AdmissionQueue


def _hold(queue: AdmissionQueue, release: threading.Event, started: threading.Event) -> None:
    with queue.admit():
        started.set()
        release.wait(5)


def test_a_cancelled_waiter_leaves_the_queue_at_once_and_holds_no_slot() -> None:
    queue = AdmissionQueue(limit=1)
    release, started, cancelled = threading.Event(), threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(queue, release, started))
    holder.start()
    started.wait(5)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(queue.admit(cancelled=cancelled).__enter__()))
    waiter.start()
    time.sleep(0.1)
    assert queue.waiting == 1
    began = time.monotonic()
    cancelled.set()
    waiter.join(2)
    assert not waiter.is_alive() and time.monotonic() - began < 0.5
    assert outcome == [False] and queue.waiting == 0 and queue.running == 1  # only the holder
    release.set()
    holder.join(5)
    assert queue.running == 0
    with queue.admit(cancelled=threading.Event()) as admitted:  # the next request gets the slot
        assert admitted and queue.running == 1


def test_a_set_cancel_flag_does_not_refuse_a_free_slot() -> None:
    """Only waiting is cut short: a request that gets a slot at once runs (its loop checks the flag itself)."""
    flag = threading.Event()
    flag.set()
    queue = AdmissionQueue(limit=1)
    with queue.admit(cancelled=flag) as admitted:
        assert admitted and queue.running == 1


def test_timeout_and_full_queue_still_apply_with_a_cancel_flag() -> None:
    queue = AdmissionQueue(limit=1, max_queue=1)
    release, started = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(queue, release, started))
    holder.start()
    started.wait(5)
    with pytest.raises(RequestTimeoutError):
        with queue.admit(time.monotonic() + 0.2, threading.Event()):
            pass
    waiter = threading.Thread(target=lambda: queue.admit(time.monotonic() + 1, threading.Event()).__enter__())
    waiter.start()
    time.sleep(0.1)
    with pytest.raises(QueueFullError):
        with queue.admit(cancelled=threading.Event()):
            pass
    release.set()
    holder.join(5)
    waiter.join(5)
