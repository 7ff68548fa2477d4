"""The chat app under load while its PostgreSQL server restarts: nothing acknowledged lost, serving again in seconds.

    .venv/bin/python -m benchmarks.db_restart                                  # 2 minutes, restart at 1 minute
    .venv/bin/python -m benchmarks.db_restart --duration 30 --restart-at 10    # a short run
    .venv/bin/python -m benchmarks.db_restart --output benchmarks/results/db_restart.json

Run it from the repository root, as a module. It needs PostgreSQL's server binaries (Debian's ``postgresql``
package: ``initdb`` and ``pg_ctl`` in ``/usr/lib/postgresql/*/bin``, or ``$PG_BINDIR``) and the ``app`` extra.

What it does:

1. Makes a throw-away PostgreSQL cluster (Unix socket only; as the ``postgres`` user when run as root) with its
   default durability (``fsync``, ``synchronous_commit`` on), and starts the chat app on it
   (``python -m examples.chat_app.server`` on a free loopback port, ``CHAT_DATABASE_URL``; no model is loaded:
   the requests below do not decode).
2. Load for ``--duration`` seconds: ``--workers`` accounts, each in a loop: create a conversation (a write;
   *acknowledged* when answered 201 with its id), and every third step list its conversations (a read), with
   ``--pause`` seconds between requests. A prober asks ``/healthz`` every 0.1 s.
3. At ``--restart-at`` seconds PostgreSQL is stopped with ``pg_ctl -m immediate`` (no shutdown checkpoint: as a
   crash or a killed server), left down for ``--down`` seconds, and started again (``pg_ctl start -w``: back
   once it accepts connections, after its crash recovery).
4. Afterwards every acknowledged conversation is looked up in the database directly.

Figures: acknowledged writes and how many were **lost** (must be 0); rows the database holds that no client was
told about (writes committed whose answer was lost: counted, never run twice); **recovery**: seconds from
PostgreSQL being back to the first successful API request begun after that (must be under ``--recover-within``,
5 s) and to ``/healthz`` answering 200 again; requests **in flight during the restart** (begun before PostgreSQL
was back, ended after it went down) and the **errors** among them; errors outside that window (must be 0); the
latency of requests (p50, p95, max), overall and during the restart. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import free_port, log, percentile

ROOT = Path(__file__).resolve().parents[1]
SERVER = "examples.chat_app.server"


# -- PostgreSQL -----------------------------------------------------------------------------------------------


def pg_bindir() -> Path:
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb") or "").resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, or set PG_BINDIR")


class Postgres:
    """A throw-away cluster on a Unix socket in a temporary folder, with PostgreSQL's default durability."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="chat-pg-restart-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 5432 + os.getpid() % 1000
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.url = f"postgresql://chat@/chat?host={self.root}&port={self.port}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                                timeout=120, cwd=self.root, **self.run_as)
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise SystemExit(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{tail}")

    def create(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "chat", "-A", "trust", "-E", "UTF8")
        self.start()
        import psycopg

        with psycopg.connect(self.url.replace("/chat?", "/postgres?"), autocommit=True) as db:
            db.execute('CREATE DATABASE "chat"')

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.root} -p {self.port}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, cwd=self.root, **self.run_as)
        shutil.rmtree(self.root, ignore_errors=True)


# -- the app --------------------------------------------------------------------------------------------------


