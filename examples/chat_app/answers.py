"""One answer, from the user's message stored to the answer stored: :class:`AnswerRun`.

The run waits for its conversation's turn (one answer at a time per conversation), stores the message, streams
the model's answer to the generation's events, and stores the answer with its usage, timings and provenance;
or marks it cancelled, or reports its error (to the client in general terms, to the log in full).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from langchain_persona_judge import QueueFullError

from .generations import CURRENT_GENERATION, Generation
from .models import AnswerModel, Ending, ModelTierError
from .provenance import provenance
from .schemas import MessageIn, Plan
from .settings import RETRY_AFTER_S, Settings
from .storage import ConversationGone, Store

log = logging.getLogger("examples.chat_app")


class Host(Protocol):
    """What a run needs from the chat service."""

    settings: Settings
    store: Store
    model: AnswerModel
    """Where the answer is decoded (this process, or a remote model tier)."""
    totals: dict[str, int]
    generations: Mapping[str, Generation]

    def turn(self, session_id: str) -> AbstractAsyncContextManager[None]: ...

    def finished(self, gen: Generation) -> None: ...


class AnswerRun:
    """One generation's task: :meth:`run`."""

    def __init__(self, host: Host, gen: Generation, body: MessageIn, plan: Plan) -> None:
        self.host = host
        self.gen = gen
        self.body = body
        self.plan = plan
        self.meta: dict[str, Any] = {"generation_id": gen.id}
        """What is stored with the answer."""

    async def run(self) -> None:
        gen, host = self.gen, self.host
        CURRENT_GENERATION.set(gen)  # this task's own context: tags the decoding thread(s) astream starts
        try:
            async with host.turn(gen.session_id):
                gen.user_message_id = await host.store.add_message(
                    gen.session_id, "user", self.body.content, personas=self.body.personas,
                    preferences=self.body.preferences, meta={"generation_id": gen.id},
                )
                context = await self._context()
                ahead = sum(1 for g in host.generations.values() if g.state == "queued" and g is not gen)
                gen.publish("queued", {"generation_id": gen.id, "session_id": gen.session_id,
                                       "user_message_id": gen.user_message_id, "waiting_ahead": ahead})
                final = await self._decode(context)
                gen.decoded = True
                await self._complete(final)
        except asyncio.CancelledError:
            await self._cancelled()
        except Exception as exc:  # noqa: BLE001 - logged in full, reported to the client in general terms
            await self._fail(exc)
        finally:
            gen.finished = time.monotonic()
            host.finished(gen)
            gen.publish(None)

    async def _context(self) -> list[dict[str, str]]:
        """The conversation the model sees: users' messages and complete answers, the last CHAT_HISTORY + 1 (only
        those are read from the store, however long the conversation), as role/content dicts."""
        rows = await self.host.store.context(self.gen.user_id, self.gen.session_id, self.host.settings.history + 1)
        return [{"role": "user" if m["role"] == "user" else "assistant", "content": m["content"]} for m in rows]

    async def _decode(self, context: list[dict[str, str]]) -> Ending:
        """Stream the answer into the generation's events; what the last chunks said (usage, metadata, trace).
        The model's admission queue (this process's or the server's) serves users round-robin by account id."""
        gen = self.gen
        final = Ending()
        stream = self.host.model.stream(context, decoding_options(self.body, self.plan), user=gen.user_id)
        try:
            async for item in stream:
                if gen.state == "queued":  # the admission queue let it in, and it has read its prompt
                    self._started()
                if isinstance(item, Ending):
                    final = item
                elif item:
                    if gen.first_token is None:
                        gen.first_token = time.monotonic()
                    gen.text.append(item)
                    gen.pieces += 1
                    gen.publish("token", {"text": item})
        finally:
            await stream.aclose()  # closing it stops the decode (the model's thread, or the server's)
        return final

    def _started(self) -> None:
        """The first chunk: the generation left the admission queue (the library does not say exactly when)."""
        gen = self.gen
        gen.state = "running"
        gen.started = time.monotonic()
        gen.publish("start", {"generation_id": gen.id, "queue_wait_s": round(gen.started - gen.created, 4)})

    async def _complete(self, final: Ending) -> None:
        """Store the whole answer with its usage, timings and provenance, and tell the client."""
        gen, plan, meta, totals = self.gen, self.plan, self.meta, self.host.totals
        metadata = final.metadata
        usage = final.usage
        gen.output_tokens = int(usage.get("output_tokens", gen.pieces))
        meta.update(timings(gen), finish_reason=metadata.get("finish_reason"), usage=usage,
                    persona_judge=metadata.get("persona_judge"),
                    preferences_used=plan.preferences or list(plan.profile_texts))
        if plan.profile is not None:  # what the profile added: its poles with their weights, its description
            meta["profile"] = metadata.get("profile") or {}
        elif plan.profile_note:
            meta["profile_not_used"] = plan.profile_note
        trace, tokenizer = final.trace, self.host.model.tokenizer
        if trace and tokenizer is not None:  # a remote model tier sends no trace: no provenance view
            labels = plan.labels or ["no preference"]
            try:
                meta["provenance"] = await asyncio.to_thread(provenance, trace, tokenizer, labels)
            except Exception:  # noqa: BLE001 - the answer stands without its provenance
                log.exception("generation %s: could not build the provenance view", gen.id)
        await self._store_answer()
        gen.state = "completed"
        totals["completed"] += 1
        totals["output_tokens"] += gen.output_tokens
        gen.publish("done", {"generation_id": gen.id, "message_id": gen.message_id, "session_id": gen.session_id,
                             **meta})

    async def _cancelled(self) -> None:
        """Mark it cancelled; tell a client that may still be listening; keep what was said, marked cancelled."""
        gen = self.gen
        gen.state = "cancelled"
        gen.cancel_reason = gen.cancel_reason or "server shutdown"
        self.host.totals["cancelled"] += 1
        if gen.cancel_reason != "client disconnected":  # someone may still be listening
            gen.publish("error", {"generation_id": gen.id, "status": 410 if gen.orphaned else 503,
                                  "message": f"The answer was stopped: {gen.cancel_reason}."})
        if gen.user_message_id is not None and not gen.orphaned:
            self.meta.update(timings(gen), cancel_reason=gen.cancel_reason)
            await self._store_answer(status="cancelled")

    async def _fail(self, exc: Exception) -> None:
        """Log the error with its details; tell the client in general terms (a full admission queue: status 429
        with ``retry_after``, and the message that was stored is taken back, as if the request had been refused at
        the door; a remote model tier that cannot be reached, or dropped the answer before its first piece: status
        503, likewise)."""
        gen, totals = self.gen, self.host.totals
        gen.state = "error"
        event: dict[str, Any] = {"generation_id": gen.id}
        if isinstance(exc, QueueFullError):
            gen.error = "busy"
            totals["refused"] += 1
            event.update(status=429, message="The model is busy; retry in a moment.",
                         retry_after=getattr(exc, "retry_after", RETRY_AFTER_S))
            log.warning("generation %s refused by the admission queue: %s", gen.id, exc)
            await self._take_back_message()
        elif isinstance(exc, ModelTierError):
            gen.error = exc.public
            totals["errors"] += 1
            event.update(status=exc.status, message=exc.public)
            if exc.retry_after:
                event["retry_after"] = exc.retry_after
            log.error("generation %s (conversation %s): %s", gen.id, gen.session_id, exc)
            if not gen.text:  # nothing was said: as if refused at the door, the client may send it again
                await self._take_back_message()
        elif isinstance(exc, ConversationGone):
            gen.error = "conversation deleted"
            event.update(status=410, message="The conversation was deleted.")
        else:
            gen.error = public_error(exc)
            totals["errors"] += 1
            event.update(status=500, message=gen.error)
            log.error("generation %s (conversation %s) failed", gen.id, gen.session_id, exc_info=exc)
        gen.publish("error", event)
        if gen.user_message_id is not None and not gen.orphaned:
            self.meta.update(timings(gen), error=gen.error)
            try:
                await self._store_answer(status="error")
            except Exception:  # noqa: BLE001
                log.exception("generation %s: could not store its error", gen.id)

    async def _take_back_message(self) -> None:
        gen = self.gen
        if gen.user_message_id is not None and not gen.orphaned:
            try:
                await self.host.store.delete_message(gen.user_message_id)
            except Exception:  # noqa: BLE001
                log.exception("generation %s: could not take back its message", gen.id)
            gen.user_message_id = None

    async def _store_answer(self, status: str = "complete") -> None:
        gen = self.gen
        if gen.orphaned:
            return
        try:
            gen.message_id = await self.host.store.add_message(
                gen.session_id, "assistant", "".join(gen.text), status=status, personas=self.body.personas,
                preferences=self.body.preferences, meta=self.meta,
            )
        except ConversationGone:  # deleted by another process meanwhile
            gen.orphaned = True


