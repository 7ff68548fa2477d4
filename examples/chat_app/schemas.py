"""The bodies the chat app's endpoints accept (pydantic models: FastAPI answers 422 for anything else), and what
the app makes of them: the caller (:class:`User`) and how a message is decoded (:class:`Plan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator

from .settings import NAME_CHARS, PREFERENCE_CHARS, SEED_LIMIT

PersonaName = Annotated[str, StringConstraints(max_length=NAME_CHARS)]
Preference = Annotated[str, StringConstraints(max_length=PREFERENCE_CHARS)]


class MessageIn(BaseModel):
    content: str = Field(min_length=1)
    """The message; at most CHAT_MAX_MESSAGE_CHARS characters (checked by the endpoint: a setting)."""
    personas: list[PersonaName] = Field(default_factory=list, max_length=8)
    """Names from the persona registry (GET /api/personas)."""
    preferences: list[Preference] = Field(default_factory=list, max_length=8)
    """Free-text preferences, each one more persona; a one-word one must be a persona's name."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    guidance: float | None = Field(default=None, ge=-3.0, le=5.0, allow_inf_nan=False)
    """Preference strength γ (the page's slider): 1 is the personas themselves, above 1 stronger."""
    combine: Literal["judge", "product"] | None = None
    """Persona-judge (default) or the weighted product of the personas."""
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT, strict=True)
    """A JSON integer in torch's seed range [0, 2**63): not a boolean, a string or a float."""
    max_tokens: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("content", "personas", "preferences")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No NUL character anywhere (PostgreSQL's text cannot store one; no message needs one)."""
        for text in [value] if isinstance(value, str) else value:
            if "\x00" in text:
                raise ValueError("must not contain a NUL character")
        return value


class ComparisonIn(BaseModel):
    prompt: str | None = Field(default=None, max_length=1000)
    """The question to answer twice; none or blank: one from the built-in pool."""

    @field_validator("prompt")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class ChoiceIn(BaseModel):
    choice: Literal["a", "b", "none"]
    """The first answer, the second, or no preference."""


@dataclass(frozen=True)
class Plan:
    """What a validated message is decoded with: the preference texts, in persona order, and their labels; or,
    when it picks none, the caller's learned profile (``profile``: its poles and description as weighted personas,
    ``labels`` theirs)."""

    preferences: list[str]
    labels: list[str]
    profile: Any = None
    profile_texts: tuple[str, ...] = ()
    profile_note: str | None = None
    """Why the caller's profile was not used (learned with another model), when it was not."""


@dataclass(frozen=True)
class User:
    id: str
