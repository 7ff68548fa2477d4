"""Load test for the chat app (examples/chat_app): N concurrent streaming clients for a bounded time.

    .venv/bin/python -m benchmarks.load --clients 4 --duration 20          # starts the app on a free port
    .venv/bin/python -m benchmarks.load --clients 16 --duration 120 --json # one JSON object on stdout
    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8000 ...    # an app that is already running

Run it from the repository root, as a module.

What it does:

1. Starts the app (``python -m examples.chat_app.server``) on a free loopback port with a throw-away
   database, greedy decoding (CHAT_TEMPERATURE=0), ``--max-tokens`` per answer, ``--max-concurrent`` decoding
   slots and room for every client in the model's admission queue (MAX_QUEUE), or uses ``--url``; then every
   request still asks for temperature 0 and ``--max-tokens`` itself.
2. References: ``--scripts`` distinct two-turn conversations (a question, a follow-up, a pair of personas) are
   each run once, alone, through the same app. Greedy decoding is deterministic, so these are the answers.
3. Load: ``--clients`` clients, each in a loop until ``--duration`` has passed: open a new conversation, send
   its script's turns one after the other (streaming), then read the conversation back. Client ``i``'s
   ``j``-th conversation runs script ``(i + j) % scripts``, so concurrent clients mostly run different
   scripts. Every ``--disconnect-every``-th conversation instead disconnects on purpose, alternately while
   its request is still queued and right after its first token.
4. Drain: conversations started before the deadline finish; then the app must be idle.

Checks, per answer:

- mixed-up: the streamed text differs from its own script's reference answer for that turn, the events name
  another generation/conversation, or the stored conversation read back differs from what this client sent
  and received. (An answer is streamed from the model's tokens for *its* prompt, which holds its own
  conversation's history as stored by the app, so any crossing of streams, prompts or histories between
  clients changes the text.) A disconnected answer's partial text must be a prefix of its reference.
- disconnects_not_freed: after a client disconnects, ``GET /api/generations/{id}`` must show the generation
  cancelled (or already completed) with its decoding thread returned within ``--free-timeout`` seconds; and
  at the end ``GET /api/stats`` must show nothing running, queued or decoding.
- errors: HTTP errors, ``error`` events, streams that end without ``done``, timeouts.

Figures: time to first token (client side, from sending the message to its first token: includes the wait
in the app's queue, also reported separately as queue_wait), per-answer decode speed (tokens/s after the
first token), aggregate tokens/s (tokens of completed answers / load-phase wall time), and the server's
peak memory (peak RSS: sampled from the process tree when this script started the app, and the app's own
``ru_maxrss``). Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVER = "examples.chat_app.server"
"""The chat app's module, run with ``python -m`` from the repository root (as ``make chat`` does)."""

QUESTIONS: list[tuple[str, str]] = [
    ("Why is the sky blue?", "And why are sunsets red?"),
    ("What is photosynthesis?", "Why do leaves change colour in autumn?"),
    ("How do airplanes fly?", "What makes helicopters different?"),
    ("What is a black hole?", "Could the Sun become one?"),
    ("Why do we need sleep?", "How many hours should a teenager sleep?"),
    ("How does a rainbow form?", "Can you see a rainbow at night?"),
    ("What causes earthquakes?", "How are they measured?"),
    ("Why is the ocean salty?", "Are lakes salty too?"),
    ("How do vaccines work?", "Why do some need boosters?"),
    ("What is inflation?", "How do banks try to control it?"),
    ("How does a compass work?", "Does it work on Mars?"),
    ("Why do cats purr?", "Do big cats purr too?"),
    ("What is machine learning?", "Give one everyday example."),
    ("How are mountains formed?", "Which is the tallest and why?"),
    ("Why does ice float?", "Why does that matter for fish?"),
    ("What is DNA?", "How is it copied?"),
]
PERSONA_PAIRS: list[tuple[str, str]] = [
    ("elementary", "friendly"),
    ("concise", "informative"),
    ("expert", "sassy"),
    ("humor", "honest"),
]


@dataclass(frozen=True)
class Script:
    index: int
    personas: tuple[str, ...]
    turns: tuple[str, ...]


