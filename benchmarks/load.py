"""Load test for the chat app (examples/chat_app): N concurrent streaming clients over M accounts, bounded in time.

    .venv/bin/python -m benchmarks.load --clients 4 --duration 20                # starts the app on a free port
    .venv/bin/python -m benchmarks.load --clients 8 --users 4 --duration 30      # 8 clients share 4 accounts
    .venv/bin/python -m benchmarks.load --clients 16 --duration 120 --json       # one JSON object on stdout
    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8000 ...          # an app that is already running

Run it from the repository root, as a module.

What it does:

1. Starts the app (``python -m examples.chat_app.server``) on a free loopback port with a throw-away
   database, ``--max-tokens`` per answer, ``--max-concurrent`` decoding slots and room for every client in the
   model's admission queue (MAX_QUEUE) and in each account's answers in flight, or uses ``--url``; then signs
   up ``--users`` accounts (default: one per client). Client ``i`` uses account ``i % users``.
2. References: client ``i`` has its own conversation: script ``i % scripts`` (a question, a follow-up, a pair
   of personas) sampled at ``--temperature`` with seed ``--seed + i``. Seeded sampling is deterministic, so
   each client's answers are known: each is run once, alone, through the same app, one at a time. Distinct
   seeds make the clients' answers distinct even where their scripts are the same, so an answer delivered to
   the wrong client (or account) cannot pass for the right one, as it could under greedy decoding.
3. Load: ``--clients`` clients, each in a loop until ``--duration`` has passed: open a new conversation, send
   its turns one after the other (streaming), read the conversation back, list the account's conversations,
   and probe another account's newest conversation and generation. Every ``--disconnect-every``-th
   conversation instead disconnects on purpose, alternately while its request is still queued and right after
   its first token.
4. Drain: conversations started before the deadline finish; then the app must be idle.

Checks (each can fail, and each failure is counted):

- cross_user_leaks (must be 0): any sign of one account's data reaching another: an answer that is another
  account's client's reference; events that name another account's conversation or generation; a listing
  that holds a conversation this account did not make; a probe of another account's conversation (GET, DELETE,
  POST a message) or generation (GET) answered with anything but 404; a request without a token not answered
  401.
- mixed-up: the streamed text differs from its own reference for that turn, the events name another
  generation/conversation, or the stored conversation read back differs from what this client sent and
  received. A disconnected answer's partial text must be a prefix of its reference.
- disconnects_not_cancelled: after a client disconnects (before its answer's ``done`` arrived), the server's
  own record of the generation (``GET /api/generations/{id}``) must say ``cancelled``, reason ``client
  disconnected``, with its decoding thread returned, within ``--free-timeout`` seconds; a generation that ran
  to the end anyway is counted here. At the end ``GET /api/stats`` must show nothing running, queued or
  decoding.
- errors: HTTP errors, ``error`` events, streams that end without ``done``, timeouts.

Figures: time to first token (client side, from sending the message to its first token: includes the wait
in the app's queue, also reported separately as queue_wait), per-answer decode speed (tokens/s after the
first token), aggregate tokens/s (tokens of completed answers / load-phase wall time), and the server's peak
memory (RSS sampled from the process tree when this script started the app). Exit status 1 when any check
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
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
            "CHAT_TEMPERATURE": str(args.temperature),
            "MAX_CONCURRENT": str(args.max_concurrent),
            # Every client may wait at once (plus the disconnected ones that still hold a place): none is refused,
            # by the model's queue or by an account's limit on answers in flight.
            "MAX_QUEUE": str(2 * args.clients),
            "CHAT_MAX_IN_FLIGHT": str(2 * args.clients),
            "CHAT_MAX_CONVERSATIONS": "100000",
            "CHAT_SIGNUPS_PER_MINUTE": "0",  # every account is made from this one address, at once
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


# -- accounts and what each has made ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    index: int
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(client: httpx.AsyncClient, count: int) -> list[Account]:
    accounts = []
    for i in range(count):
        response = await client.post("/api/users")
        response.raise_for_status()
        token = response.json()["token"]
        config = (await client.get("/api/config", headers={"Authorization": f"Bearer {token}"})).json()
        accounts.append(Account(i, config["user_id"], token))
    return accounts


@dataclass
class Registry:
    """Which account made each conversation and generation this run has seen (the cross-user checks' truth)."""

    sessions: dict[str, int] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)

    def own(self, account: Account) -> set[str]:
        return {s for s, owner in self.sessions.items() if owner == account.index}

    def others(self, account: Account, rng: random.Random) -> tuple[str | None, str | None]:
        """Another account's most recent conversation and generation (None when there is none yet)."""
        sessions = [s for s, owner in self.sessions.items() if owner != account.index]
        gens = [g for g, owner in self.generations.items() if owner != account.index]
        pick = lambda items: rng.choice(items[-8:]) if items else None  # noqa: E731 - recent ones, still running
        return pick(sessions), pick(gens)


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