class App:
    """The chat app in a subprocess on a free loopback port, on the given database, without loading a model."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "CHAT_DATABASE_URL": database_url,
               "CHAT_PRELOAD": "0", "CHAT_MAX_CONVERSATIONS": "1000000", "CHAT_SIGNUPS_PER_MINUTE": "0",
               "LOG_LEVEL": "warning"}
        self.log_path = workdir / "app.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", SERVER], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)

    async def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the app exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise SystemExit(f"the app did not answer /healthz within {timeout:.0f} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the load -------------------------------------------------------------------------------------------------


@dataclass
class Request:
    kind: str  # write | read | health
    began: float
    ended: float
    ok: bool
    status: int | None  # None: no HTTP answer (a transport error)


@dataclass
class Run:
    requests: list[Request] = field(default_factory=list)
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # token -> conversation ids answered 201
    began: float = 0.0
    crashed_at: float | None = None
    back_at: float | None = None
    running: bool = True


async def _timed(run: Run, kind: str, call: Any) -> httpx.Response | None:
    began = time.monotonic()
    try:
        response = await call
    except httpx.HTTPError:
        run.requests.append(Request(kind, began, time.monotonic(), False, None))
        return None
    ok = response.status_code < 400
    run.requests.append(Request(kind, began, time.monotonic(), ok, response.status_code))
    return response


async def worker(client: httpx.AsyncClient, run: Run, token: str, pause: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    step = 0
    while run.running:
        step += 1
        if step % 3:
            response = await _timed(run, "write", client.post("/api/sessions", headers=headers))
            if response is not None and response.status_code == 201:
                run.acknowledged[token].append(response.json()["id"])
        else:
            await _timed(run, "read", client.get("/api/sessions", headers=headers, params={"limit": 20}))
        await asyncio.sleep(pause)


async def prober(client: httpx.AsyncClient, run: Run) -> None:
    while run.running:
        await _timed(run, "health", client.get("/healthz"))
        await asyncio.sleep(0.1)


async def restart(pg: Postgres, run: Run, at: float, down: float, began: float) -> None:
    await asyncio.sleep(max(0.0, began + at - time.monotonic()))
    run.crashed_at = time.monotonic()
    log(f"t={run.crashed_at - began:.1f} s: stopping PostgreSQL (-m immediate)")
    await asyncio.to_thread(pg.crash)
    await asyncio.sleep(down)
    await asyncio.to_thread(pg.start)
    run.back_at = time.monotonic()
    log(f"t={run.back_at - began:.1f} s: PostgreSQL is back ({run.back_at - run.crashed_at:.2f} s after the stop)")


async def load(app: App, pg: Postgres, args: argparse.Namespace) -> Run:
    run = Run()
    limits = httpx.Limits(max_connections=args.workers + 4)
    async with httpx.AsyncClient(base_url=app.url, timeout=60, limits=limits) as client:
        tokens = []
        for _ in range(args.workers):
            response = await client.post("/api/users")
            response.raise_for_status()
            tokens.append(response.json()["token"])
        run.acknowledged = {t: [] for t in tokens}
        began = run.began = time.monotonic()
        tasks = [asyncio.create_task(worker(client, run, t, args.pause)) for t in tokens]
        tasks.append(asyncio.create_task(prober(client, run)))
        restarting = asyncio.create_task(restart(pg, run, args.restart_at, args.down, began))
        await asyncio.sleep(args.duration)
        await restarting
        run.running = False
        await asyncio.gather(*tasks)
    return run


def stored(url: str) -> dict[str, set[str]]:
    """Every conversation in the database, by its owner's id (read directly, not through the app)."""
    import psycopg

    with psycopg.connect(url) as db:
        rows = db.execute("SELECT user_id, id FROM sessions").fetchall()
    out: dict[str, set[str]] = {}
    for user_id, session_id in rows:
        out.setdefault(user_id, set()).add(session_id)
    return out


# -- the report -----------------------------------------------------------------------------------------------