def scripts(count: int, turns: int) -> list[Script]:
    out = []
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)]
        pair = PERSONA_PAIRS[(i + i // len(QUESTIONS)) % len(PERSONA_PAIRS)]
        out.append(Script(i, pair, question[:turns]))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the app under test ---------------------------------------------------------------------------------------


class ManagedServer:
    """The chat app in a subprocess on a free loopback port, with its peak RSS sampled."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "CHAT_DB": str(workdir / "chat.db"),
            "CHAT_MAX_TOKENS": str(args.max_tokens),
            "CHAT_TEMPERATURE": "0",
            "MAX_CONCURRENT": str(args.max_concurrent),
            # Every client may wait at once (plus the disconnected ones that still hold a place): none is refused.
            "MAX_QUEUE": str(2 * args.clients),
            "LOG_LEVEL": "warning",
        }
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", SERVER], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        self.peak_rss = 0
        self._sampler: asyncio.Task[None] | None = None

    def rss(self) -> int:
        try:
            import psutil
        except ImportError:
            return 0
        try:
            proc = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            return 0

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the app exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        self._sampler = asyncio.create_task(self._sample())
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise SystemExit(f"the app did not answer /healthz within {timeout:.0f} s:\n{self.log_path.read_text()}")

    async def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.rss())
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- one streamed answer ----------------------------------------------------------------------------------------


@dataclass
class Answer:
    ok: bool = False
    text: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    generation_id: str | None = None
    sent: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    done: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def tokens(self) -> int:
        return int(((self.done or {}).get("usage") or {}).get("output_tokens", 0))

    @property
    def tokens_per_s(self) -> float | None:
        if self.first_token is None or self.finished is None or self.tokens < 2:
            return None
        span = self.finished - self.first_token
        return (self.tokens - 1) / span if span > 0 else None


async def stream_answer(client: httpx.AsyncClient, session: str, script: Script, turn: int, max_tokens: int,
                        disconnect: str | None = None) -> Answer:
    """POST one message and read its SSE stream. ``disconnect``: 'queued' or 'token' = leave at that event."""
    answer = Answer()
    payload = {"content": script.turns[turn], "personas": list(script.personas), "temperature": 0,
               "max_tokens": max_tokens}
    answer.sent = time.monotonic()
    try:
        async with client.stream("POST", f"/api/sessions/{session}/messages", json=payload) as response:
            if response.status_code != 200:
                await response.aread()
                answer.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return answer
            event, data_lines = "message", []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].lstrip())
                elif line == "" and data_lines:
                    data = json.loads("\n".join(data_lines))
                    answer.events.append((event, data))
                    if event == "queued":
                        answer.generation_id = data.get("generation_id")
                    elif event == "token":
                        if answer.first_token is None:
                            answer.first_token = time.monotonic()
                        answer.text += data["text"]
                    elif event == "done":
                        answer.finished = time.monotonic()
                        answer.done = data
                    elif event == "error":
                        answer.error = f"error event: {data.get('type')}: {data.get('message')}"
                    if disconnect and event == disconnect:
                        return answer  # leaving the block closes the connection mid-stream
                    event, data_lines = "message", []
                elif line == "":
                    event, data_lines = "message", []
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
        return answer
    if answer.done is None and answer.error is None and not disconnect:
        answer.error = "the stream ended without a done event"
    answer.ok = answer.done is not None and answer.error is None
    return answer


# -- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Results:
    completed: int = 0
    errors: int = 0
    mixed_up: int = 0
    disconnects: int = 0
    disconnects_not_freed: int = 0
    disconnects_completed_first: int = 0
    conversations: int = 0
    ttft: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    free_s: list[float] = field(default_factory=list)
    tokens: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{kind}: {text}")
        log(f"  ! {kind}: {text}")


def check_answer(answer: Answer, session: str, expected: str, results: Results, where: str) -> bool:
    """Count the answer: error, mixed-up, or completed (with its timings). True when it is right."""
    if not answer.ok:
        results.errors += 1
        results.problem("error", f"{where}: {answer.error}")
        return False
    gen_ids = {d.get("generation_id") for _, d in answer.events if "generation_id" in d}
    sessions = {d.get("session_id") for _, d in answer.events if "session_id" in d}
    if len(gen_ids) != 1 or sessions != {session}:
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: events name generations {gen_ids} / conversations {sessions}")
        return False
    if answer.text != expected:
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: got {answer.text!r}, its reference is {expected!r}")
        return False
    results.completed += 1
    results.tokens += answer.tokens
    if answer.ttft is not None:
        results.ttft.append(answer.ttft)
    if answer.tokens_per_s is not None:
        results.tokens_per_s.append(answer.tokens_per_s)
    if answer.done and answer.done.get("queue_wait_s") is not None:
        results.queue_wait.append(float(answer.done["queue_wait_s"]))
    return True


async def new_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/sessions")
    response.raise_for_status()
    return response.json()["id"]


async def references(client: httpx.AsyncClient, plan: list[Script], max_tokens: int) -> list[list[str]]:
    """Each script's answers, run alone (one request at a time)."""
    out = []
    for script in plan:
        started = time.monotonic()
        session = await new_session(client)
        texts = []
        for turn in range(len(script.turns)):
            answer = await stream_answer(client, session, script, turn, max_tokens)
            if not answer.ok:
                raise SystemExit(f"reference for script {script.index} turn {turn} failed: {answer.error}")
            texts.append(answer.text)
        out.append(texts)
        log(f"  reference {script.index} ({time.monotonic() - started:.1f} s): {script.personas} {texts[0][:50]!r}...")
    return out


async def wait_freed(client: httpx.AsyncClient, generation_id: str, timeout: float) -> tuple[str, float | None]:
    """Poll the generation until it ended and its decoding thread returned: (state, seconds) or (state, None)."""
    start = time.monotonic()
    state = "unknown"
    while time.monotonic() - start < timeout:
        try:
            info = (await client.get(f"/api/generations/{generation_id}")).json()
            state = info.get("state", "unknown")
            if state in ("cancelled", "completed", "error") and not info.get("worker_running"):
                return state, time.monotonic() - start
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(0.1)
    return state, None


async def disconnecting_conversation(client: httpx.AsyncClient, script: Script, refs: list[str], mode: str,
                                     args: argparse.Namespace, results: Results, where: str) -> None:
    session = await new_session(client)
    answer = await stream_answer(client, session, script, 0, args.max_tokens, disconnect=mode)
    results.disconnects += 1
    if answer.error or answer.generation_id is None:
        results.errors += 1
        results.problem("error", f"{where}: before disconnecting: {answer.error or 'no generation id'}")
        return
    if answer.done is not None:  # the whole answer arrived before the event we meant to leave at
        results.disconnects_completed_first += 1
    if not refs[0].startswith(answer.text):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: partial {answer.text!r} is not a prefix of {refs[0]!r}")
    state, took = await wait_freed(client, answer.generation_id, args.free_timeout)
    if took is None:
        results.disconnects_not_freed += 1
        results.problem("not_freed", f"{where}: generation {answer.generation_id} still {state!r} with its "
                                     f"decoding thread running {args.free_timeout:.0f} s after the disconnect")
        return
    results.free_s.append(took)
    history = (await client.get(f"/api/sessions/{session}")).json()["messages"]
    roles = [(m["role"], m["content"]) for m in history]
    if not roles or roles[0] != ("user", script.turns[0]) or len(roles) > 2 or (
        len(roles) == 2 and (roles[1][0] != "assistant" or not refs[0].startswith(roles[1][1]))
    ):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: stored conversation after a disconnect is {roles!r}")


async def conversation(client: httpx.AsyncClient, script: Script, refs: list[str], deadline: float,
                       args: argparse.Namespace, results: Results, where: str) -> None:
    session = await new_session(client)
    said: list[tuple[str, str]] = []
    for turn in range(len(script.turns)):
        if turn and time.monotonic() >= deadline:
            break
        answer = await stream_answer(client, session, script, turn, args.max_tokens)
        if not check_answer(answer, session, refs[turn], results, f"{where} turn {turn}"):
            return
        said += [("user", script.turns[turn]), ("assistant", answer.text)]
    history = (await client.get(f"/api/sessions/{session}")).json()["messages"]
    stored = [(m["role"], m["content"]) for m in history]
    if stored != said or any(m["status"] != "complete" for m in history):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: stored conversation {stored!r} differs from {said!r}")


async def client_loop(index: int, client: httpx.AsyncClient, plan: list[Script], refs: list[list[str]],
                      deadline: float, counter: list[int], args: argparse.Namespace, results: Results) -> None:
    j = 0
    while time.monotonic() < deadline:
        script = plan[(index + j) % len(plan)]
        counter[0] += 1
        number = counter[0]
        where = f"client {index} conversation {j} (script {script.index})"
        try:
            if args.disconnect_every and number % args.disconnect_every == 0:
                mode = "queued" if (number // args.disconnect_every) % 2 else "token"
                await disconnecting_conversation(client, script, refs[script.index], mode, args, results,
                                                 f"{where}, disconnect at {mode}")
            else:
                results.conversations += 1
                await conversation(client, script, refs[script.index], deadline, args, results, where)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            results.errors += 1
            results.problem("error", f"{where}: {type(exc).__name__}: {exc}")
        j += 1


@dataclass
class LoadRun:
    """What one run against the app found: its config, the scripts, their references, the load phase's results."""

    config: dict[str, Any]
    plan: list[Script]
    reference_s: float
    results: Results
    wall: float
    stats: dict[str, Any]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="chat-load-"))
    server = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        log(f"starting the app (python -m {SERVER}) with MAX_CONCURRENT={args.max_concurrent}, "
            f"CHAT_MAX_TOKENS={args.max_tokens}...")
        server = ManagedServer(args, workdir)
        url = server.url
    try:
        if server:
            await server.wait_ready(args.start_timeout)
        limits = httpx.Limits(max_connections=args.clients * 2 + 8, max_keepalive_connections=args.clients * 2 + 8)
        timeout = httpx.Timeout(30.0, read=max(120.0, args.duration * 2))
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            outcome = await exercise(client, args)
    finally:
        if server:
            server.stop()
    report = load_report(args, outcome, server)
    if report["passed"]:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"the app's database and log are kept in {workdir}")
    return report


