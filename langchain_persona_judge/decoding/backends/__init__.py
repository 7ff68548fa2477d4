"""Model backends: what runs the forwards under the decoding rules (see :mod:`.base`).

``transformers`` (:mod:`.hf`) runs any ``PreTrainedModel``; ``llamacpp`` (:mod:`.llamacpp`) runs a GGUF file
through llama.cpp (``pip install 'langchain-persona-judge[llamacpp]'``).
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError

from .base import NON_FINITE, LockstepBatch, ModelBackend, Sequences, check_finite
from .hf import ForwardSignature, TransformersBackend

BACKENDS = ("transformers", "llamacpp")
"""The backends' names, as ``backend=`` takes them (besides ``"auto"``)."""


def as_backend(model: Any) -> ModelBackend:
    """``model`` as the decoding rules see it: a :class:`ModelBackend` (what ``load_model`` returns) is used as
    it is; anything else is taken for a bare transformers causal LM and wrapped, once per call (wrap it yourself,
    ``TransformersBackend(model, tokenizer)``, to do that once)."""
    if isinstance(model, ModelBackend):
        return model
    if not (hasattr(model, "config") and callable(model)):
        raise InvalidArgumentError(
            f"model is a {type(model).__name__}; pass a transformers causal LM (AutoModelForCausalLM) or a model "
            "from load_model (either backend)."
        )
    return TransformersBackend(model)


def backend_name(model: Any) -> str:
    """The name of the backend that runs ``model``."""
    return model.kind if isinstance(model, ModelBackend) else TransformersBackend.kind


__all__ = [
    "BACKENDS",
    "NON_FINITE",
    "ForwardSignature",
    "LockstepBatch",
    "ModelBackend",
    "Sequences",
    "TransformersBackend",
    "as_backend",
    "backend_name",
    "check_finite",
]
