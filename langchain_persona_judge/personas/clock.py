"""The wall-clock time limit of template renders: a :class:`Clock` that the renders of one persona share.

:func:`~.sandbox.render_template` runs on the clock of :func:`shared_clock` when there is one (a persona's
``extends`` chain renders on one: :meth:`~.registry.PersonaRegistry.render`), on a clock of its own
(:data:`MAX_RENDER_SECONDS`) otherwise; only rendering counts, not compiling. The guards of :mod:`.guards` check
the deadline at every step a template takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

MAX_RENDER_SECONDS = 0.5
"""Wall-clock seconds of one render: a preference template, or a persona's text along its ``extends`` chain."""


@dataclass
class Clock:
    """Wall-clock seconds of template work left to the renders that share it."""

    left: float = MAX_RENDER_SECONDS
    seconds: float = MAX_RENDER_SECONDS
    """The limit it started with (for the message)."""


CLOCK: ContextVar[Clock | None] = ContextVar("persona_template_clock", default=None)


@contextmanager
def shared_clock(seconds: float = MAX_RENDER_SECONDS) -> Iterator[Clock]:
    """The renders inside share one :class:`Clock` of ``seconds`` (the enclosing one, if there is one already):
    a persona's ``extends`` chain renders within one time limit, not one per ancestor."""
    outer = CLOCK.get()
    if outer is not None:
        yield outer
        return
    clock = Clock(seconds, seconds)
    token = CLOCK.set(clock)
    try:
        yield clock
    finally:
        CLOCK.reset(token)


__all__ = ["CLOCK", "MAX_RENDER_SECONDS", "Clock", "shared_clock"]
