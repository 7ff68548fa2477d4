"""``persona-judge serve --replicas 2`` on a local Ray Serve, with the embedded GGUF on llama.cpp, one thread per
replica: both replicas answer; a replica killed under load fails only its own in-flight requests, cleanly, and
Ray replaces it; stopping the server leaves no process behind.

One server (one Ray cluster) for the module: starting Ray costs ~25 s on a quiet 2-core machine. The tests run in
file order and the last one stops it. Select them with ``-m ray``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import llama_cpp_or_skip
from tests.serve_helpers import free_port

if importlib.util.find_spec("ray") is None:  # not imported here: the server process runs Ray, not the tests
    pytest.skip("--replicas needs the serve extra (ray[serve])", allow_module_level=True)
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.ray, pytest.mark.embedded]

HEADER = "x-persona-judge-replica"
RECOVERY_LIMIT_S = 90
"""A new replica must answer within this of the kill (the issue's 60 s is for a quiet machine, measured by
benchmarks/serve.py --kill-replica; `make test` runs beside other tests)."""
LONG = [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Any
    seen: set[str] = field(default_factory=set)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-6000:]


def pid_of(replica: str) -> int:
    """``<id>@<host>:<pid>`` → the pid."""
    return int(replica.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    llama_cpp_or_skip()
    port = free_port()
    command = [sys.executable, "-m", "langchain_persona_judge.cli", "serve", "--port", str(port), "--replicas", "2",
               "--threads-per-replica", "1", "--backend", "llamacpp", "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    srv = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 150
        while True:
            assert process.poll() is None, srv.output()
            try:
                if httpx.get(f"{srv.base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up:\n" + srv.output()
            time.sleep(0.3)
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def ask(base: str, max_tokens: int = 6, stream: bool = False, timeout: float = 120) -> dict[str, Any]:
    """One request; what came back: status, the replica header, and the JSON body or the stream's events."""
    body = {"messages": LONG, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "preferences": ["concise"]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=timeout) as response:
        out: dict[str, Any] = {"status": response.status_code, "replica": response.headers.get(HEADER)}
        if not stream or response.status_code != 200:
            response.read()
            out["body"] = response.json()
            return out
        out["events"] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out["events"].append(data if data == "[DONE]" else json.loads(data))
    return out


def test_two_replicas_both_answer(server: Server) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(server.base), range(8)))
    assert all(a["status"] == 200 for a in answers), answers
    named = {a["body"]["persona_judge"]["replica"] for a in answers}
    assert {a["replica"] for a in answers} == named  # the header names the replica the body does
    assert len(named) == 2, named
    pids = {pid_of(n) for n in named}
    assert len(pids) == 2 and server.process.pid not in pids  # two processes, neither the web tier
    server.seen |= named


def _first_content(events: list[Any]) -> bool:
    return any(isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content") for e in events)


def test_a_killed_replica_fails_only_its_own_requests_and_is_replaced(server: Server) -> None:
    import threading

    started: dict[int, str] = {}  # stream index → replica, once its first content arrived
    lock = threading.Condition()

    def stream_until_done(i: int) -> dict[str, Any]:
        body = {"messages": LONG, "max_tokens": 120, "temperature": 0.8, "seed": i, "stream": True}
        out: dict[str, Any] = {"events": []}
        with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=120) as response:
            out["status"], out["replica"] = response.status_code, response.headers.get(HEADER)
            if response.status_code != 200:  # failed before its first event: a JSON error
                response.read()
                out["body"] = response.json()
                return out
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                out["events"].append(data if data == "[DONE]" else json.loads(data))
                if _first_content(out["events"]) and i not in started:
                    with lock:
                        started[i] = out["replica"]
                        lock.notify_all()
        return out

    def until_replaced(killed_at: float) -> tuple[float | None, list[dict[str, Any]]]:
        """Short requests, one after another, until a replica that was not serving before answers."""
        polls = []
        while time.monotonic() - killed_at < RECOVERY_LIMIT_S:
            polls.append(ask(server.base, max_tokens=2))
            if polls[-1]["status"] == 200 and polls[-1]["replica"] not in server.seen:
                server.seen.add(polls[-1]["replica"])
                return time.monotonic() - killed_at, polls
        return None, polls

    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(stream_until_done, i) for i in range(4)]
        whole = [pool.submit(ask, server.base, 120) for _ in range(2)]
        with lock:
            assert lock.wait_for(lambda: started, timeout=60), "no stream started"
            victim = next(iter(started.values()))
        os.kill(pid_of(victim), signal.SIGKILL)
        recovery = pool.submit(until_replaced, time.monotonic())
        results = [f.result() for f in streams] + [f.result() for f in whole]
        recovered_after, polls = recovery.result()

    for r in results:
        if "events" in r and r["status"] == 200:  # a stream always ends with [DONE], after an answer or an error
            assert r["events"][-1] == "[DONE]", r
    errors = [r for r in results if r["status"] != 200 or "error" in r.get("events", [{}, {}])[-2]]
    print(f"{len(errors)} of {len(results)} requests were on the killed replica {victim}; a new replica answered "
          f"{recovered_after} s after the kill")
    assert errors, "the killed replica had requests in flight, which must fail"
    for r in errors:  # only the victim's requests fail, with a clean OpenAI-shaped error naming it
        error = r["body"]["error"] if r["status"] != 200 else r["events"][-2]["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "replica_unavailable", r
        assert r["replica"] in (victim, None) and victim in error["message"], r
    answered = [r for r in results if r not in errors]
    assert answered and all(r["replica"] != victim for r in answered)
    # The victim's streams that had begun end with an error event, then [DONE].
    assert any(r.get("events") and r["replica"] == victim and "error" in r["events"][-2] for r in errors)
    # Requests sent after the kill are all answered, and Ray brought up a new replica in time.
    assert all(p["status"] == 200 for p in polls), [p for p in polls if p["status"] != 200]
    assert recovered_after is not None, f"no new replica answered within {RECOVERY_LIMIT_S} s of the kill"


def test_stopping_the_server_frees_every_process(server: Server) -> None:
    tree = psutil.Process(server.process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in tree if p.is_running()), "Ray runs under the server"
    replicas = [pid_of(r) for r in server.seen]
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.output()
    deadline = time.monotonic() + 20
    left = tree
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.cmdline()[:3]) for p in left]
    assert not [pid for pid in replicas if psutil.pid_exists(pid)]