@dataclass(frozen=True)
class Conversation:
    """One client's conversation: its script, sampled with its own seed."""

    script: Script
    seed: int
    temperature: float


async def stream_answer(client: httpx.AsyncClient, account: Account, session: str, convo: Conversation, turn: int,
                        max_tokens: int, disconnect: str | None = None) -> Answer:
    """POST one message and read its SSE stream. ``disconnect``: 'queued' or 'token' = leave at that event."""
    answer = Answer()
    payload = {"content": convo.script.turns[turn], "personas": list(convo.script.personas),
               "temperature": convo.temperature, "seed": convo.seed, "max_tokens": max_tokens}
    answer.sent = time.monotonic()
    try:
        async with client.stream("POST", f"/api/sessions/{session}/messages", json=payload,
                                 headers=account.headers) as response:
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
                        answer.error = f"error event: {data.get('status')}: {data.get('message')}"
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
    cross_user_leaks: int = 0
    leak_probes: int = 0
    disconnects: int = 0
    disconnects_not_cancelled: int = 0
    disconnects_completed_first: int = 0
    conversations: int = 0
    ttft: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    free_s: list[float] = field(default_factory=list)
    tokens: int = 0
    comparisons: int = 0
    picks: int = 0
    comparison_s: list[float] = field(default_factory=list)
    pick_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{kind}: {text}")
        log(f"  ! {kind}: {text}")

    def leak(self, text: str) -> None:
        self.cross_user_leaks += 1
        self.problem("cross_user_leak", text)


@dataclass(frozen=True)
class References:
    """Each client's reference answers (one list of turns per client) and its account."""

    answers: list[list[str]]
    account_of: list[int]

    def owner_of_text(self, text: str, turn: int) -> set[int]:
        """The accounts whose clients' reference answer for ``turn`` is exactly ``text``."""
        return {self.account_of[c] for c, refs in enumerate(self.answers) if turn < len(refs) and refs[turn] == text}


def check_answer(answer: Answer, client: int, account: Account, session: str, turn: int, refs: References,
                 registry: Registry, results: Results, where: str) -> bool:
    """Count the answer: error, cross-user leak, mixed-up, or completed (with its timings). True when right."""
    if not answer.ok:
        results.errors += 1
        results.problem("error", f"{where}: {answer.error}")
        return False
    gen_ids = {d.get("generation_id") for _, d in answer.events if "generation_id" in d}
    sessions = {d.get("session_id") for _, d in answer.events if "session_id" in d}
    foreign = {registry.sessions.get(s) for s in sessions} | {registry.generations.get(g) for g in gen_ids}
    if foreign - {None, account.index}:
        results.leak(f"{where}: events name conversations {sessions} / generations {gen_ids} of another account")
        return False
    if len(gen_ids) != 1 or sessions != {session}:
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: events name generations {gen_ids} / conversations {sessions}")
        return False
    registry.generations.setdefault(next(iter(gen_ids)), account.index)
    expected = refs.answers[client][turn]
    if answer.text != expected:
        owners = refs.owner_of_text(answer.text, turn) - {account.index}
        if owners:
            results.leak(f"{where}: got the reference answer of account(s) {sorted(owners)}: {answer.text!r}")
        else:
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


