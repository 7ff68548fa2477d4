"""Helpers of the chat app's test modules (tests/integration_tests/test_chat_app*.py): the app's module, the
in-process test host, server-sent events, accounts and bad tokens, and a real server in a subprocess."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = "examples.chat_app.server"
PERSONAS = ["concise", "friendly"]
TEST_HOST = "chat.test"  # the in-process client's host name: allowed by the test app's settings (allowed_hosts)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def server_module() -> Any:
    """The chat app's module, ``examples.chat_app.server`` (the repository root is on sys.path under pytest)."""
    for needed in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(needed) is None:
            pytest.fail(f"the chat app needs {needed}, from the project's `app` extra: "
                        f".venv/bin/pip install -e '.[dev,app]' (make chat does it)")
    return importlib.import_module(SERVER)


def reset_admission_queue() -> None:
    """Leave the shared embedded model's admission queue unlimited, as the other test modules expect: the app's
    ChatPersonaJudge configured it (one queue per model, shared by every instance)."""
    from langchain_persona_judge import shared_model
    from langchain_persona_judge.runtime import admission_queue

    admission_queue(shared_model()).configure(None, None)


BAD_TOKENS: dict[str, dict[str, str] | None] = {
    "missing": {},
    "empty": {"Authorization": ""},
    "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer, nothing after": {"Authorization": "Bearer "},
    "unknown token": {"Authorization": "Bearer " + "A" * 43},
    "malformed token": {"Authorization": "Bearer not a token!"},
    "the hash, not the token": None,  # the stored SHA-256 of the account's token, presented as a token
}
"""Authorization headers that must get a 401, by case (the account-specific one: :func:`bad_token_headers`)."""


def bad_token_headers(case: str, token: str) -> dict[str, str]:
    """The headers of a BAD_TOKENS case, for the account whose token is ``token``."""
    headers = BAD_TOKENS[case]
    if headers is None:
        return {"Authorization": "Bearer " + hashlib.sha256(token.encode()).hexdigest()}
    return headers


async def sign_up_two(c: Any) -> tuple[str, dict[str, str], dict[str, str]]:
    """Two new accounts: (A's token, A's auth headers, B's auth headers)."""
    a = (await c.post("/api/users")).json()
    b = (await c.post("/api/users")).json()
    return a["token"], {"Authorization": f"Bearer {a['token']}"}, {"Authorization": f"Bearer {b['token']}"}


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Server-sent events (``event:`` + one ``data:`` JSON line), comments skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``python -m examples.chat_app.server`` in a subprocess, as `make chat` runs it; restartable on the same
    database."""

    def __init__(self, db: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One torch thread per decode (the default is cores // MAX_CONCURRENT), as every test uses: `make test` runs
        # two test processes on two cores, and a second thread there spin-waits. CHAT_TORCH_THREADS overrides it.
        self.env = {"CHAT_TORCH_THREADS": "1", **os.environ, "PORT": str(self.port), "CHAT_DB": str(db),
                    "LOG_LEVEL": "warning", **env}
        self.log = db.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the child before the server (e.g. setrlimit)

    def start(self, timeout: float = 240.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", SERVER], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the chat server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the chat server did not start within {timeout:.0f} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_user(self) -> dict[str, str]:
        """A new account's Authorization header."""
        response = httpx.post(f"{self.url}/api/users", timeout=30)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        """A client signed in as a new user (or with these headers)."""
        return httpx.Client(base_url=self.url, timeout=120, headers=headers or self.new_user())


def chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None