async def exercise(client: httpx.AsyncClient, args: argparse.Namespace) -> LoadRun:
    """References one at a time, then the clients until the deadline, then the drain and the idle check."""
    config = (await client.get("/api/config")).json()
    plan = scripts(min(args.scripts or min(args.clients, 8), len(QUESTIONS)), args.turns)
    log(f"references: {len(plan)} scripts x {args.turns} turns, one at a time...")
    t = time.monotonic()
    refs = await references(client, plan, args.max_tokens)
    reference_s = time.monotonic() - t
    results = Results()
    log(f"load: {args.clients} clients for {args.duration:.0f} s...")
    start = time.monotonic()
    deadline = start + args.duration
    counter = [0]
    tasks = [asyncio.create_task(client_loop(i, client, plan, refs, deadline, counter, args, results))
             for i in range(args.clients)]
    done, pending = await asyncio.wait(tasks, timeout=args.duration + args.drain_timeout)
    for task in pending:
        task.cancel()
        results.errors += 1
        results.problem("error", f"a client was still busy {args.drain_timeout:.0f} s after the deadline")
    for task in done:
        if task.exception() is not None:
            results.errors += 1
            results.problem("error", f"client crashed: {task.exception()!r}")
    wall = time.monotonic() - start
    stats = await wait_idle(client, args.free_timeout, results)
    return LoadRun(config, plan, reference_s, results, wall, stats)


