"""Errors in OpenAI's shape, with the statuses the SDKs map to their exception classes.

``{"error": {"message", "type", "param", "code"}}``: 400 ``BadRequestError``, 401 ``AuthenticationError``, 404
``NotFoundError``, 413, 429 ``RateLimitError`` (with ``Retry-After``), 503 while the model loads. A request the
server cannot honour is always a 4xx naming the field; a 500 means a bug (its message says so, never a traceback).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ..errors import (
    ContextLengthError,
    GrammarError,
    GrammarNotInstalledError,
    OutOfMemoryError,
    PersonaError,
    PersonaJudgeError,
    ProfileError,
    PromptTemplateError,
    QueueFullError,
    RequestTimeoutError,
)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout_error"}


class ApiError(PersonaJudgeError):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a client names it: ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "function-after[_text_parts_only(), union[str,list[TextPart],none]]"):
            continue  # pydantic's union-member labels name no field
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation(exc: ValidationError) -> ApiError:
    """The body's first validation error, naming its field."""
    errors = exc.errors(include_url=False)
    # Prefer the error of a union's intended member: for content, the list branch says why a part is refused.
    first = next((e for e in errors if "content part" in str(e.get("msg"))), errors[0])
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "list"))))
    param = field_path(loc) or None
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown field; it is not an OpenAI chat-completions or Persona-judge field"
    elif first["type"] == "missing":
        message = "required field is missing"
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


_LEADING_NAME = re.compile(r"^([a-z_]+)(?:=| )")


def _named_field(message: str) -> str | None:
    """The request field an option error starts with (``weights has 2 value(s)...``, ``guidance=nan is...``)."""
    from .schema import ChatCompletionRequest

    match = _LEADING_NAME.match(message)
    return match.group(1) if match and match.group(1) in ChatCompletionRequest.model_fields else None


def from_exception(exc: BaseException) -> ApiError:
    """An exception raised while building or running a request, as the error a client can act on; the message
    starts with the field it is about."""
    error = _classify(exc)
    if error.param and not error.message.startswith(error.param.split("[")[0]):
        error.message = f"{error.param}: {error.message}"
    return error


def _classify(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    if isinstance(exc, QueueFullError):
        return ApiError(429, str(exc), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, str(exc), code="timeout")
    if isinstance(exc, OutOfMemoryError):
        return ApiError(503, str(exc), code="out_of_memory", headers={"Retry-After": "1"})
    if isinstance(exc, (PersonaError, PromptTemplateError)):
        return ApiError(400, str(exc), param="preferences", code="invalid_value")
    if isinstance(exc, ProfileError):
        return ApiError(400, str(exc), param="profile", code="invalid_value")
    if isinstance(exc, (GrammarError, GrammarNotInstalledError)):
        return ApiError(400, str(exc), param="response_format", code="invalid_value")
    if isinstance(exc, (PersonaJudgeError, ValueError, TypeError)):
        return ApiError(400, str(exc), param=_named_field(str(exc)), code="invalid_value")
    return ApiError(500, f"The server failed to answer ({type(exc).__name__}); this is a bug, please report it.",
                    code="internal_error")


__all__ = ["ApiError", "field_path", "from_exception", "from_validation"]
