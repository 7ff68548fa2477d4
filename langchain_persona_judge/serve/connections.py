"""Connections that never finish their request headers are closed, and open connections are capped below the
open-files limit: uvicorn's HTTP/1.1 protocol with a deadline and a cap.

uvicorn's ``timeout_keep_alive`` only runs between requests: a client that opens a connection and sends half a
request line, then nothing, holds its socket (and a file descriptor) for ever, and a thousand of them exhaust a
server at the usual limit of 1024 open files. :class:`HeaderTimeoutProtocol` gives every request ``header_timeout``
seconds from its first byte (or from the connection opening) to its complete headers; past it the connection is
closed. Bodies and answers are not limited here (answers stream for as long as they take).

The cap (``max_connections``, :func:`connection_cap`: the setting, and at most the open-files limit less
FD_RESERVE): a new connection over it closes the open connection that has waited longest for request headers
(one that has sent half a request and stalled, or an idle keep-alive one), so a flood of half-open sockets
cannot use up the file descriptors, and the newest visitor (a health probe, a real client) is served; when every
other connection is busy with a request, the new one is closed instead. uvicorn's own ``limit_concurrency``
answers 503 but still accepts (and holds) each socket, so it alone cannot keep the server under its open-files
limit; the server passes it ``cap + TASK_SLACK`` as a backstop on requests in progress (an answer's task may
outlive its connection by a heartbeat).

Both servers use it: ``persona-judge serve`` (``--header-timeout``, ``--max-connections``) and the chat app
(``CHAT_HEADER_TIMEOUT``, ``CHAT_MAX_CONNECTIONS``), through :func:`uvicorn_options`.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1000
KEEP_ALIVE_S = 5  # uvicorn's timeout_keep_alive: an idle keep-alive connection is closed after this
FD_RESERVE = 128  # file descriptors kept for everything but client connections: the database, the model, logs
TASK_SLACK = 16  # uvicorn's limit_concurrency = the connection cap + this


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``header_timeout``,
    and keeping at most ``max_connections`` open (None: no cap)."""

    header_timeout = HEADER_TIMEOUT_S
    max_connections: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None
        self._waiting_since = 0.0
        super().connection_made(transport)
        self._arm()
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._make_room()

    def _arm(self) -> None:
        """Start the clock for the next request's headers (the cycle now current is the one before it)."""
        if self._header_timer is None:
            self._waiting_after = self.cycle
            self._waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _between_requests(self) -> bool:
        """No request in progress: waiting for (the rest of) a request's headers, or idle between requests."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for request headers, else this new one."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.max_connections:  # type: ignore[operator]  # the rest are closing already
            return
        waiting = [c for c in others if isinstance(c, HeaderTimeoutProtocol) and c._between_requests()]
        victim = min(waiting, key=lambda c: c._waiting_since, default=self)
        victim._disarm()
        victim.transport.close()

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


def connection_cap(max_connections: int, open_files: int) -> int:
    """The open connections a server keeps: ``max_connections``, and at most ``open_files - FD_RESERVE`` (at
    least 1)."""
    return max(1, min(max_connections, open_files - FD_RESERVE))


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


def uvicorn_options(header_timeout: float = HEADER_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                    keep_alive: float = KEEP_ALIVE_S) -> dict[str, Any]:
    """``uvicorn.run``'s connection options: the open-files limit raised to its hard limit, open connections capped
    below it (:func:`connection_cap`), request headers due within ``header_timeout`` seconds, idle keep-alive
    connections closed after ``keep_alive``; ``cap`` (not a uvicorn option) says the cap chosen."""
    cap = connection_cap(max_connections, raise_open_files_limit())
    protocol = type("Protocol", (HeaderTimeoutProtocol,),
                    {"header_timeout": header_timeout, "max_connections": cap})
    return {"http": protocol, "timeout_keep_alive": keep_alive, "limit_concurrency": cap + TASK_SLACK, "cap": cap}


__all__ = ["FD_RESERVE", "HEADER_TIMEOUT_S", "KEEP_ALIVE_S", "MAX_CONNECTIONS", "TASK_SLACK", "HeaderTimeoutProtocol",
           "connection_cap", "raise_open_files_limit", "uvicorn_options"]
