"""The ``batching`` setting: whether concurrent requests on one model share their lockstep forwards.

With batching on, every request that decodes on the lockstep schedule (Persona-judge lockstep, the weighted
product, guidance) puts its rows into the model's one shared batch, and one forward per step serves all of them
(:mod:`langchain_persona_judge.decoding.batching`); each request's tokens are what it would decode alone. The
speculative schedule keeps its per-persona caches and is not batched.

=========  ==========================================================================================
``auto``   on where the backend has a shared batch (transformers), off elsewhere (llama.cpp, where a
           forward of n rows costs about n forwards of one on a CPU). The default.
``on``     on; an error on a backend that cannot batch.
``off``    every request runs its own forwards, as before.
=========  ==========================================================================================

The setting is per in-memory model (:func:`set_batching`), else ``$PERSONA_JUDGE_BATCHING``, else ``auto``; a
run may override it (``RequestRun(batching=...)``). ``ChatPersonaJudge``, the CLI, the server and the chat app
all decode through :class:`~.run.RequestRun`, so they follow it without a setting of their own. Requests still
take admission slots one each: ``max_concurrency`` bounds how many share a batch.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from ..decoding import ModelBackend
from ..decoding.batching import BatchingBackend, BatchScheduler
from ..defaults import BATCHING_ENV
from ..errors import InvalidOptionError

BATCHING_MODES = ("auto", "on", "off")
"""What ``batching`` takes."""

_LOCK = threading.Lock()
_MODES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_SCHEDULERS: weakref.WeakKeyDictionary[Any, BatchScheduler] = weakref.WeakKeyDictionary()


def _checked(mode: Any, where: str) -> str:
    if mode not in BATCHING_MODES:
        raise InvalidOptionError(f"{where}={mode!r} is invalid: pass one of {', '.join(BATCHING_MODES)}.")
    return str(mode)


def batching_mode(model: ModelBackend) -> str:
    """``model``'s setting: set with :func:`set_batching`, else ``$PERSONA_JUDGE_BATCHING``, else ``auto``."""
    with _LOCK:
        mode = _MODES.get(model.weights)
    if mode is not None:
        return mode
    env = os.environ.get(BATCHING_ENV, "").strip().lower()
    return _checked(env, BATCHING_ENV) if env else "auto"


def set_batching(model: ModelBackend, mode: str) -> None:
    """Set ``model``'s batching (every handle of the same weights shares it); ``on`` on a backend that cannot
    batch raises here."""
    mode = _checked(mode, "batching")
    if mode == "on":
        _refuse_unbatchable(model)
    with _LOCK:
        _MODES[model.weights] = mode


def _refuse_unbatchable(model: ModelBackend) -> None:
    if model.shared_batch() is None:
        raise InvalidOptionError(
            f"batching='on' needs a backend that can share one batch between requests (transformers, with a plain "
            f"KV cache); the {model.kind} model {model.name!r} cannot. Pass batching='auto' or 'off'."
        )


def batch_scheduler(model: ModelBackend) -> BatchScheduler:
    """The one scheduler of ``model``'s weights (created on first use, alive as long as the weights)."""
    with _LOCK:
        scheduler = _SCHEDULERS.get(model.weights)
        if scheduler is None:
            scheduler = _SCHEDULERS[model.weights] = BatchScheduler()
        return scheduler


def batched(model: ModelBackend, mode: str | None = None) -> ModelBackend:
    """``model`` as a run decodes with it: one whose lockstep batches join the model's shared batch when batching
    is on (``mode``, else the model's setting), else ``model`` itself."""
    mode = batching_mode(model) if mode is None else _checked(mode, "batching")
    if mode == "off":
        return model
    if mode == "on":
        _refuse_unbatchable(model)
    elif model.shared_batch() is None:
        return model
    return BatchingBackend(model, batch_scheduler(model))


__all__ = ["BATCHING_MODES", "batch_scheduler", "batched", "batching_mode", "set_batching"]
