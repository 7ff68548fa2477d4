"""Admission of requests to a shared model: a bounded queue served round-robin by user, and a cost cap in tokens.

Policy: at most ``limit`` (``max_concurrency``) decodes run at once on one model (all ``ChatPersonaJudge``
objects that share its weights share the queue); further requests wait, at most ``max_queue`` of them; one more
is refused at once with :class:`~langchain_persona_judge.errors.QueueFullError`. A request that cannot start
before its deadline raises :class:`~langchain_persona_judge.errors.RequestTimeoutError`.

Fairness: each request carries a *user key* (an account id, an API key; ``None`` is one shared anonymous bucket).
Waiting requests are served **round-robin by user** (first in line within a user), so one user who floods the
queue delays another user who arrives later by at most one of their own requests per free slot, not by the whole
flood. A keyed user may hold at most ``per_user`` slots at once; by default one fewer than the slot count (at
least 1), so no single user can hold every slot. The anonymous bucket (a library caller that names no user) is
not capped per user: it is one caller by assumption.

Cost: :func:`check_prompt_tokens` counts a prompt's tokens before a request is accepted and refuses one over a
cap with :class:`~langchain_persona_judge.errors.RequestTooLargeError` (a server maps it to HTTP 422), so a
request's prefill cost is bounded in tokens rather than characters.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import QueueFullError, RequestTimeoutError, RequestTooLargeError

_KEEP: Any = object()  # configure(): leave this setting as it is


class AdmissionQueue:
    """Round-robin admission by user: ``limit`` running at once (None: no limit), at most ``max_queue`` waiting,
    at most ``per_user`` running per keyed user (None: ``limit - 1``, at least 1)."""

    def __init__(self, limit: int | None = None, max_queue: int | None = None, per_user: int | None = None) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.per_user = per_user
        self.running = 0
        self._running_by: dict[Hashable, int] = {}
        self._waiting_by: dict[Hashable, deque[int]] = {}  # user -> their tickets, in arrival order
        self._turns: deque[Hashable] = deque()  # users with waiting tickets, in round-robin order
        self._count = 0
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        return self._count

    @property
    def user_limit(self) -> int | None:
        """The slots one keyed user may hold at once (the explicit ``per_user``, else one fewer than the slots)."""
        if self.per_user is not None:
            return self.per_user
        return None if self.limit is None else max(1, self.limit - 1)

    def running_for(self, user: Hashable | None) -> int:
        """How many of ``user``'s requests hold a slot now."""
        with self._cond:
            return self._running_by.get(user, 0)

    def configure(self, limit: int | None, max_queue: int | None, per_user: int | None = _KEEP) -> None:
        with self._cond:
            self.limit, self.max_queue = limit, max_queue
            if per_user is not _KEEP:
                self.per_user = per_user
            self._cond.notify_all()

    def _free(self) -> bool:
        return self.limit is None or self.running < self.limit

    def _may_run(self, user: Hashable | None) -> bool:
        cap = self.user_limit
        return user is None or cap is None or self._running_by.get(user, 0) < cap

    def _next(self) -> int | None:
        """The ticket whose turn it is: the first waiting user (in round-robin order) below their limit."""
        for user in self._turns:
            if self._may_run(user):
                return self._waiting_by[user][0]
        return None

    @contextmanager
    def admit(
        self,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        user: Hashable | None = None,
    ) -> Iterator[bool]:
        """Hold a slot for the body; wait for ``user``'s turn, until ``deadline`` (a ``time.monotonic()`` value).

        Yields True with a slot held, or False (and no slot) when ``cancelled`` is set while the request waits:
        a request whose caller went away leaves the queue at once instead of running when its turn comes.
        """
        with self._cond:
            admitted = True
            if not self._count and self._free() and self._may_run(user):
                self._take(user)
            else:
                if self.max_queue is not None and self._count >= self.max_queue:
                    raise QueueFullError(
                        f"{self._count} requests are already waiting for this model (max_queue="
                        f"{self.max_queue}); retry later, or raise max_queue / max_concurrency."
                    )
                admitted = self._wait_turn(deadline, cancelled, user)
        if not admitted:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self.running -= 1
                left = self._running_by.get(user, 1) - 1
                if left > 0:
                    self._running_by[user] = left
                else:
                    self._running_by.pop(user, None)
                self._cond.notify_all()

    def _take(self, user: Hashable | None) -> None:
        self.running += 1
        self._running_by[user] = self._running_by.get(user, 0) + 1

    def _wait_turn(self, deadline: float | None, cancelled: threading.Event | None, user: Hashable | None) -> bool:
        """Queue up and wait (holding ``_cond``) until it is this ticket's turn with a free slot; False if
        cancelled first. Taking the slot moves ``user`` to the back of the round."""
        ticket = next(self._tickets)
        mine = self._waiting_by.get(user)
        if mine is None:
            mine = self._waiting_by[user] = deque()
            self._turns.append(user)
        mine.append(ticket)
        self._count += 1
        admitted = False
        try:
            while not (self._free() and self._next() == ticket):
                if cancelled is not None and cancelled.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeoutError(
                        f"Waited past the timeout for a free slot on this model ({self.running} running, "
                        f"{self._count - 1} others waiting); raise timeout or max_concurrency."
                    )
                if cancelled is not None:  # nobody notifies on cancellation: look again every 50 ms
                    remaining = _CANCEL_POLL_S if remaining is None else min(remaining, _CANCEL_POLL_S)
                self._cond.wait(remaining)
            self._take(user)
            admitted = True
            return True
        finally:
            self._leave(user, ticket, served=admitted)
            self._cond.notify_all()

    def _leave(self, user: Hashable | None, ticket: int, *, served: bool) -> None:
        """Take ``ticket`` out of the line; a served user goes to the back of the round, if still waiting."""
        mine = self._waiting_by[user]
        mine.remove(ticket)
        self._count -= 1
        if not mine:
            del self._waiting_by[user]
            self._turns.remove(user)
        elif served:
            self._turns.remove(user)
            self._turns.append(user)


_CANCEL_POLL_S = 0.05


def count_prompt_tokens(tokenizer: Any, text: str) -> int:
    """How many tokens ``text`` is for ``tokenizer`` (no special tokens added): the prefill it will cost."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a tokenizer whose encode takes no add_special_tokens
        ids = tokenizer.encode(text)
    return len(ids)


def check_prompt_tokens(tokenizer: Any, text: str, limit: int | None, *, what: str = "The message") -> int:
    """The token count of ``text``; :class:`~langchain_persona_judge.errors.RequestTooLargeError` when it is over
    ``limit`` (None: no limit). Call it before accepting a request, so that nothing is stored or queued for one
    that is refused."""
    tokens = count_prompt_tokens(tokenizer, text)
    if limit is not None and tokens > limit:
        raise RequestTooLargeError(
            f"{what} is {tokens} tokens long; the most one request may carry is {limit}. Shorten it, or split it "
            "into several messages.",
            tokens=tokens,
            limit=limit,
        )
    return tokens


__all__ = ["AdmissionQueue", "check_prompt_tokens", "count_prompt_tokens"]
