"""The request body of ``POST /v1/chat/completions``, declared in one place.

OpenAI's fields (the ones the server honours, the ones clients send by default and that change nothing, and the
ones it refuses because they would change the answer and are not supported), then Persona-judge's: ``preferences``
and ``profile`` here, every decoding option from :func:`langchain_persona_judge.option_specs.http_fields` (their
types, ranges and choices come from the one declaration of each option).

Unknown fields are refused (``extra="forbid"``): a misspelt option is an error naming it, never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from ..errors import InvalidInputError, InvalidOptionError
from ..option_specs import http_fields, options_for


class TextPart(BaseModel):
    """A text part of a message's content (the only kind this text model reads)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str
    """The arguments as a JSON string (OpenAI's form)."""


class ToolCallIn(BaseModel):
    """A call an earlier assistant turn made."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One turn. Fields a client attaches that carry no text (``refusal``, ``audio``...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise InvalidInputError(f"a {kind!r} content part is not supported; this model reads text parts only")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class _OpenAIFields(BaseModel):
    """OpenAI's chat-completions fields; the decoding options (``max_tokens``, ``temperature``...) are added from
    the option table below."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = Field(default=None)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    n: int | None = None
    user: str | None = None
    """The fair-admission key when the server has no API keys (waiting requests are served round-robin by it)."""
    # Accepted, and they change nothing in the answer.
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Refused unless neutral (see REFUSED): they would change the answer and are not supported.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    modalities: list[str] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    # Persona-judge (decoding options come from the option table).
    preferences: list[Any] | None = None
    """Free texts, persona names, or ``[name, {variables}]`` pairs (checked by ``completions.preference_specs``)."""
    profile: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > 4:
            raise InvalidOptionError("at most 4 stop sequences")
        return value


class TokenizeRequest(BaseModel):
    """The body of ``POST /tokenize``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None


ChatCompletionRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ChatCompletionRequest", __base__=_OpenAIFields, **http_fields()
)
"""The whole body: OpenAI's fields and every ``http`` option of :mod:`langchain_persona_judge.option_specs`."""

ENGINE_OPTIONS: tuple[tuple[str, str, Any], ...] = tuple(
    (spec.name, spec.field_name, spec.default) for spec in options_for("http") if "engine" in spec.surfaces
)
"""``(body field, DecodingOptions field, default)`` of each decoding option a body may carry."""


def _neutral(value: Any) -> bool:
    return value in (None, False, 0, {}, [])


REFUSED: tuple[tuple[str, Any, str], ...] = (
    ("n", lambda v: v in (None, 1), "only n=1 is supported; send n requests for n answers"),
    ("logprobs", lambda v: not v, "log-probabilities are not returned; drop logprobs"),
    ("top_logprobs", _neutral, "log-probabilities are not returned; drop top_logprobs"),
    ("logit_bias", _neutral, "logit_bias is not supported; use preferences or a response_format instead"),
    ("frequency_penalty", _neutral, "frequency_penalty is not supported; use repetition_penalty"),
    ("presence_penalty", _neutral, "presence_penalty is not supported; use repetition_penalty"),
    ("modalities", lambda v: v in (None, ["text"]), "only the text modality is supported"),
    ("functions", _neutral, "the legacy functions field is not supported; use tools"),
    ("function_call", _neutral, "the legacy function_call field is not supported; use tool_choice"),
    ("audio", _neutral, "audio output is not supported"),
    ("prediction", _neutral, "predicted outputs are not supported"),
    ("reasoning_effort", _neutral, "reasoning_effort is not supported by this model"),
    ("verbosity", _neutral, "verbosity is not supported; say how long in preferences instead"),
    ("web_search_options", _neutral, "web search is not supported"),
)
"""``(field, accepts(value), why)``: fields that would change the answer, refused unless neutral."""


def refused_field(body: Any) -> tuple[str, str] | None:
    """The first field whose value the server cannot honour, and why (None: every field is honoured)."""
    for name, accepts, why in REFUSED:
        value = getattr(body, name)
        if not accepts(value):
            return name, f"{name}={value!r} is not supported: {why}."
    return None


__all__ = [
    "ENGINE_OPTIONS",
    "REFUSED",
    "ChatCompletionRequest",
    "Message",
    "TokenizeRequest",
    "Tool",
    "refused_field",
]