async def wait_idle(client: httpx.AsyncClient, timeout: float, results: Results) -> dict[str, Any]:
    """Every generation must be over, its decoding thread returned: nothing left behind by anyone."""
    idle_deadline = time.monotonic() + timeout
    while True:
        stats = (await client.get("/api/stats")).json()
        idle = stats["running"] == 0 and stats["queued"] == 0 and stats.get("decoding_threads", 0) == 0
        if idle or time.monotonic() > idle_deadline:
            break
        await asyncio.sleep(0.2)
    if not idle:
        results.disconnects_not_freed += 1
        results.problem("not_freed", f"the app is not idle after the run: {stats}")
    return stats


def load_report(args: argparse.Namespace, outcome: LoadRun, server: ManagedServer | None) -> dict[str, Any]:
    """The JSON report: counts, latency and speed percentiles, memory, settings, machine, problems, passed."""
    results, wall, stats, config = outcome.results, outcome.wall, outcome.stats, outcome.config

    def r(value: float | None, digits: int = 3) -> float | None:
        return None if value is None else round(value, digits)

    report = {
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": r(wall, 1),
        "completed": results.completed,
        "errors": results.errors,
        "mixed_up": results.mixed_up,
        "disconnects": results.disconnects,
        "disconnects_not_freed": results.disconnects_not_freed,
        "disconnects_completed_first": results.disconnects_completed_first,
        "conversations": results.conversations,
        "ttft_p50_s": r(percentile(results.ttft, 0.5)),
        "ttft_p95_s": r(percentile(results.ttft, 0.95)),
        "queue_wait_p50_s": r(percentile(results.queue_wait, 0.5)),
        "queue_wait_p95_s": r(percentile(results.queue_wait, 0.95)),
        "tokens_per_s_p50": r(percentile(results.tokens_per_s, 0.5)),
        "tokens_per_s_p95": r(percentile(results.tokens_per_s, 0.95)),
        "aggregate_tokens_per_s": r(results.tokens / wall if wall else None),
        "output_tokens": results.tokens,
        "disconnect_freed_p50_s": r(percentile(results.free_s, 0.5)),
        "disconnect_freed_max_s": r(max(results.free_s) if results.free_s else None),
        "server_peak_rss_mb": r((server.peak_rss if server and server.peak_rss else 0) / 2**20, 1) or None,
        "server_ru_maxrss_mb": stats.get("peak_rss_mb"),
        "server_totals": {k: stats.get(k) for k in ("completed", "cancelled", "errors", "output_tokens")},
        "settings": {
            "max_tokens": args.max_tokens,
            "max_concurrent": config.get("max_concurrent"),
            "max_queue": config.get("max_queue"),
            "model": config.get("model"),
            "scripts": len(outcome.plan),
            "turns": args.turns,
            "disconnect_every": args.disconnect_every,
            "temperature": 0,
            "url": args.url or "started by load.py",
        },
        "reference_s": r(outcome.reference_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "problems": results.problems,
    }
    report["passed"] = report["errors"] == 0 and report["mixed_up"] == 0 and report["disconnects_not_freed"] == 0
    return report


def print_report(report: dict[str, Any]) -> None:
    def f(value: Any, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    s = report["settings"]
    print(f"{report['clients']} clients for {report['duration_s']:.0f} s (wall {report['wall_s']} s incl. drain), "
          f"{s['model']}, max_tokens={s['max_tokens']}, MAX_CONCURRENT={s['max_concurrent']}, greedy")
    print(f"  completed answers      {report['completed']} ({report['conversations']} conversations, "
          f"{report['output_tokens']} tokens)")
    print(f"  errors                 {report['errors']}")
    print(f"  mixed-up answers       {report['mixed_up']}")
    print(f"  disconnects            {report['disconnects']} (not freed: {report['disconnects_not_freed']}, "
          f"freed after p50 {f(report['disconnect_freed_p50_s'], ' s')}, "
          f"max {f(report['disconnect_freed_max_s'], ' s')})")
    print(f"  time to first token    p50 {f(report['ttft_p50_s'], ' s')}  p95 {f(report['ttft_p95_s'], ' s')}  "
          f"(queue wait p50 {f(report['queue_wait_p50_s'], ' s')}, p95 {f(report['queue_wait_p95_s'], ' s')})")
    print(f"  tokens/s per answer    p50 {f(report['tokens_per_s_p50'])}  p95 {f(report['tokens_per_s_p95'])}")
    print(f"  aggregate tokens/s     {f(report['aggregate_tokens_per_s'])}")
    print(f"  server peak memory     {f(report['server_peak_rss_mb'], ' MB')} RSS sampled, "
          f"{f(report['server_ru_maxrss_mb'], ' MB')} ru_maxrss")
    print(f"  load average at end    {report['machine']['load_average']} on {report['machine']['cpus']} CPUs")
    for problem in report["problems"][:10]:
        print(f"  ! {problem}")
    print("PASSED" if report["passed"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4, help="concurrent streaming clients (default 4)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds during which clients start "
                        "new conversations (default 20); started ones finish afterwards")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    parser.add_argument("--url", help="use this running app instead of starting one")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per answer (default 24)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="MAX_CONCURRENT of the started app (default 2)")
    parser.add_argument("--scripts", type=int, default=0,
                        help="distinct conversations (default min(clients, 8), at most 16)")
    parser.add_argument("--turns", type=int, default=2, choices=(1, 2), help="turns per conversation (default 2)")
    parser.add_argument("--disconnect-every", type=int, default=4,
                        help="every Nth conversation disconnects on purpose (default 4; 0: never)")
    parser.add_argument("--free-timeout", type=float, default=30.0,
                        help="seconds a disconnected generation has to free its decoding thread (default 30)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds after the deadline for started conversations to finish (default 300)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the app to start")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be >= 1 and --duration > 0")
    report = asyncio.run(run(args))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
