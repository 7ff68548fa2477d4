"""The storage interface the chat app uses (:class:`Store`), and the one error it raises (:class:`ConversationGone`).

Its implementations: :class:`~.sql_store.SQLStore` (the SQL they share) and, in :mod:`.storage`, SQLite and
PostgreSQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class ConversationGone(Exception):
    """A message was written to a conversation that no longer exists (deleted meanwhile)."""



class Store(ABC):
    """The storage interface the app uses. Methods that read or change a conversation take the user's id and
    only ever see that user's conversations: another user's conversation id behaves as an unknown one."""

    @abstractmethod
    async def create_user(self, token_hash: str, max_users: int) -> dict[str, Any] | None:
        """A new user ``{"id", "created_at"}``; None when ``max_users`` exist already."""

    @abstractmethod
    async def user_by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        """``{"id", "token_hash", "created_at", "last_seen"}`` of the user whose token hashes to ``token_hash``,
        else None."""

    @abstractmethod
    async def touch_user(self, user_id: str, now: float) -> None:
        """Record that the user used their account at ``now`` (seconds since the epoch)."""

    @abstractmethod
    async def expire_idle_users(self, idle_before: float) -> int:
        """Delete every account last used before ``idle_before`` that has no conversation and no profile (its
        comparisons go with it); how many."""

    @abstractmethod
    async def create_session(self, user_id: str, max_sessions: int) -> dict[str, Any] | None:
        """A new conversation ``{"id", "created_at"}``; None when the user has ``max_sessions`` already."""

    @abstractmethod
    async def session_owned(self, user_id: str, session_id: str) -> bool:
        """Whether ``session_id`` exists and belongs to ``user_id``."""

    @abstractmethod
    async def list_sessions(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's conversations, most recently active first."""

    @abstractmethod
    async def count_sessions(self, user_id: str) -> int:
        """How many conversations the user has."""

    @abstractmethod
    async def messages(self, user_id: str, session_id: str, *, limit: int | None = None,
                       before: int | None = None) -> list[dict[str, Any]]:
        """The conversation's messages in order (none when it is not the user's): the last ``limit`` of them
        (None: all) with ids below ``before`` (None: from the newest), for paging back through a long one."""

    @abstractmethod
    async def count_messages(self, user_id: str, session_id: str) -> int:
        """How many messages the user's conversation holds (0 when it is not the user's)."""

    @abstractmethod
    async def context(self, user_id: str, session_id: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` messages a model reads (the users' and complete answers: role, content), oldest
        first; only those rows are read, however long the conversation."""

    @abstractmethod
    async def add_message(self, session_id: str, role: str, content: str, *, status: str = "complete",
                          personas: list[str] | None = None, preferences: list[str] | None = None,
                          meta: dict[str, Any] | None = None) -> int:
        """Append a message (the caller checked the conversation's owner); its id. ConversationGone when the
        conversation was deleted meanwhile."""

    @abstractmethod
    async def delete_message(self, message_id: int) -> None:
        """Forget one message (a request refused after its message was stored)."""

    @abstractmethod
    async def delete_session(self, user_id: str, session_id: str) -> bool:
        """Forget the user's conversation and its messages; False when there was none."""

    # -- preference profiles (one per user) and the comparisons shown to learn them

    @abstractmethod
    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """``{"profile", "choices", "revision", "updated_at"}`` of the user's profile (``profile``: the profile
        file's JSON text), or None when the user has none."""

    @abstractmethod
    async def save_profile(self, user_id: str, profile: str, *, choices: int, expected_revision: str | None,
                           replace: bool = False, comparison_id: str | None = None,
                           choice: str | None = None) -> dict[str, Any] | None:
        """Write the user's profile in one transaction that holds the user's row: only if its revision is still
        ``expected_revision`` (None: the user has no profile yet), unless ``replace``; and, with ``comparison_id``,
        mark that comparison (the user's, not yet answered) as answered with ``choice``. The new record, or None
        when the revision changed meanwhile or the comparison is not the user's or already answered (nothing is
        written then)."""

    @abstractmethod
    async def delete_profile(self, user_id: str) -> bool:
        """Forget the user's profile and comparisons; whether there was a profile."""

    @abstractmethod
    async def add_comparison(self, user_id: str, prompt: str, answer_a: str, answer_b: str, data: dict[str, Any],
                             *, keep: int) -> dict[str, Any]:
        """Store a comparison shown to the user ``{"id", "created_at"}``; keep only the user's ``keep`` newest."""

    @abstractmethod
    async def comparison(self, user_id: str, comparison_id: str) -> dict[str, Any] | None:
        """``{"id", "prompt", "answer_a", "answer_b", "data", "choice", "created_at", "chosen_at"}`` of the
        user's comparison, or None (unknown, or another user's)."""

    @abstractmethod
    async def recent_prompts(self, user_id: str, limit: int) -> list[str]:
        """The prompts of the user's ``limit`` newest comparisons, newest first."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise unless the database answers a trivial query now (``/healthz``)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the data lives, for people (no password)."""


__all__ = ["ConversationGone", "Store"]
