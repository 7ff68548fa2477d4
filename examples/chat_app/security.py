"""The chat app's guards: account tokens, allowed hosts, a request-body cap, security headers.

- Tokens: 32 random bytes (URL-safe base64), given to the user once; the database keeps only their SHA-256, and
  a presented token is compared with ``hmac.compare_digest``.
- :class:`Guard`, a plain ASGI middleware (it never buffers a response, so answers still stream):
  a ``Host`` header outside the allowed hosts gets 400 (a DNS-rebinding page cannot reach the app through its
  own name); a body over the cap gets 413, from its ``Content-Length`` before anything is read, else as soon
  as the bytes read pass it; every response gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options:
  DENY``, ``Referrer-Policy: no-referrer`` and a Content-Security-Policy (``default-src 'none'`` unless the
  response set its own: the page does, see :func:`page_csp`), and ``/api/`` answers ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
TOKEN_BYTES = 32
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")  # fullmatch: what secrets.token_urlsafe makes
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when it is missing or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_PATTERN.fullmatch(token):
        return None
    return token


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port, lower case, without a trailing dot ("[::1]" keeps its
    brackets)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def allowed_hosts(extra: Iterable[str]) -> frozenset[str]:
    """The default loopback names plus ``extra`` (CHAT_ALLOWED_HOSTS), normalised like :func:`host_name`."""
    hosts = set(DEFAULT_HOSTS)
    for item in extra:
        item = item.strip()
        if item:
            hosts.add(host_name(item) if not item.startswith("[") else item.lower())
    return frozenset(hosts)


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page_csp(html: str) -> str:
    """The page's Content-Security-Policy: only its own inline script and style (by hash), requests to this
    origin, no framing, no plugins, no forms posting elsewhere."""
    scripts = [_sha256_source(s) for s in re.findall(r"<script>(.*?)</script>", html, flags=re.S)]
    styles = [_sha256_source(s) for s in re.findall(r"<style>(.*?)</style>", html, flags=re.S)]
    none = "'none'"
    return "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(scripts) or none}",
        f"style-src {' '.join(styles) or none}",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


class Guard:
    """ASGI middleware: allowed hosts, the body cap, security headers (see the module docstring)."""

    def __init__(self, app: Any, *, hosts: frozenset[str], max_body_bytes: int) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if host_name(headers.get("host", "")) not in self.hosts:
            await _plain_error(send, 400, "This host name is not allowed (CHAT_ALLOWED_HOSTS lists more).")
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _plain_error(send, 400, "Bad Content-Length.")
                return
            if int(length) > self.max_body_bytes:
                await _plain_error(send, 413, self._too_large())
                return
        api = scope.get("path", "").startswith("/api/")
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the endpoint's body read: FastAPI passes an HTTPException through as it is.
                    raise HTTPException(413, self._too_large())
            return message

        async def guarded_send(message: Any) -> None:
            if message.get("type") == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in raw}
                for name, value in (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"),
                                    ("referrer-policy", "no-referrer"), ("content-security-policy", API_CSP)):
                    if name not in present:
                        raw.append((name.encode("latin-1"), value.encode("latin-1")))
                if api and "cache-control" not in present:
                    raw.append((b"cache-control", b"no-store"))
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _too_large(self) -> str:
        return (f"The request body is over {self.max_body_bytes} bytes, the most this server takes "
                f"(CHAT_MAX_BODY_BYTES).")


async def _plain_error(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", API_CSP.encode("ascii")),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


__all__ = ["Guard", "allowed_hosts", "bearer_token", "hash_token", "host_name", "new_token", "page_csp",
           "token_matches"]