def check_listing(listed: list[str], account: Account, registry: Registry, results: Results, where: str) -> None:
    """Every conversation an account lists must be one it made."""
    foreign = [s for s in listed if s not in registry.own(account)]
    if foreign:
        results.leak(f"{where}: the listing holds conversations this account did not make: {foreign[:3]}")


def check_probe(status: int, what: str, results: Results, where: str) -> None:
    """Another account's conversation or generation must answer 404 (as an unknown one does)."""
    results.leak_probes += 1
    if status != 404:
        if 200 <= status < 300:
            results.leak(f"{where}: {what} of another account answered {status}")
        else:
            results.errors += 1
            results.problem("error", f"{where}: {what} of another account answered {status}, not 404")


def check_cancelled(info: dict[str, Any], answer: Answer, results: Results, where: str) -> bool:
    """The server's record of a generation whose client left before its ``done``: cancelled, for that reason."""
    if answer.done is not None:  # the whole answer arrived before the event we meant to leave at
        results.disconnects_completed_first += 1
        return True
    if info.get("state") != "cancelled" or info.get("cancel_reason") != "client disconnected":
        results.disconnects_not_cancelled += 1
        results.problem("not_cancelled", f"{where}: the client left, but the server's record says "
                                         f"{info.get('state')!r} ({info.get('cancel_reason')!r})")
        return False
    return True


async def new_session(client: httpx.AsyncClient, account: Account, registry: Registry) -> str:
    response = await client.post("/api/sessions", headers=account.headers)
    response.raise_for_status()
    session = response.json()["id"]
    registry.sessions[session] = account.index
    return session


def conversations(plan: list[Script], clients: int, args: argparse.Namespace) -> list[Conversation]:
    """Client ``i``'s conversation: script ``i % len(plan)``, seed ``--seed + i``."""
    return [Conversation(plan[i % len(plan)], args.seed + i, args.temperature) for i in range(clients)]


async def references(client: httpx.AsyncClient, accounts: list[Account], convos: list[Conversation],
                     registry: Registry, max_tokens: int) -> References:
    """Each client's answers, run alone (one request at a time)."""
    out = []
    for i, convo in enumerate(convos):
        started = time.monotonic()
        account = accounts[i % len(accounts)]
        session = await new_session(client, account, registry)
        texts = []
        for turn in range(len(convo.script.turns)):
            answer = await stream_answer(client, account, session, convo, turn, max_tokens)
            if not answer.ok:
                raise SystemExit(f"reference for client {i} turn {turn} failed: {answer.error}")
            texts.append(answer.text)
        out.append(texts)
        log(f"  reference {i} ({time.monotonic() - started:.1f} s): {convo.script.personas} seed {convo.seed} "
            f"{texts[0][:50]!r}...")
    return References(out, [i % len(accounts) for i in range(len(convos))])


async def wait_freed(client: httpx.AsyncClient, account: Account, generation_id: str,
                     timeout: float) -> tuple[dict[str, Any], float | None]:
    """Poll the generation until it ended and its decoding thread returned: (record, seconds) or (record, None)."""
    start = time.monotonic()
    info: dict[str, Any] = {"state": "unknown"}
    while time.monotonic() - start < timeout:
        try:
            info = (await client.get(f"/api/generations/{generation_id}", headers=account.headers)).json()
            if info.get("state") in ("cancelled", "completed", "error") and not info.get("worker_running"):
                return info, time.monotonic() - start
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(0.1)
    return info, None