def report(run: Run, held: dict[str, set[str]], args: argparse.Namespace) -> dict[str, Any]:
    assert run.crashed_at is not None and run.back_at is not None
    crash, back, began = run.crashed_at, run.back_at, run.began
    every = set().union(*held.values()) if held else set()
    acknowledged = [sid for ids in run.acknowledged.values() for sid in ids]
    lost = [sid for sid in acknowledged if sid not in every]
    api = [r for r in run.requests if r.kind != "health"]
    in_window = [r for r in api if r.began < back and r.ended > crash]
    window = {id(r) for r in in_window}
    at_crash = [r for r in api if r.began <= crash < r.ended]
    errors = [r for r in api if not r.ok]
    first_ok = min((r.ended for r in api if r.ok and r.began >= back), default=None)
    first_health = min((r.ended for r in run.requests if r.kind == "health" and r.ok and r.began >= back),
                       default=None)

    def ms(values: list[float]) -> dict[str, float | None]:
        return {"p50": _round(percentile(values, 0.5), 4), "p95": _round(percentile(values, 0.95), 4),
                "max": _round(max(values) if values else None, 4)}

    def kinds(requests: list[Request]) -> dict[str, int]:
        return {k: sum(r.kind == k for r in requests) for k in ("write", "read")}

    out = {
        "duration_s": args.duration,
        "workers": args.workers,
        "restart_at_s": _round(crash - began, 2),
        "postgres_down_s": _round(back - crash, 3),
        "requests": len(api),
        "requests_by_kind": kinds(api),
        "acknowledged_writes": len(acknowledged),
        "lost_writes": len(lost),
        "stored_conversations": len(every),
        "committed_not_acknowledged": len(every) - len(set(acknowledged) & every),
        "recovered_after_s": _round(None if first_ok is None else first_ok - back, 3),
        "healthz_ok_after_s": _round(None if first_health is None else first_health - back, 3),
        "in_flight_at_stop": len(at_crash),
        "in_flight_during_restart": len(in_window),
        "errors": len(errors),
        "errors_by_kind": kinds(errors),
        "errors_by_status": _count(str(r.status) for r in errors),
        "errors_in_flight_during_restart": sum(1 for r in errors if id(r) in window),
        "errors_outside_restart": sum(1 for r in errors if id(r) not in window),
        "latency_s": ms([r.ended - r.began for r in api]),
        "latency_during_restart_s": ms([r.ended - r.began for r in in_window]),
        "settings": {"pause_s": args.pause, "down_s": args.down, "recover_within_s": args.recover_within,
                     "pool": "psycopg_pool, 4 connections, 5 s connect timeout (PostgresStore)",
                     "postgres": "initdb defaults (fsync, synchronous_commit on); stop -m immediate"},
    }
    out["passed"] = (out["lost_writes"] == 0 and out["errors_outside_restart"] == 0 and first_ok is not None
                     and out["recovered_after_s"] < args.recover_within)
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['workers']} accounts for {r['duration_s']:.0f} s; PostgreSQL stopped (-m immediate) at "
          f"{r['restart_at_s']} s and back {r['postgres_down_s']} s later")
    print(f"  requests               {r['requests']} {r['requests_by_kind']}")
    print(f"  acknowledged writes    {r['acknowledged_writes']}, lost {r['lost_writes']} "
          f"(committed but not acknowledged: {r['committed_not_acknowledged']})")
    print(f"  serving again          {r['recovered_after_s']} s after PostgreSQL was back "
          f"(/healthz: {r['healthz_ok_after_s']} s)")
    print(f"  in flight at the stop  {r['in_flight_at_stop']}; during the restart {r['in_flight_during_restart']}")
    print(f"  errors                 {r['errors']} {r['errors_by_status']}: {r['errors_in_flight_during_restart']} "
          f"in flight during the restart, {r['errors_outside_restart']} outside it")
    print(f"  latency                {r['latency_s']} (during the restart: {r['latency_during_restart_s']})")
    print("PASSED" if r["passed"] else "FAILED")


def parser() -> argparse.ArgumentParser:
    summary, _, details = (__doc__ or "").partition("\n\n")
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    p.add_argument("--restart-at", type=float, default=None, help="when PostgreSQL is stopped (default: halfway)")
    p.add_argument("--down", type=float, default=0.0, help="seconds it stays down before it is started (default 0)")
    p.add_argument("--workers", type=int, default=4, help="accounts writing and reading at once (default 4)")
    p.add_argument("--pause", type=float, default=0.1, help="seconds between one worker's requests (default 0.1)")
    p.add_argument("--recover-within", type=float, default=5.0,
                   help="the app must serve again within this many seconds of PostgreSQL being back (default 5)")
    p.add_argument("--output", type=Path, help="write the JSON report here (with its provenance)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    pg = Postgres(pg_bindir())
    workdir = Path(tempfile.mkdtemp(prefix="chat-restart-"))
    app: App | None = None
    try:
        pg.create()
        app = App(pg.url, workdir)
        await app.wait_ready()
        run = await load(app, pg, args)
        held = await asyncio.to_thread(stored, pg.url)
        return report(run, held, args)
    finally:
        if app is not None:
            app.stop()
        pg.remove()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    args.restart_at = args.duration / 2 if args.restart_at is None else args.restart_at
    if not 0 < args.restart_at < args.duration or args.workers < 1 or args.down < 0:
        p.error("need 0 < --restart-at < --duration, --workers >= 1 and --down >= 0")
    result = asyncio.run(main_async(args))
    if args.output:
        from benchmarks.common import write_results

        write_results(args.output, result, module="benchmarks.db_restart", argv=argv, backend=None, indent=2)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
