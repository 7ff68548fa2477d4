"""Every exception this package raises on purpose, under one root: :class:`PersonaJudgeError`.

Catch ``PersonaJudgeError`` for anything the library refuses or cannot do, or a subclass for one condition.
Each subclass also keeps the built-in exception it has always subclassed (``ValueError`` for bad input,
``TimeoutError`` for a timeout...), so ``except ValueError`` around a call keeps working.

Layer L0: imports nothing from the package.
"""

from __future__ import annotations


class PersonaJudgeError(Exception):
    """Root of every error this package raises on purpose."""


# -- arguments, options and input (every layer) ----------------------------------------------------------


class InvalidOptionError(PersonaJudgeError, ValueError):
    """An option or setting with a value the library cannot use: out of range, an unknown name, a combination
    that does not go together, or one missing that another needs (the message names the option and the fix)."""


class InvalidArgumentError(PersonaJudgeError, TypeError):
    """An argument of the wrong type, or an argument the call does not take."""


class InvalidInputError(PersonaJudgeError, ValueError):
    """Input that cannot be answered: no messages, only empty ones, a message or content block the model cannot
    read, or prompt token ids of the wrong shape."""


# -- decoding (L1) -----------------------------------------------------------------------------------


class DecodingError(PersonaJudgeError, RuntimeError):
    """Decoding cannot go on (for example, the model produced non-finite logits)."""


# -- personas and templates (L1) -----------------------------------------------------------------------


class PersonaError(PersonaJudgeError, ValueError):
    """A persona or registry problem; the message names where, what, and how to fix it."""


class UnknownPersonaError(PersonaError, KeyError):
    """A persona name that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PromptTemplateError(PersonaJudgeError, ValueError):
    """A preference template is missing or does not render."""


# -- grammar-constrained decoding (L1) -------------------------------------------------------------------


class GrammarNotInstalledError(PersonaJudgeError, ImportError):
    """Constrained decoding was asked for but the grammar engine (xgrammar) is not installed."""


class GrammarError(PersonaJudgeError, ValueError):
    """A schema or grammar that the grammar engine cannot compile."""


# -- runtime: loading and running a request (L2) ------------------------------------------------------------


class ModelLoadError(PersonaJudgeError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


class QueueFullError(PersonaJudgeError, RuntimeError):
    """The model's admission queue is full; retry later or raise ``max_queue``."""


class RequestTimeoutError(PersonaJudgeError, RuntimeError, TimeoutError):
    """The call ran past its ``timeout``; ``partial_text`` holds what was decoded before it."""

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class ContextLengthError(PersonaJudgeError, RuntimeError, ValueError):
    """The conversation does not fit in the model's context."""

    def __init__(self, message: str, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class RequestTooLargeError(PersonaJudgeError, ValueError):
    """A request's prompt is over the token cap a server set for one request (a server answers 422)."""

    def __init__(self, message: str, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class OutOfMemoryError(PersonaJudgeError, RuntimeError, MemoryError):
    """The accelerator ran out of memory; the request's caches were freed, and the next request can run."""


# -- preference profiles (learned from a user's choices or writing) -----------------------------------------


class ProfileError(PersonaJudgeError, ValueError):
    """Bad preference evidence, or a profile that cannot be used as asked: a corrupted file, non-finite weights,
    or one learned with another model or basis (the message names which and what to do)."""


__all__ = [
    "ContextLengthError",
    "DecodingError",
    "GrammarError",
    "GrammarNotInstalledError",
    "InvalidArgumentError",
    "InvalidInputError",
    "InvalidOptionError",
    "ModelLoadError",
    "OutOfMemoryError",
    "PersonaError",
    "PersonaJudgeError",
    "ProfileError",
    "PromptTemplateError",
    "QueueFullError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "UnknownPersonaError",
]
