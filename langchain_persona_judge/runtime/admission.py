"""Admission of requests to a shared model: a bounded FIFO queue, and the errors callers can act on.

Policy: at most ``max_concurrency`` decodes run at once on one model (all ``ChatPersonaJudge`` objects that
share its weights share the queue); further requests wait in arrival order, at most ``max_queue`` of them;
one more is refused at once with :class:`~langchain_persona_judge.errors.QueueFullError`. A request that cannot start before its deadline
raises :class:`~langchain_persona_judge.errors.RequestTimeoutError`. Running decodes interleave their iterations, so on a CPU a limit near the
number of cores keeps time-to-first-token fair instead of thrashing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import QueueFullError, RequestTimeoutError


class AdmissionQueue:
    """FIFO admission: ``limit`` running at once (None: no limit), at most ``max_queue`` waiting."""

    def __init__(self, limit: int | None = None, max_queue: int | None = None) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.running = 0
        self._waiting: deque[int] = deque()
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def configure(self, limit: int | None, max_queue: int | None) -> None:
        with self._cond:
            self.limit, self.max_queue = limit, max_queue
            self._cond.notify_all()

    def _free(self) -> bool:
        return self.limit is None or self.running < self.limit

    @contextmanager
    def admit(self, deadline: float | None = None, cancelled: threading.Event | None = None) -> Iterator[bool]:
        """Hold a slot for the body; wait in FIFO order, until ``deadline`` (a ``time.monotonic()`` value).

        Yields True with a slot held, or False (and no slot) when ``cancelled`` is set while the request waits:
        a request whose caller went away leaves the queue at once instead of running when its turn comes.
        """
        with self._cond:
            admitted = True
            if not self._waiting and self._free():
                self.running += 1
            else:
                if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                    raise QueueFullError(
                        f"{len(self._waiting)} requests are already waiting for this model (max_queue="
                        f"{self.max_queue}); retry later, or raise max_queue / max_concurrency."
                    )
                admitted = self._wait_turn(deadline, cancelled)
                if admitted:
                    self.running += 1
        if not admitted:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self.running -= 1
                self._cond.notify_all()

    def _wait_turn(self, deadline: float | None, cancelled: threading.Event | None) -> bool:
        """Queue up and wait (holding ``_cond``) until first in line with a free slot; False if cancelled first."""
        ticket = next(self._tickets)
        self._waiting.append(ticket)
        try:
            while not (self._waiting[0] == ticket and self._free()):
                if cancelled is not None and cancelled.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeoutError(
                        f"Waited past the timeout for a free slot on this model ({self.running} running, "
                        f"{len(self._waiting) - 1} others waiting); raise timeout or max_concurrency."
                    )
                if cancelled is not None:  # nobody notifies on cancellation: look again every 50 ms
                    remaining = _CANCEL_POLL_S if remaining is None else min(remaining, _CANCEL_POLL_S)
                self._cond.wait(remaining)
            return True
        finally:
            self._waiting.remove(ticket)
            self._cond.notify_all()


_CANCEL_POLL_S = 0.05


__all__ = ["AdmissionQueue"]
