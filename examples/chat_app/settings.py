"""The chat app's settings: its limits, and :class:`Settings`, read from the environment by
``Settings.from_env()``. Configuration (environment variables):

    PORT                 port to listen on (default 8000)
    HOST                 interface to bind (default 127.0.0.1)
    CHAT_DB              SQLite file (default $XDG_DATA_HOME/langchain-persona-judge/chat.db, i.e.
                         ~/.local/share/...; created owner-only: folder 0700, files 0600)
    CHAT_DATABASE_URL    postgresql://... : PostgreSQL instead of SQLite, which several app processes can share
    CHAT_ALLOWED_HOSTS   host names the app answers to besides localhost, 127.0.0.1 and [::1] (comma-separated);
                         any other Host header gets 400 (DNS rebinding)
    CHAT_MAX_BODY_BYTES  the largest request body (default 262144; larger: 413)
    CHAT_MAX_MESSAGE_CHARS  the longest message (default 8000 characters; longer: 422)
    CHAT_MAX_MESSAGE_TOKENS  the longest message in the model's tokens, counted before anything is stored
                         (default 1024; longer: 422): what one request may cost the model to read
    CHAT_MAX_CONVERSATIONS  conversations per user (default 200; one more: 409)
    CHAT_MAX_MESSAGES    messages one conversation may hold, answers included (default 2000; one more: 409)
    CHAT_MAX_IN_FLIGHT   answers one user may have queued or decoding at once (default 2; one more: 429)
    CHAT_MAX_USERS       accounts this server creates (default 10000; then POST /api/users: 403)
    CHAT_SIGNUPS_PER_MINUTE  accounts one client address may create a minute, after a burst of 20 (default 30;
                         0: no limit; more: 429). Behind a proxy every client shares its address: limit there
    CHAT_ACCOUNT_IDLE_DAYS  an account with no conversation and no profile that has not been used for this many
                         days is deleted (default 30; swept at sign-up, at most hourly, and whenever the account
                         cap is reached; 0: never)
    CHAT_DOCS            1: serve /docs and /openapi.json (default off)
    CHAT_HEADER_TIMEOUT  seconds a connection may take to send a request's headers (default 10; then closed);
                         idle keep-alive connections are closed after 5 s
    CHAT_MAX_CONNECTIONS open client connections the server keeps (default 1000, and at most the open-files limit
                         less 128); one more closes the connection that has waited longest for request headers
    CHAT_MAX_TOKENS      answer length when a request does not ask for one (default 160)
    CHAT_MAX_TOKENS_CAP  the most tokens a request may ask for (default 1024)
    CHAT_TEMPERATURE     temperature when a request does not set one (default 0.7; 0 = greedy)
    CHAT_REPETITION_PENALTY  repetition penalty of every answer (default 1.2; 1 = off)
    CHAT_HISTORY         how many earlier messages of the conversation the model sees (default 16; only those
                         are read from the store; older turns are dropped first if they overflow the context)
    CHAT_REQUEST_TIMEOUT seconds one answer may take, waiting for a slot included (default 600)
    MAX_CONCURRENT       generations decoded at once; the others wait in the model's admission queue, served
                         round-robin by user, one user decoding at most MAX_CONCURRENT - 1 at once (default 2: one
                         model, a few CPU cores)
    MAX_QUEUE            generations that may wait in that queue; one more is refused with HTTP 429 (default 16)
    CHAT_MODEL           model to serve (default: $PERSONA_JUDGE_MODEL, else the embedded SmolLM2-135M-Instruct)
    CHAT_MODEL_URL       http(s)://... of a Persona-judge server (persona-judge serve): answers are decoded there
                         instead of in this process (the remote model tier; see README.md); unset: in process
    CHAT_MODEL_API_KEY   the key sent to that server (Authorization: Bearer), when it was started with --api-keys
    CHAT_TORCH_THREADS   torch intra-op threads per generation (default: CPU cores // MAX_CONCURRENT, at least 1:
                         on a few cores, concurrent generations with many threads each mostly wait for each other)
    CHAT_PRELOAD         load the model at start-up (default 1) so the first answer does not wait for it
    CHAT_PROFILE_MAX_TOKENS  length of each of the two answers a comparison shows (default 48)
    CHAT_PROFILE_EVERY   the page offers a comparison after every Nth answer (default 5; 0: only on demand)
    LOG_LEVEL            log level (default warning); errors are logged with their details, clients get none
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .storage import default_db_path

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_LOG_LEVEL = "warning"
KEEP_ALIVE_S = 5  # uvicorn's timeout_keep_alive: an idle keep-alive connection is closed after this
TOUCH_EVERY_S = 3600.0  # an account's last use is written at most this often (not on every request)
SWEEP_EVERY_S = 3600.0  # idle empty accounts are looked for at sign-up at most this often
HEARTBEAT_S = 2.0  # an SSE comment this often while nothing else is sent: keeps proxies open, notices dead peers
SHUTDOWN_GRACE_S = 60.0  # how long shutdown waits for the generations' tasks to end
RETRY_AFTER_S = 5  # what a refused request (HTTP 429) is told to wait
SIGNUP_BURST = 20  # sign-ups one client address may make at once before CHAT_SIGNUPS_PER_MINUTE applies
HEALTH_TIMEOUT_S = 2.0  # /healthz: how long the store may take to answer before the probe says 503
ID = re.compile(r"[0-9a-f]{32}")  # conversation and generation ids; fullmatch: "$" would let a trailing newline in
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes [0, 2**63) here (and wraps negatives): strict ints in range
NAME_CHARS = 64  # a persona name
PREFERENCE_CHARS = 500  # a free-text preference


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be at least {minimum}")
    return value



def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SystemExit(f"{name}={raw!r} is not a finite number")
    return value



def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def model_url_from_env() -> str | None:
    """CHAT_MODEL_URL, checked: an http:// or https:// URL with a host (None when unset)."""
    raw = (os.environ.get("CHAT_MODEL_URL") or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"CHAT_MODEL_URL={raw!r} is not an http:// or https:// URL of a Persona-judge server "
                         "(e.g. http://127.0.0.1:8000)")
    return raw


