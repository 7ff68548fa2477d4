"""Continuous batching: the lockstep rows of every active request on a model, advanced by one forward per step.

A :class:`BatchScheduler` (one per model) runs the forwards in a worker thread of its own. Each request still
decodes in its caller's thread, with its own decoder; only its lockstep batch (:class:`ScheduledBatch`, what
:class:`BatchingBackend` hands the batched rules) asks the scheduler instead of running a forward itself:

1. **join**: a newcomer's prompts are read by forwards of their own, one chunk of ``prefill_chunk`` columns
   between two steps of the others (so a long prompt stalls them for a chunk at a time), and its rows then join
   the shared batch (:meth:`~.backends.ModelBackend.shared_batch`). Newcomers are read first come, first served:
   one chunk in all between two steps, however many join at once (``prefill_newcomers``);
2. **step**: each request hands in the token it emitted; the worker waits until every punctual request has (at
   most ``patience`` seconds after the first), runs one forward over the rows of all of them and hands each its
   rows' logits. A request that misses a step gets a masked column and is not waited for again until it hands in
   a token (a slow consumer never stalls the others for more than ``patience`` once);
3. **leave**: a request that ends, is cancelled or runs past its deadline releases its batch; its rows are dropped
   before the next step.

Everything else stays per request, in its decoder and its run: the rule, the random generator, the grammar mask,
the stop strings, the deadline and the cancellation. A forward that fails (out of memory, say) fails every request
in the batch; a request whose rows are not finite fails alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import DecodingError, InvalidOptionError
from .backends import LockstepBatch, ModelBackend, Sequences, check_finite
from .options import DecodingStats

DEFAULT_PATIENCE = 0.05
"""Seconds the worker waits, after the first request of a step hands in its token, for the other punctual ones."""


class _Member:
    """One request's rows, as the scheduler sees them."""

    def __init__(self, backend: ModelBackend, prompts: list[list[int]], stats: DecodingStats) -> None:
        self.backend = backend
        self.prompts = prompts
        self.stats = stats
        self.rows: Any = None
        """Its block of rows in the shared batch, once joined."""
        self.token: int | None = None
        """The token it feeds at the next step (None: it has not handed one in)."""
        self.lagging = False
        """It missed a step: the worker does not wait for it until it hands in a token."""
        self.left = False
        self.failed: BaseException | None = None
        """Why the shared batch failed under it; every later step raises it."""
        self.result: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.batch: Any = None
        """While it joins: its lone batch, whose prompts are read chunk by chunk (:attr:`chunks`)."""
        self.chunks: Iterator[torch.Tensor | None] | None = None