async def probe_others(client: httpx.AsyncClient, account: Account, registry: Registry, rng: random.Random,
                       results: Results, where: str) -> None:
    """Reach for another account's conversation and generation: every way in must answer 404."""
    session, generation = registry.others(account, rng)
    h = account.headers
    if session is not None:
        check_probe((await client.get(f"/api/sessions/{session}", headers=h)).status_code,
                    "GET its conversation", results, where)
        check_probe((await client.post(f"/api/sessions/{session}/messages", headers=h,
                                       json={"content": "let me in", "max_tokens": 1})).status_code,
                    "POST a message to its conversation", results, where)
        check_probe((await client.delete(f"/api/sessions/{session}", headers=h)).status_code,
                    "DELETE its conversation", results, where)
    if generation is not None:
        check_probe((await client.get(f"/api/generations/{generation}", headers=h)).status_code,
                    "GET its generation", results, where)


async def disconnecting_conversation(client: httpx.AsyncClient, index: int, account: Account, convo: Conversation,
                                     refs: References, mode: str, args: argparse.Namespace, registry: Registry,
                                     results: Results, where: str) -> None:
    session = await new_session(client, account, registry)
    answer = await stream_answer(client, account, session, convo, 0, args.max_tokens, disconnect=mode)
    results.disconnects += 1
    if answer.error or answer.generation_id is None:
        results.errors += 1
        results.problem("error", f"{where}: before disconnecting: {answer.error or 'no generation id'}")
        return
    registry.generations.setdefault(answer.generation_id, account.index)
    expected = refs.answers[index][0]
    if not expected.startswith(answer.text):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: partial {answer.text!r} is not a prefix of {expected!r}")
    info, took = await wait_freed(client, account, answer.generation_id, args.free_timeout)
    if took is None:
        results.disconnects_not_cancelled += 1
        results.problem("not_cancelled", f"{where}: generation {answer.generation_id} still {info.get('state')!r} "
                                         f"with its decoding thread running {args.free_timeout:.0f} s after the "
                                         f"disconnect")
        return
    if not check_cancelled(info, answer, results, where):
        return
    results.free_s.append(took)
    history = (await client.get(f"/api/sessions/{session}", headers=account.headers)).json()["messages"]
    roles = [(m["role"], m["content"]) for m in history]
    if not roles or roles[0] != ("user", convo.script.turns[0]) or len(roles) > 2 or (
        len(roles) == 2 and (roles[1][0] != "assistant" or not expected.startswith(roles[1][1]))
    ):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: stored conversation after a disconnect is {roles!r}")


async def conversation(client: httpx.AsyncClient, index: int, account: Account, convo: Conversation,
                       refs: References, deadline: float, args: argparse.Namespace, registry: Registry,
                       results: Results, where: str) -> None:
    session = await new_session(client, account, registry)
    said: list[tuple[str, str]] = []
    for turn in range(len(convo.script.turns)):
        if turn and time.monotonic() >= deadline:
            break
        answer = await stream_answer(client, account, session, convo, turn, args.max_tokens)
        if not check_answer(answer, index, account, session, turn, refs, registry, results, f"{where} turn {turn}"):
            return
        said += [("user", convo.script.turns[turn]), ("assistant", answer.text)]
    history = (await client.get(f"/api/sessions/{session}", headers=account.headers)).json()["messages"]
    stored = [(m["role"], m["content"]) for m in history]
    if stored != said or any(m["status"] != "complete" for m in history):
        results.mixed_up += 1
        results.problem("mixed_up", f"{where}: stored conversation {stored!r} differs from {said!r}")


