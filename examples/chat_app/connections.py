"""Connections that never finish their request headers are closed: uvicorn's HTTP/1.1 protocol with a deadline.

uvicorn's ``timeout_keep_alive`` only runs between requests: a client that opens a connection and sends half a
request line, then nothing, holds its socket (and a file descriptor) for ever, and a thousand of them exhaust a
server at the usual limit of 1024 open files. :class:`HeaderTimeoutProtocol` gives every request ``header_timeout``
seconds from its first byte (or from the connection opening) to its complete headers; past it the connection is
closed. Bodies and answers are not limited here (answers stream for as long as they take).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``header_timeout``."""

    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        """Start the clock for the next request's headers (the cycle now current is the one before it)."""
        if self._header_timer is None:
            self._waiting_after = self.cycle
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # bytes of a new request: its headers are due
            self._arm()
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._waiting_after:  # its headers are in
            self._disarm()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


__all__ = ["HEADER_TIMEOUT_S", "HeaderTimeoutProtocol", "raise_open_files_limit"]
