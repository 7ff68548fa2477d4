"""Serving benchmark: ``persona-judge serve`` on Ray Serve replicas, and beside llama-cpp-python's own server.

    python -m benchmarks.serve --replicas 1 2 --clients 8 --duration 60 --json            # the full run
    python -m benchmarks.serve --replicas 1 2 --clients 8 --duration 60 --kill-replica --json
    python -m benchmarks.serve --replicas 2 --duration 20 --no-side-by-side                # a quick look

Run it from the repository root, as a module, on a quiet machine. Every server runs the same GGUF (``--model``,
default: the embedded SmolLM2) on llama.cpp, ``--threads`` CPU threads per model copy (default 1: one thread per
replica), in a subprocess on a free loopback port; each phase is ``--clients`` streaming clients in a loop for
``--duration`` seconds.

1. Side by side (unless ``--no-side-by-side``): llama-cpp-python's OpenAI server (``python -m llama_cpp.server``,
   the server a CPU user would otherwise run) answering the direct prompt (the first preference in words, as the
   system message: the very prompt ours decodes for one preference); then ``persona-judge serve`` (one
   process, no Ray) answering plain (one preference: one row per token) and Persona-judge (two preferences).
2. For each ``--replicas`` count: ``persona-judge serve --replicas N`` on a local Ray, answering Persona-judge.
3. ``--kill-replica``: on the largest replica count, after its load phase, one more phase in which one replica is
   killed (SIGKILL) a third of the way in: how many requests it took down (``affected``; all must be its own),
   how many were answered, and how long until a new replica answered (``recovery_s``).

Correctness, in every phase: client ``i`` asks question ``i % 4`` sampled with seed ``SEED + i``, so each
client's answer is known from a solo run through the same server before the load; an answer that differs from
its client's own is counted in ``mixed_up`` (an answer delivered to the wrong client, or a corrupted one).

Figures per phase: answers, errors, mixed_up, tokens/s (completion tokens of the answers / the phase's wall
time), TTFT p50/p95 (client side, queueing included); ``throughput_ratio``: tokens/s of the most replicas / the
fewest. The last line printed is the JSON report (``--json``); it is also written to
``benchmarks/results/serve.json`` (``--out``), with its provenance. Runs under 60 s per phase are marked
``short_run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .common import PREFERENCES, RESULTS, ROOT, write_results

QUESTIONS = [
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What should I pack for a weekend hiking trip?",
    "How does a bicycle stay upright?",
]
SEED = 1000
SAMPLING = {"temperature": 0.7, "top_p": 0.95}
REPLICA_HEADER = "x-persona-judge-replica"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the analysis (pure: tests/unit_tests/test_benchmarks_serve.py plants data in it) ---------------------------


@dataclass
class Record:
    """One request of a phase, as its client saw it."""

    client: int
    start: float
    end: float
    ok: bool
    text: str = ""
    tokens: int = 0
    ttft: float | None = None
    replica: str | None = None
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mixed_up(records: list[Record], references: dict[int, str]) -> list[Record]:
    """The answers that differ from their own client's reference (a client without one counts as mixed up)."""
    return [r for r in records if r.ok and references.get(r.client) != r.text]


def summarize(records: list[Record], wall: float, references: dict[int, str]) -> dict[str, Any]:
    """A phase's figures: answers, errors, mixed-up answers, tokens/s over ``wall`` seconds, TTFT p50/p95."""
    answered = [r for r in records if r.ok]
    ttfts = [r.ttft for r in answered if r.ttft is not None]
    tokens = sum(r.tokens for r in answered)
    replicas: dict[str, int] = {}
    for r in answered:
        replicas[r.replica or "?"] = replicas.get(r.replica or "?", 0) + 1

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "answers": len(answered),
        "errors": len(records) - len(answered),
        "mixed_up": len(mixed_up(records, references)),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_s": rounded(percentile(ttfts, 0.5)),
        "ttft_p95_s": rounded(percentile(ttfts, 0.95)),
        "answers_by_replica": replicas,
        "first_errors": sorted({r.error or "?" for r in records if not r.ok})[:3],
    }