async def client_loop(index: int, account: Account, client: httpx.AsyncClient, convo: Conversation,
                      refs: References, deadline: float, counter: list[int], args: argparse.Namespace,
                      registry: Registry, results: Results) -> None:
    rng = random.Random(args.seed * 7919 + index)
    j = 0
    while time.monotonic() < deadline:
        counter[0] += 1
        number = counter[0]
        where = f"client {index} (account {account.index}) conversation {j}"
        try:
            if args.disconnect_every and number % args.disconnect_every == 0:
                mode = "queued" if (number // args.disconnect_every) % 2 else "token"
                await disconnecting_conversation(client, index, account, convo, refs, mode, args, registry, results,
                                                 f"{where}, disconnect at {mode}")
            else:
                results.conversations += 1
                await conversation(client, index, account, convo, refs, deadline, args, registry, results, where)
            listed = (await client.get("/api/sessions?limit=500", headers=account.headers)).json()
            check_listing([s["id"] for s in listed], account, registry, results, where)
            await probe_others(client, account, registry, rng, results, where)
            if args.learn_every and number % args.learn_every == 0:
                await learn_once(client, account, rng, results, where)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            results.errors += 1
            results.problem("error", f"{where}: {type(exc).__name__}: {exc}")
        j += 1


async def learn_once(client: httpx.AsyncClient, account: Account, rng: random.Random, results: Results,
                     where: str) -> None:
    """A comparison (two answers decoded and scored by the served model) and a pick; the account's profile must
    then count at least one more choice. A 429 (the model or the account busy) is not an error."""
    started = time.monotonic()
    made = await client.post("/api/profile/comparisons", json={}, headers=account.headers)
    if made.status_code == 429:
        return
    if made.status_code != 201:
        results.errors += 1
        results.problem("error", f"{where}: a comparison answered {made.status_code}: {made.text[:200]}")
        return
    results.comparisons += 1
    results.comparison_s.append(time.monotonic() - started)
    before = (await client.get("/api/profile", headers=account.headers)).json().get("choices", 0)
    started = time.monotonic()
    picked = await client.post(f"/api/profile/comparisons/{made.json()['id']}/choice",
                               json={"choice": rng.choice(["a", "b"])}, headers=account.headers)
    if picked.status_code == 409:  # another client of the same account changed the profile meanwhile
        return
    # At least this pick more (another client of the same account may have picked meanwhile).
    if picked.status_code != 200 or not picked.json().get("choices", 0) >= before + 1:
        results.errors += 1
        results.problem("error", f"{where}: a pick answered {picked.status_code}: {picked.text[:200]}")
        return
    results.picks += 1
    results.pick_s.append(time.monotonic() - started)


@dataclass
class LoadRun:
    """What one run against the app found: its config, the scripts, their references, the load phase's results."""

    config: dict[str, Any]
    plan: list[Script]
    reference_s: float
    results: Results
    wall: float
    stats: dict[str, Any]
    users: int


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
    """Accounts, references one at a time, then the clients until the deadline, then the drain and the idle
    check."""
    users = args.users or args.clients
    results = Results()
    registry = Registry()
    accounts = await sign_up(client, users)
    anonymous = await client.get("/api/sessions")
    results.leak_probes += 1
    if anonymous.status_code != 401:
        results.leak(f"GET /api/sessions without a token answered {anonymous.status_code}, not 401")
    config = (await client.get("/api/config", headers=accounts[0].headers)).json()
    plan = scripts(min(args.scripts or min(args.clients, 8), len(QUESTIONS)), args.turns)
    convos = conversations(plan, args.clients, args)
    log(f"references: {args.clients} clients' conversations ({len(plan)} scripts, seeds {args.seed}.."
        f"{args.seed + args.clients - 1}) x {args.turns} turns over {users} accounts, one at a time...")
    t = time.monotonic()
    refs = await references(client, accounts, convos, registry, args.max_tokens)
    reference_s = time.monotonic() - t
    distinct = len({tuple(r) for r in refs.answers})
    if distinct < len(refs.answers):
        log(f"  note: only {distinct} distinct reference conversations of {len(refs.answers)}: a leak between "
            f"clients with the same answers would not show (use another --seed or --temperature)")
    log(f"load: {args.clients} clients over {users} accounts for {args.duration:.0f} s...")
    start = time.monotonic()
    deadline = start + args.duration
    counter = [0]
    tasks = [asyncio.create_task(client_loop(i, accounts[i % users], client, convos[i], refs, deadline, counter,
                                             args, registry, results))
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
    stats = await wait_idle(client, accounts[0], args.free_timeout, results)
    return LoadRun(config, plan, reference_s, results, wall, stats, users)


async def wait_idle(client: httpx.AsyncClient, account: Account, timeout: float, results: Results) -> dict[str, Any]:
    """Every generation must be over, its decoding thread returned: nothing left behind by anyone."""
    idle_deadline = time.monotonic() + timeout
    while True:
        stats = (await client.get("/api/stats", headers=account.headers)).json()
        idle = stats["running"] == 0 and stats["queued"] == 0 and stats.get("decoding_threads", 0) == 0
        if idle or time.monotonic() > idle_deadline:
            break
        await asyncio.sleep(0.2)
    if not idle:
        results.disconnects_not_cancelled += 1
        results.problem("not_cancelled", f"the app is not idle after the run: {stats}")
    return stats


def load_report(args: argparse.Namespace, outcome: LoadRun, server: ManagedServer | None) -> dict[str, Any]:
    """The JSON report: counts, latency and speed percentiles, memory, settings, machine, problems, passed."""
    results, wall, stats, config = outcome.results, outcome.wall, outcome.stats, outcome.config

    def r(value: float | None, digits: int = 3) -> float | None:
        return None if value is None else round(value, digits)

    report = {
        "clients": args.clients,
        "users": outcome.users,
        "duration_s": args.duration,
        "wall_s": r(wall, 1),
        "completed": results.completed,
        "errors": results.errors,
        "cross_user_leaks": results.cross_user_leaks,
        "leak_probes": results.leak_probes,
        "mixed_up": results.mixed_up,
        "disconnects": results.disconnects,
        "disconnects_not_cancelled": results.disconnects_not_cancelled,
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
        "comparisons": results.comparisons,
        "picks": results.picks,
        "comparison_p50_s": r(percentile(results.comparison_s, 0.5)),
        "comparison_p95_s": r(percentile(results.comparison_s, 0.95)),
        "pick_p50_s": r(percentile(results.pick_s, 0.5)),
        "server_totals": {k: stats.get(k) for k in ("completed", "cancelled", "errors", "refused", "output_tokens")},
        "settings": {
            "max_tokens": args.max_tokens,
            "max_concurrent": config.get("max_concurrent"),
            "max_queue": config.get("max_queue"),
            "model": config.get("model"),
            "scripts": len(outcome.plan),
            "turns": args.turns,
            "disconnect_every": args.disconnect_every,
            "learn_every": args.learn_every,
            "temperature": args.temperature,
            "seeds": [args.seed, args.seed + args.clients - 1],
            "url": args.url or "started by load.py",
        },
        "reference_s": r(outcome.reference_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "problems": results.problems,
    }
    report["passed"] = (report["errors"] == 0 and report["mixed_up"] == 0 and report["cross_user_leaks"] == 0
                        and report["disconnects_not_cancelled"] == 0)
    return report


def print_report(report: dict[str, Any]) -> None:
    def f(value: Any, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    s = report["settings"]
    print(f"{report['clients']} clients over {report['users']} accounts for {report['duration_s']:.0f} s "
          f"(wall {report['wall_s']} s incl. drain), {s['model']}, max_tokens={s['max_tokens']}, "
          f"MAX_CONCURRENT={s['max_concurrent']}, temperature {s['temperature']}, seeds {s['seeds']}")
    print(f"  completed answers      {report['completed']} ({report['conversations']} conversations, "
          f"{report['output_tokens']} tokens)")
    print(f"  errors                 {report['errors']}")
    print(f"  cross-user leaks       {report['cross_user_leaks']} (of {report['leak_probes']} probes, plus every "
          f"answer, event and listing checked)")
    print(f"  mixed-up answers       {report['mixed_up']}")
    print(f"  disconnects            {report['disconnects']} (not cancelled: {report['disconnects_not_cancelled']}, "
          f"freed after p50 {f(report['disconnect_freed_p50_s'], ' s')}, "
          f"max {f(report['disconnect_freed_max_s'], ' s')})")
    print(f"  time to first token    p50 {f(report['ttft_p50_s'], ' s')}  p95 {f(report['ttft_p95_s'], ' s')}  "
          f"(queue wait p50 {f(report['queue_wait_p50_s'], ' s')}, p95 {f(report['queue_wait_p95_s'], ' s')})")
    print(f"  tokens/s per answer    p50 {f(report['tokens_per_s_p50'])}  p95 {f(report['tokens_per_s_p95'])}")
    print(f"  aggregate tokens/s     {f(report['aggregate_tokens_per_s'])}")
    print(f"  server peak memory     {f(report['server_peak_rss_mb'], ' MB')} RSS sampled")
    if report["settings"].get("learn_every"):
        print(f"  learning               {report['comparisons']} comparisons (p50 {f(report['comparison_p50_s'], ' s')}, "
              f"p95 {f(report['comparison_p95_s'], ' s')}), {report['picks']} picks (p50 "
              f"{f(report['pick_p50_s'], ' s')})")
    print(f"  load average at end    {report['machine']['load_average']} on {report['machine']['cpus']} CPUs")
    for problem in report["problems"][:10]:
        print(f"  ! {problem}")
    print("PASSED" if report["passed"] else "FAILED")


def parser() -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4, help="concurrent streaming clients (default 4)")
    p.add_argument("--users", type=int, default=0,
                   help="accounts the clients are spread over, client i using account i %% users (default: one per "
                        "client)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds during which clients start "
                   "new conversations (default 20); started ones finish afterwards")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("--url", help="use this running app instead of starting one")
    p.add_argument("--max-tokens", type=int, default=24, help="tokens per answer (default 24)")
    p.add_argument("--max-concurrent", type=int, default=2, help="MAX_CONCURRENT of the started app (default 2)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature of every answer, seeded per client (default 0.7; 0: greedy, where "
                        "clients with the same script get the same answers)")
    p.add_argument("--seed", type=int, default=1000, help="client i samples with seed SEED + i (default 1000)")
    p.add_argument("--scripts", type=int, default=0,
                   help="distinct scripts (default min(clients, 8), at most 16)")
    p.add_argument("--turns", type=int, default=2, choices=(1, 2), help="turns per conversation (default 2)")
    p.add_argument("--disconnect-every", type=int, default=4,
                   help="every Nth conversation disconnects on purpose (default 4; 0: never)")
    p.add_argument("--learn-every", type=int, default=0,
                   help="every Nth conversation, its client also asks for a comparison and picks an answer "
                        "(learning on the served model; default 0: never)")
    p.add_argument("--free-timeout", type=float, default=30.0,
                   help="seconds a disconnected generation has to free its decoding thread (default 30)")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds after the deadline for started conversations to finish (default 300)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the app to start")
    p.add_argument("--output", type=Path, help="also write the JSON report to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.users < 0:
        p.error("--clients must be >= 1, --duration > 0 and --users >= 0")
    if args.users > args.clients:
        p.error("--users must not exceed --clients (an account without a client tests nothing)")
    if not 0 <= args.temperature <= 2:
        p.error("--temperature must be in [0, 2]")
    report = asyncio.run(run(args))
    if args.output:
        from benchmarks.common import write_results

        write_results(args.output, report, module="benchmarks.load", argv=argv, backend="the chat app server's (auto)",
                      indent=2)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