class BatchScheduler:
    """The forwards of one model's shared batch: joins, steps and leaves of the requests that use it.

    ``steps`` counts the shared step forwards, ``widest`` the most rows one of them had and ``chunks`` the
    newcomers' prefill forwards (diagnostics, tests).

    Args:
        patience: seconds a step waits, after the first token handed in, for the other punctual requests.
        prefill_newcomers: how many newcomers read a chunk between two steps, oldest first (None: every one,
            a chunk each: what this scheduler did before; eight newcomers at once then stalled the running
            requests for eight chunks at every step).
    """

    def __init__(self, patience: float = DEFAULT_PATIENCE, prefill_newcomers: int | None = 1) -> None:
        if prefill_newcomers is not None and prefill_newcomers < 1:
            raise InvalidOptionError(f"prefill_newcomers={prefill_newcomers}: pass a count >= 1, or None for every "
                                     "one.")
        self.patience = patience
        self.prefill_newcomers = prefill_newcomers
        self.steps = 0
        self.widest = 0
        self.chunks = 0
        self._cond = threading.Condition()
        self._joining: list[_Member] = []
        self._active: list[_Member] = []
        self._leaving: list[_Member] = []
        self._prefilling: list[_Member] = []
        """Newcomers whose prompts are being read (the worker's own list)."""
        self._shared: Any = None
        self._worker: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Requests whose rows are in the shared batch now."""
        with self._cond:
            return len(self._active)

    # -- the requests' side (their own threads) --------------------------------------------------------------

    def join(self, member: _Member) -> torch.Tensor:
        """Read ``member``'s prompts and add its rows; its next-token logits."""
        return self._ask(member, lambda: self._joining.append(member))

    def step(self, member: _Member, token: int) -> torch.Tensor:
        """Feed ``token`` to ``member``'s rows at the next step; their next-token logits."""
        if member.failed is not None:
            raise member.failed

        def hand_in() -> None:
            member.token, member.lagging = token, False

        return self._ask(member, hand_in)

    def leave(self, member: _Member) -> None:
        """Drop ``member``'s rows before the next step (returns at once; twice is harmless)."""
        with self._cond:
            if member.left:
                return
            member.left = True
            if member in self._joining:
                self._joining.remove(member)
            if member in self._active:
                self._active.remove(member)
                self._leaving.append(member)
                self._wake()

    def _ask(self, member: _Member, publish: Any) -> torch.Tensor:
        with self._cond:
            member.done.clear()
            member.result = member.error = None
            publish()
            self._wake()
        member.done.wait()
        if member.error is not None:
            raise member.error
        assert member.result is not None
        return member.result

    def _wake(self) -> None:
        """(Holding the lock.) Start the worker if it is not running, and tell it there is news."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="persona-judge-batching", daemon=True)
            self._worker.start()
        self._cond.notify_all()

    # -- the worker ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        """1. gather what to do, 2. drop the leavers' rows, 3. step every row, 4. read one chunk of the oldest
        newcomer's prompts (``prefill_newcomers``; one read whole joins the shared batch)."""
        while True:
            with self._cond:
                work = self._gather()
                if work is None:
                    self._worker = None
                    return
            leaving, stepping, joining = work
            try:
                with torch.inference_mode():
                    self._drop(leaving)
                    if stepping:
                        self._step(stepping)
                    for member in joining:
                        self._start(member)
                    self._advance()
            except BaseException as exc:  # a bug here must not leave requests waiting forever
                prefilling, self._prefilling = self._prefilling, []
                self._fail(exc, [m for m, _ in stepping] + joining + prefilling)

    def _gather(self) -> tuple[list[_Member], list[tuple[_Member, int]], list[_Member]] | None:
        """(Holding the lock.) Wait for work: a step every punctual member has handed in a token for (or
        ``patience`` ran out), newcomers, leavers, a newcomer's next chunk (after the others' next step, or
        ``patience``). None when nothing is left to do."""
        deadline: float | None = None
        while True:
            ready = [m for m in self._active if m.token is not None]
            late = [m for m in self._active if m.token is None and not m.lagging]
            # A step waits for the punctual members; so does a newcomer's next chunk (one step between chunks).
            if late and (ready or self._prefilling):
                now = time.monotonic()
                deadline = now + self.patience if deadline is None else deadline
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                for member in late:
                    member.lagging = True
            if ready or self._joining or self._leaving or self._prefilling:
                stepping = [(m, m.token) for m in ready]
                for member in ready:
                    member.token = None
                leaving, joining = self._leaving, self._joining
                self._leaving, self._joining = [], []
                return leaving, stepping, joining  # type: ignore[return-value]
            if not self._active:
                return None
            self._cond.wait()

    def _drop(self, leaving: list[_Member]) -> None:
        for member in leaving:
            if self._shared is not None and member.rows is not None:
                self._shared.leave(member.rows)
        if self._shared is not None and not self._shared.members:
            self._shared = None  # holds the model: let it go while idle

    def _step(self, stepping: list[tuple[_Member, int]]) -> None:
        try:
            logits = self._shared.step({member.rows: token for member, token in stepping})
        except BaseException as exc:
            self._fail(exc, [m for m, _ in stepping])
            return
        self.steps += 1
        self.widest = max(self.widest, self._shared.rows)
        for member, _ in stepping:
            member.stats.forward_calls += 1
            member.stats.positions += member.rows.count
            try:
                member.result = check_finite(logits[member.rows.span])
            except DecodingError as exc:
                member.error = exc
            member.done.set()

    def _start(self, member: _Member) -> None:
        """A newcomer: its lone batch, whose prompts :meth:`_advance` reads a chunk at a time."""
        try:
            member.batch = member.backend.batch(member.prompts, 0, member.stats)
            member.chunks = member.batch.prefill_chunks()
        except BaseException as exc:
            member.error, member.batch = exc, None
            member.done.set()
        else:
            self._prefilling.append(member)

    def _advance(self) -> None:
        """One chunk of the oldest newcomers' prompts (``prefill_newcomers`` of them, first come first served: one
        chunk in all between two steps by default, however many join at once); a newcomer whose prompts are read
        joins the shared batch."""
        for member in self._prefilling[: self.prefill_newcomers]:
            try:
                logits = next(member.chunks)  # type: ignore[arg-type]
                self.chunks += 1
            except BaseException as exc:
                logits, member.error = None, exc
            if logits is None and member.error is None:
                continue  # more chunks to read, after the others' next step
            self._prefilling.remove(member)
            batch, member.batch, member.chunks = member.batch, None, None
            if member.error is None:
                self._join(member, batch, logits)
            member.done.set()

    def _join(self, member: _Member, batch: Any, logits: torch.Tensor) -> None:
        try:
            if self._shared is None:
                self._shared = member.backend.shared_batch()
            member.rows, member.result = self._shared.add(batch), logits
        except BaseException as exc:
            member.error = exc
            if self._shared is not None and not self._shared.members:
                self._shared = None
        else:
            with self._cond:
                (self._leaving if member.left else self._active).append(member)

    def _fail(self, exc: BaseException, waiting: list[_Member]) -> None:
        """A forward failed: the shared batch is lost; every member fails (now, or at its next step)."""
        with self._cond:
            for member in self._active:
                member.failed = exc
            self._active, self._leaving = [], []
            self._shared = None
        for member in waiting:
            if not member.done.is_set():
                member.error = exc
                member.done.set()


