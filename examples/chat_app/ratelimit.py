"""Rate limits per client: a token bucket per key (a client address), bounded in memory.

Used for sign-ups (``POST /api/users``): one client cannot make accounts faster than ``rate`` per minute after a
burst of ``burst``, so it cannot fill the server's account cap in seconds and lock every later visitor out.

The key is the client's address as the ASGI server reports it. Behind a reverse proxy every client has the
proxy's address: the proxy must then limit sign-ups itself (or pass the real address, with uvicorn's
``--proxy-headers`` and ``--forwarded-allow-ips``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """``burst`` events at once per key, refilled at ``per_minute`` a minute; at most ``max_keys`` keys kept
    (the least recently seen forgotten first: a forgotten key starts with a full bucket)."""

    def __init__(self, per_minute: float, burst: int, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)

    def take(self, key: str) -> float:
        """Take one event for ``key``: 0.0 when allowed, else the seconds until one would be."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            wait, tokens = 0.0, tokens - 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))


__all__ = ["RateLimiter"]
