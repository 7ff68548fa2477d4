"""The process-wide model registry: shared weights, and the state kept per in-memory model.

One lifetime rule for everything kept per model:

* **Weights loaded by name** (``shared_model``) are loaded once per ``(name, device, dtype, backend)`` and held by the
  registry until :func:`release_model` (or the process ends): every ``ChatPersonaJudge`` that names the same
  model shares one copy.
* **State kept per model** (its admission queue) is keyed by the object holding the weights (a handle's
  ``weights``: the transformers model itself, or the llama.cpp model) in a weak-keyed map, never by
  ``id(model)``: it lives exactly as long as the model does, so a new model that happens to get a dead one's
  ``id`` can never inherit its queue, and a discarded model leaves nothing behind. Grammar compilers follow the
  same rule per tokenizer (:mod:`langchain_persona_judge.grammar`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from ..decoding.backends import ModelBackend
from .admission import AdmissionQueue
from .loading import EMBEDDED_NAME, load_model, resolve_backend

ModelKey = tuple[str | None, str, str | None, str]


class ModelRegistry:
    """Shared model handles by ``(name, device, dtype, backend)``, and one admission queue per in-memory model."""

    def __init__(self) -> None:
        self._loaded: dict[ModelKey, ModelBackend] = {}
        self._queues: weakref.WeakKeyDictionary[Any, AdmissionQueue] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str | None, device: str | None, dtype: str | None, backend: str | None = "auto") -> ModelKey:
        if device is None:  # the default load_model takes, so that None and "cpu" share one copy on a CPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # "auto" resolved, so that auto and the backend it picks share one copy.
        resolved = resolve_backend(backend, name, device, dtype)
        return (None if name is None else str(name), str(device), None if dtype is None else str(dtype), resolved)

    def load(
        self, name: str | None = None, device: str | None = None, dtype: str | None = None, backend: str | None = "auto"
    ) -> ModelBackend:
        """The handle of ``name`` on ``device`` (its backend built once), loaded on first use and shared
        afterwards."""
        key = self.key(name, device, dtype, backend)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_model(key[0], device=key[1], dtype=key[2], backend=key[3])
            return self._loaded[key]

    def release(
        self, name: str | None = None, device: str | None = None, dtype: str | None = None, backend: str | None = "auto"
    ) -> bool:
        """Drop the registry's reference to a shared model; True if it held one. Callers that still hold the
        model keep it (and its queue) alive; the next ``load`` of that key loads afresh."""
        with self._lock:
            return self._loaded.pop(self.key(name, device, dtype, backend), None) is not None

    def loaded(self) -> list[ModelKey]:
        """The keys of the models held now."""
        with self._lock:
            return list(self._loaded)

    def queue(self, model: Any) -> AdmissionQueue:
        """The admission queue of one in-memory model (shared by everything using those weights: every handle of
        a transformers model, and the bare model itself)."""
        if isinstance(model, ModelBackend):
            model = model.weights
        with self._lock:
            queue = self._queues.get(model)
            if queue is None:
                queue = self._queues[model] = AdmissionQueue()
            return queue

    def share_queue(self, model: Any, with_model: Any) -> AdmissionQueue:
        """Make ``model`` wait in ``with_model``'s admission queue from now on (one set of slots for two copies of
        the same weights, e.g. the llama.cpp model a server decodes with and the transformers one it scores with).
        Either may be a handle (its ``weights`` are the key) or the in-memory model itself."""
        if isinstance(model, ModelBackend):
            model = model.weights
        if isinstance(with_model, ModelBackend):
            with_model = with_model.weights
        with self._lock:
            queue = self._queues.get(with_model)
            if queue is None:
                queue = self._queues[with_model] = AdmissionQueue()
            self._queues[model] = queue
            return queue

    def clear(self) -> None:
        """Forget every shared model (tests; a long-lived process that swaps models)."""
        with self._lock:
            self._loaded.clear()


REGISTRY = ModelRegistry()
"""The one registry of this process."""


def shared_model(
    name: str | None = None, *, device: str | None = None, dtype: str | None = None, backend: str | None = "auto"
) -> ModelBackend:
    """The model's handle (see :func:`~.loading.load_model`), shared process-wide: what every
    ``ChatPersonaJudge(model=name)`` uses.

    ``name`` None is the embedded SmolLM2-135M-Instruct. Unlike :func:`~.loading.load_model`, which loads a new
    copy on every call, this loads once per ``(name, device, dtype, backend)``.
    """
    return REGISTRY.load(name, device, dtype, backend)


def release_model(
    name: str | None = None, *, device: str | None = None, dtype: str | None = None, backend: str | None = "auto"
) -> bool:
    """Drop the shared copy of a model (see :class:`ModelRegistry`); True if one was held."""
    return REGISTRY.release(name, device, dtype, backend)


def admission_queue(model: Any) -> AdmissionQueue:
    """The admission queue of ``model`` (one per in-memory model, alive as long as the model)."""
    return REGISTRY.queue(model)


def display_name(name: str | None, model: Any = None) -> str:
    """How a model is named to people: its id or path; for an in-memory model its handle's name; else the
    embedded model's name."""
    if name:
        return str(name)
    if isinstance(model, ModelBackend):
        return model.name or type(model).__name__
    if model is not None:
        config = getattr(model, "config", None)
        return getattr(config, "_name_or_path", None) or type(model).__name__
    return EMBEDDED_NAME


__all__ = [
    "REGISTRY",
    "ModelRegistry",
    "admission_queue",
    "display_name",
    "release_model",
    "shared_model",
]
