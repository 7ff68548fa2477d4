"""The connection guard both servers share (langchain_persona_judge.serve.connections): request headers due within
a deadline, open connections capped below the open-files limit; ``persona-judge serve`` passes it to uvicorn.

The chat app's abuse test replays 1,100 half-open sockets against the chat app; here a real uvicorn on loopback
serving a trivial ASGI app shows the deadline and the cap on their own, and the CLI test shows the server gets them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the servers need the serve extra")
import uvicorn  # noqa: E402

from langchain_persona_judge.cli import serve as serve_cli  # noqa: E402
from langchain_persona_judge.cli.ask import UsageError  # noqa: E402
from langchain_persona_judge.serve import connections  # noqa: E402


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def guarded() -> Iterator[int]:
    """uvicorn on loopback with a 0.5 s header deadline and at most 3 open connections; its port."""
    options = connections.uvicorn_options(header_timeout=0.5, max_connections=3)
    options.pop("cap")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hello, host="127.0.0.1", port=port, log_level="error", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def answered(data: bytes) -> bool:
    return data.startswith(b"HTTP/1.1 200") and b"\r\n\r\n2\r\nok\r\n" in data


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (None: still open after ``seconds``)."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        return time.monotonic() - start if sock.recv(1) == b"" else None
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


def test_half_sent_headers_are_closed_after_the_deadline(guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded), timeout=5) as stalled:
        stalled.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        took = closed_within(stalled, 5.0)
    assert took is not None and took < 2.0, f"a stalled request's socket stayed open ({took})"
    assert answered(get(guarded))


def test_stalled_sockets_over_the_cap_make_room_for_a_real_client(guarded: int) -> None:
    stalled = [socket.create_connection(("127.0.0.1", guarded), timeout=5) for _ in range(6)]
    try:
        for s in stalled:
            s.sendall(b"GET / HTT")
        time.sleep(0.1)
        assert answered(get(guarded))  # over the cap of 3: the oldest stalled ones were closed for it
        still_open = [s for s in stalled if closed_within(s, 0.05) is None]
        assert len(still_open) <= 3, f"{len(still_open)} stalled sockets kept open over a cap of 3"
    finally:
        for s in stalled:
            s.close()


def test_the_cap_stays_below_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "raise_open_files_limit", lambda: 300)
    options = connections.uvicorn_options(header_timeout=3.0, max_connections=1000)
    assert options["cap"] == 300 - connections.FD_RESERVE
    assert options["limit_concurrency"] == options["cap"] + connections.TASK_SLACK
    assert options["http"].header_timeout == 3.0 and options["http"].max_connections == options["cap"]


def test_persona_judge_serve_runs_uvicorn_with_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(kwargs))
    import langchain_persona_judge.serve as serve_package
    monkeypatch.setattr(serve_package, "create_app", lambda settings: object())
    args = serve_cli.build_parser().parse_args(["--header-timeout", "4", "--max-connections", "50"])
    assert serve_cli.run_args(args) == 0
    assert ran["http"].header_timeout == 4.0 and ran["http"].max_connections == 50
    assert ran["limit_concurrency"] == 50 + connections.TASK_SLACK and ran["timeout_keep_alive"] > 0
    for bad in (["--header-timeout", "0"], ["--max-connections", "0"]):
        with pytest.raises(UsageError, match="--header-timeout|--max-connections"):
            serve_cli.run_args(serve_cli.build_parser().parse_args(bad))