@dataclass
class Settings:
    """Server settings; ``Settings.from_env()`` reads the variables listed in the module docstring."""

    db_path: Path = field(default_factory=default_db_path)
    database_url: str | None = None
    """A postgresql:// URL: PostgreSQL instead of the SQLite file at ``db_path``."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names accepted besides localhost, 127.0.0.1 and [::1]."""
    max_body_bytes: int = 256 * 1024
    max_message_chars: int = 8000
    max_message_tokens: int = 1024
    max_conversations: int = 200
    max_messages: int = 2000
    """Messages one conversation may hold (a message and its answer are two); one more: 409."""
    max_in_flight: int = 2
    max_users: int = 10_000
    signups_per_minute: int = 0
    """Sign-ups per client address a minute, after a burst of SIGNUP_BURST (0: no limit; the server's environment
    default, CHAT_SIGNUPS_PER_MINUTE, is 30)."""
    account_idle_days: int = 30
    """An account with no conversation and no profile, unused for this many days, is deleted (0: never)."""
    docs: bool = False
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers (the server's entry point; then closed)."""
    max_connections: int = 1000
    """Open client connections the server keeps (the entry point; bounded by the open-files limit too)."""
    max_tokens: int = 160
    max_tokens_cap: int = 1024
    temperature: float = 0.7
    repetition_penalty: float | None = 1.2
    """Applied to every persona alike (answers stay exact); a 135M model loops without one. None or 1: off."""
    history: int = 16
    request_timeout: float | None = 600.0
    """Seconds one answer may take, waiting for a slot included (past it: stopped, the text so far kept)."""
    max_concurrent: int = 2
    max_queue: int = 16
    model: str | None = None
    model_url: str | None = None
    """A Persona-judge server's URL: decode there (the remote model tier) instead of in this process."""
    model_api_key: str | None = None
    """The bearer key for that server (never logged)."""
    torch_threads: int | None = None  # None: leave torch's setting alone
    preload: bool = True
    profile_max_tokens: int = 48
    """Length of each of the two answers a comparison shows (short: generating and scoring them takes seconds)."""
    profile_every: int = 5
    """The page offers a comparison after every this many answers (0: only when asked)."""

    @classmethod
    def from_env(cls) -> Settings:
        max_concurrent = env_int("MAX_CONCURRENT", 2, 1)
        threads = env_int("CHAT_TORCH_THREADS", 0) or max(1, (os.cpu_count() or 1) // max_concurrent)
        hosts = tuple(h.strip() for h in os.environ.get("CHAT_ALLOWED_HOSTS", "").split(",") if h.strip())
        settings = cls(
            db_path=Path(os.environ["CHAT_DB"]) if os.environ.get("CHAT_DB") else default_db_path(),
            database_url=os.environ.get("CHAT_DATABASE_URL") or None,
            allowed_hosts=hosts,
            max_body_bytes=env_int("CHAT_MAX_BODY_BYTES", 256 * 1024, 1024),
            max_message_chars=env_int("CHAT_MAX_MESSAGE_CHARS", 8000, 1),
            max_message_tokens=env_int("CHAT_MAX_MESSAGE_TOKENS", 1024, 1),
            max_conversations=env_int("CHAT_MAX_CONVERSATIONS", 200, 1),
            max_messages=env_int("CHAT_MAX_MESSAGES", 2000, 2),
            max_in_flight=env_int("CHAT_MAX_IN_FLIGHT", 2, 1),
            max_users=env_int("CHAT_MAX_USERS", 10_000, 1),
            signups_per_minute=env_int("CHAT_SIGNUPS_PER_MINUTE", 30, 0),
            account_idle_days=env_int("CHAT_ACCOUNT_IDLE_DAYS", 30, 0),
            docs=env_flag("CHAT_DOCS", False),
            header_timeout=env_float("CHAT_HEADER_TIMEOUT", 10.0),
            max_connections=env_int("CHAT_MAX_CONNECTIONS", 1000, 1),
            max_tokens=env_int("CHAT_MAX_TOKENS", 160, 1),
            max_tokens_cap=env_int("CHAT_MAX_TOKENS_CAP", 1024, 1),
            temperature=env_float("CHAT_TEMPERATURE", 0.7),
            repetition_penalty=env_float("CHAT_REPETITION_PENALTY", 1.2),
            history=env_int("CHAT_HISTORY", 16, 0),
            request_timeout=float(env_int("CHAT_REQUEST_TIMEOUT", 600, 1)),
            max_concurrent=max_concurrent,
            max_queue=env_int("MAX_QUEUE", 16, 0),
            model=os.environ.get("CHAT_MODEL") or None,
            model_url=model_url_from_env(),
            model_api_key=os.environ.get("CHAT_MODEL_API_KEY") or None,
            torch_threads=threads,
            preload=env_flag("CHAT_PRELOAD", True),
            profile_max_tokens=env_int("CHAT_PROFILE_MAX_TOKENS", 48, 1),
            profile_every=env_int("CHAT_PROFILE_EVERY", 5, 0),
        )
        settings.max_tokens_cap = max(settings.max_tokens_cap, settings.max_tokens)
        if settings.header_timeout <= 0:
            raise SystemExit(f"CHAT_HEADER_TIMEOUT={settings.header_timeout:g} must be more than 0 seconds")
        return settings

    @property
    def default_db(self) -> bool:
        return self.database_url is None and self.db_path == default_db_path()
