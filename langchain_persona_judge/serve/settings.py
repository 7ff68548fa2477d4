"""What one server is started with: the model, admission limits, API keys, the body cap."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError


@dataclass(frozen=True)
class ServeSettings:
    """How :func:`~langchain_persona_judge.serve.create_app` serves.

    ``hf_model`` and ``tokenizer`` serve an already loaded model (tests, embedding the app); otherwise ``model``
    (a Hugging Face id, folder or ``.gguf`` file; None: the embedded SmolLM2) is loaded in the background when
    the app starts, and requests get 503 until it is ready.
    """

    model: str | None = None
    backend: str = "auto"
    device: str | None = None
    dtype: str | None = None
    served_name: str | None = None
    """The id clients pass as ``model`` (default: the model's display name)."""
    api_keys: frozenset[str] = frozenset()
    """Bearer keys; empty: no authentication."""
    max_concurrency: int | None = 2
    """Decodes at once on the model; the rest wait in FIFO order."""
    max_queue: int | None = 64
    """Requests allowed to wait; one more is answered 429 with ``Retry-After``."""
    max_body_bytes: int = 4 * 1024 * 1024
    """A larger request body is answered 413."""
    timeout: float | None = None
    """Seconds a request may take, waiting included (504 past it); None: no limit."""
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """Which replica answers, reported in each response's ``persona_judge.replica``."""
    hf_model: Any = None
    tokenizer: Any = None


def read_api_keys(path: str | Path) -> frozenset[str]:
    """The keys in a file, one a line (blank lines and ``#`` comments skipped); never echoes a key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidOptionError(
            f"Cannot read the API key file {str(path)!r} ({exc.strerror}); check the path."
        ) from exc
    keys = frozenset(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not keys:
        raise InvalidOptionError(f"The API key file {str(path)!r} holds no key; write one key a line.")
    return keys


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only reaches this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["ServeSettings", "is_loopback", "read_api_keys"]