def fault_summary(records: list[Record], killed_at: float, victim: str, before: set[str]) -> dict[str, Any]:
    """The fault phase: requests ended in error (``affected``), those among them not on the killed replica
    (``affected_elsewhere``, must be 0), answers, and seconds from the kill to the first answer by a replica
    not serving before it (``recovery_s``; None: none came)."""
    failed = [r for r in records if not r.ok]
    fresh = [r.end for r in records if r.ok and r.replica not in before and r.end >= killed_at]
    return {
        "victim": victim,
        "affected": len(failed),
        "affected_elsewhere": sum(1 for r in failed if r.replica != victim and victim not in (r.error or "")),
        "answered": sum(1 for r in records if r.ok),
        "answered_after_kill": sum(1 for r in records if r.ok and r.end >= killed_at),
        "recovery_s": round(min(fresh) - killed_at, 2) if fresh else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- servers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Managed:
    """A server in a subprocess on a free loopback port; stopped with SIGINT (SIGKILL if it hangs)."""

    def __init__(self, name: str, command: Callable[[int], list[str]], env: dict[str, str]) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command(self.port), env={**os.environ, **env}, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    async def wait_ready(self, path: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if (await client.get(path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.3)
        raise SystemExit(f"{self.name} did not answer {path} within {timeout:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ours(args: argparse.Namespace, replicas: int | None) -> Managed:
    def command(port: int) -> list[str]:
        out = [sys.executable, "-m", "langchain_persona_judge.cli", "serve", "--port", str(port), "--backend",
               "llamacpp", "--device", "cpu", "--log-level", "warning", "--max-concurrency",
               str(args.max_concurrency), "--max-queue", str(4 * args.clients)]
        if args.model:
            out += ["--model", args.model]
        if replicas is not None:
            out += ["--replicas", str(replicas), "--threads-per-replica", str(args.threads)]
        return out

    name = f"persona-judge serve --replicas {replicas}" if replicas else "persona-judge serve"
    return Managed(name, command, {"OMP_NUM_THREADS": str(args.threads), "RAY_USAGE_STATS_ENABLED": "0"})


def llama_cpp_server(args: argparse.Namespace) -> Managed:
    from langchain_persona_judge.runtime.loading import embedded_model_path

    gguf = args.model or str(embedded_model_path())

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
                "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
                # Its default cuts the answer being streamed whenever another request arrives; queue them instead.
                "--interrupt_requests", "False"]

    return Managed("llama_cpp.server", command, {"OMP_NUM_THREADS": str(args.threads)})


# -- clients ---------------------------------------------------------------------------------------------------


def direct_system_prompt() -> str:
    """The direct prompt's system message: the first preference in words, rendered as ``persona-judge serve``
    renders one preference, so that both servers decode the same prompt token for token."""
    from langchain_persona_judge.personas.templates import render_preferences

    return render_preferences("system", PREFERENCES[:1], "", None)


def request_body(args: argparse.Namespace, client: int, preferences: list[str] | None) -> dict[str, Any]:
    """Client ``client``'s request: ``preferences`` for ours, or (None) the direct prompt for llama.cpp's."""
    question = {"role": "user", "content": QUESTIONS[client % len(QUESTIONS)]}
    body: dict[str, Any] = {
        "messages": [question] if preferences is not None else [
            {"role": "system", "content": direct_system_prompt()}, question],
        "max_tokens": args.max_tokens, "seed": SEED + client, "stream": True,
        "stream_options": {"include_usage": True}, **SAMPLING,
    }
    if preferences is not None:
        body["preferences"] = preferences
    return body


async def one_request(http: httpx.AsyncClient, client: int, body: dict[str, Any]) -> Record:
    """One streamed answer: its text, completion tokens (the usage chunk; without one, ``max_tokens`` for an
    answer cut at the limit, else one per content chunk), TTFT, replica; an HTTP error, an error event or a stream
    without a finish reason and ``[DONE]`` is an error."""
    start = time.monotonic()
    rec = Record(client=client, start=start, end=start, ok=False)
    parts: list[str] = []
    chunks, done, finish = 0, False, None
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            rec.replica = response.headers.get(REPLICA_HEADER)
            if response.status_code != 200:
                await response.aread()
                rec.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return rec
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    rec.error = f"error event: {event['error'].get('message', '')[:200]}"
                    continue
                if event.get("usage"):
                    rec.tokens = int(event["usage"].get("completion_tokens") or 0)
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        chunks += 1
                        parts.append(text)
                        rec.ttft = rec.ttft if rec.ttft is not None else time.monotonic() - start
                    finish = finish or choice.get("finish_reason")
                rec.replica = (event.get("persona_judge") or {}).get("replica", rec.replica)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    rec.end = time.monotonic()
    rec.text = "".join(parts)
    if not rec.tokens:  # no usage chunk (llama_cpp.server sends none): a cut answer has max_tokens exactly
        rec.tokens = int(body["max_tokens"]) if finish == "length" else chunks
    if rec.error is None and not (done and finish):
        rec.error = "the stream ended without a finish reason and [DONE]"
    rec.ok = rec.error is None
    return rec


async def references(url: str, args: argparse.Namespace, preferences: list[str] | None) -> dict[int, str]:
    """Each client's answer, asked alone (the same seed makes it that client's answer under load too)."""
    out: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for client in range(args.clients):
            rec = await one_request(http, client, request_body(args, client, preferences))
            if not rec.ok:
                raise SystemExit(f"the solo reference run failed: {rec.error}")
            out[client] = rec.text
    return out


async def load(url: str, args: argparse.Namespace, preferences: list[str] | None, duration: float,
               during: Callable[[list[Record]], Any] | None = None) -> tuple[list[Record], float]:
    """``args.clients`` clients in a loop until ``duration`` has passed (requests started before it finish);
    ``during(records)`` runs beside them (the fault phase's killer). Returns the records and the wall time."""
    records: list[Record] = []
    start = time.monotonic()
    deadline = start + duration
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def loop(client: int) -> None:
            while time.monotonic() < deadline:
                records.append(await one_request(http, client, request_body(args, client, preferences)))

        tasks = [loop(i) for i in range(args.clients)]
        if during is not None:
            tasks.append(during(records))
        await asyncio.gather(*tasks)
    return records, time.monotonic() - start


# -- phases ----------------------------------------------------------------------------------------------------


async def phase(server: Managed, args: argparse.Namespace, preferences: list[str] | None, label: str
                ) -> dict[str, Any]:
    refs = await references(server.url, args, preferences)
    log(f"{label}: load, {args.clients} clients for {args.duration:.0f} s")
    before = os.getloadavg()[0]
    records, wall = await load(server.url, args, preferences, args.duration)
    summary = summarize(records, wall, refs)
    summary["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]  # 1-minute, before and after
    log(f"{label}: {summary['answers']} answers, {summary['tokens_per_s']} tokens/s, {summary['errors']} errors, "
        f"{summary['mixed_up']} mixed up, TTFT p50 {summary['ttft_p50_s']} s")
    return summary


def pid_of(replica: str) -> int:
    """``<id>@<host>:<pid>`` (what a Ray replica reports) → the pid."""
    return int(replica.rsplit(":", 1)[1])


async def fault_phase(server: Managed, args: argparse.Namespace, preferences: list[str] | None) -> dict[str, Any]:
    """Load for ``--duration`` seconds; a third of the way in, SIGKILL the replica that answered last."""
    refs = await references(server.url, args, preferences)
    kill: dict[str, Any] = {}
    started = time.monotonic()

    async def killer(records: list[Record]) -> None:
        await asyncio.sleep(args.duration / 3)
        while not any(r.ok and r.replica for r in records):  # a slow machine: wait for the first answer
            if time.monotonic() - started > args.duration:
                return
            await asyncio.sleep(0.1)
        answered = [r for r in records if r.ok and r.replica]
        victim = answered[-1].replica
        kill.update(victim=victim, before={r.replica for r in answered}, at=time.monotonic())
        os.kill(pid_of(victim), signal.SIGKILL)
        log(f"fault: killed replica {victim}")

    records, wall = await load(server.url, args, preferences, args.duration, during=killer)
    if not kill:
        return {"error": "no replica had answered when the kill was due"}
    if not any(r.ok and r.replica not in kill["before"] for r in records):  # not back yet: ask until it is
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
            while time.monotonic() - kill["at"] < 120:
                rec = await one_request(http, 0, request_body(args, 0, preferences))
                records.append(rec)
                if rec.ok and rec.replica not in kill["before"]:
                    break
    out = fault_summary(records, kill["at"], kill["victim"], kill["before"])
    out["mixed_up"] = len(mixed_up(records, refs))
    log(f"fault: {out}")
    return out


async def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = llama_cpp_server(args)
    try:
        await server.wait_ready("/v1/models")
        out["llama_cpp_server"] = await phase(server, args, None, "llama_cpp.server, direct prompt")
    finally:
        server.stop()
    server = ours(args, None)
    try:
        await server.wait_ready("/health")
        out["plain"] = await phase(server, args, PREFERENCES[:1], "persona-judge serve, one preference")
        out["persona_judge"] = await phase(server, args, PREFERENCES, "persona-judge serve, two preferences")
    finally:
        server.stop()
    base = out["llama_cpp_server"]["tokens_per_s"]
    out["plain_vs_llama_cpp"] = ratio(out["plain"]["tokens_per_s"], base)
    out["persona_judge_vs_llama_cpp"] = ratio(out["persona_judge"]["tokens_per_s"], base)
    return out


async def replica_runs(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    fault: dict[str, Any] | None = None
    for count in args.replicas:
        server = ours(args, count)
        try:
            await server.wait_ready("/health")
            runs[str(count)] = await phase(server, args, PREFERENCES, f"{count} replica(s), two preferences")
            if args.kill_replica and count == max(args.replicas) and count > 1:
                fault = await fault_phase(server, args, PREFERENCES)
        finally:
            server.stop()
    fewest, most = str(min(args.replicas)), str(max(args.replicas))
    out: dict[str, Any] = {"replicas": runs, "throughput_ratio": ratio(runs[most]["tokens_per_s"],
                                                                        runs[fewest]["tokens_per_s"])}
    if fault is not None:
        out["fault"] = fault
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to run (default 1 2)")
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (default 8)")
    p.add_argument("--duration", type=float, default=60, help="seconds of load per phase (default 60)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per model copy (default 1)")
    p.add_argument("--max-concurrency", type=int, default=1,
                   help="decodes at once per model copy (default 1: llama.cpp runs each decode on its own --threads, "
                        "so 2 at once on one thread each already take two cores, and one copy would use the "
                        "machine that the replicas are meant to share)")
    p.add_argument("--model", help="a GGUF file (default: the embedded SmolLM2)")
    p.add_argument("--kill-replica", action="store_true", help="add the fault phase on the most replicas")
    p.add_argument("--no-side-by-side", action="store_true", help="skip the llama_cpp.server comparison")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line, last")
    p.add_argument("--out", default=str(RESULTS / "serve.json"), help="results file ('' for none)")
    return p


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "out")},
                              "short_run": args.duration < 60}
    if not args.no_side_by_side:
        report["side_by_side"] = await side_by_side(args)
    report.update(await replica_runs(args))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = asyncio.run(run(args))
    if args.out:
        path = write_results(Path(args.out), report, module="benchmarks.serve", argv=argv, backend="llamacpp",
                             threads=args.threads)
        log(f"wrote {path}")
    print(json.dumps(report) if args.json else json.dumps(report, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Record", "fault_summary", "mixed_up", "percentile", "summarize"]