def decoding_options(body: MessageIn, plan: Plan) -> dict[str, Any]:
    """The per-call options of ``ChatPersonaJudge.astream`` for this message: what it set, and its plan."""
    options: dict[str, Any] = {"preferences": plan.preferences}
    for name in ("max_tokens", "temperature", "guidance", "combine", "seed"):
        value = getattr(body, name)
        if value is not None:
            options[name] = value
    if plan.profile is not None:
        options["profile"] = plan.profile
    return options


def timings(gen: Generation) -> dict[str, Any]:
    """How long the generation waited, decoded and took to its first token, and its tokens per second."""
    now = time.monotonic()
    out: dict[str, Any] = {}
    if gen.started is not None:
        out["queue_wait_s"] = round(gen.started - gen.created, 4)
        out["decode_s"] = round(now - gen.started, 4)
    if gen.first_token is not None:
        out["ttft_s"] = round(gen.first_token - gen.created, 4)
        span = now - gen.first_token
        count = gen.output_tokens or gen.pieces
        if count > 1 and span > 0:
            out["tokens_per_s"] = round((count - 1) / span, 3)
    return out


def public_error(exc: Exception) -> str:
    """What a client is told about an error: its kind in general terms, never its text (paths, internals)."""
    from langchain_persona_judge.errors import ContextLengthError, RequestTimeoutError

    if isinstance(exc, ContextLengthError):
        return "The conversation is too long for the model; start a new one."
    if isinstance(exc, RequestTimeoutError):
        return "The answer took too long and was stopped."
    return "The answer failed because of an error on the server (its log has the details)."