class ScheduledBatch(LockstepBatch):
    """A request's lockstep batch whose forwards the model's :class:`BatchScheduler` runs, with other requests'."""

    def __init__(self, scheduler: BatchScheduler, backend: ModelBackend, rows: list[list[int]],
                 stats: DecodingStats) -> None:
        super().__init__(rows, stats)
        self.scheduler = scheduler
        self._member = _Member(backend, rows, stats)

    def prefill(self) -> torch.Tensor:
        return self.scheduler.join(self._member)

    def step(self, token: int) -> torch.Tensor:
        return self.scheduler.step(self._member, token)

    @property
    def length(self) -> int:
        shared = self.scheduler._shared
        joined = self._member.rows is not None and not self._member.left
        return shared.columns if joined and shared is not None else 0

    def release(self) -> None:
        self.scheduler.leave(self._member)


class BatchingBackend(ModelBackend):
    """``backend`` as the decoding rules see it under continuous batching: its lockstep batches share
    ``scheduler``'s forwards with other requests; everything else is ``backend``'s own."""

    def __init__(self, backend: ModelBackend, scheduler: BatchScheduler) -> None:
        self.inner = backend
        self.scheduler = scheduler
        self.kind = backend.kind  # type: ignore[misc]
        self.name = backend.name
        self.tokenizer = backend.tokenizer
        self.device = backend.device

    def __repr__(self) -> str:
        return f"BatchingBackend({self.inner!r})"

    @property
    def weights(self) -> Any:
        return self.inner.weights

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.inner.eos_token_ids

    def sequences(self, prompt_lengths: list[int], capacity: int, stats: DecodingStats) -> Sequences:
        return self.inner.sequences(prompt_lengths, capacity, stats)

    def batch(self, rows: list[list[int]], capacity: int, stats: DecodingStats) -> LockstepBatch:
        return ScheduledBatch(self.scheduler, self.inner, rows, stats)

    def prefers_lockstep(self) -> bool:
        return self.inner.prefers_lockstep()

    def shared_batch(self) -> Any | None:
        return self.inner.shared_batch()


__all__ = ["DEFAULT_PATIENCE", "BatchScheduler", "BatchingBackend", "ScheduledBatch"]
