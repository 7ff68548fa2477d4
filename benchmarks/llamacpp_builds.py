"""What a llama.cpp build can do for scoring: its read rate on the embedded GGUF, against the installed build.

    .venv/bin/python -m benchmarks.llamacpp_builds --build avx512_vnni=/tmp/llama_vnni    # ~1 minute

Scoring a learner's choice on llama.cpp reads ~4,500 positions with every position's logits
(``benchmarks/results/learning_cost.json``), so its time is bounded by how fast the build's kernels read a batch.
Each ``--build NAME=DIR`` is a ``pip install --target DIR llama-cpp-python`` made with other ``CMAKE_ARGS`` (its
flags are the user's to record in NAME); ``installed`` is the one ``make install`` builds (portable AVX2). Each
build runs in a process of its own (``PYTHONPATH=DIR``), in turns over ``--repeats`` rounds:
:func:`benchmarks.learning.llamacpp_read_rates` (one sequence, 256 positions in one decode, best of three, with and
without logits, both cores), medians over the rounds. A build that crashes (an illegal instruction, say) is
recorded with its exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_results

OUT = RESULTS / "llamacpp_builds.json"
ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, torch
torch.set_num_threads(int({threads}))
import llama_cpp
from benchmarks.learning import llamacpp_read_rates
from langchain_persona_judge.profiles.scoring import resolve_model
rates = llamacpp_read_rates(resolve_model(None, backend="llamacpp").backend)
print("RATES " + json.dumps({{"library": llama_cpp.__file__, **rates}}))
"""


def probe(directory: str | None, threads: int) -> dict[str, Any]:
    """One build's read rates, in a process of its own."""
    # The build's own directory first, ahead of the installed package; the repository for the package itself.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(([directory] if directory else []) + [str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("RATES "):
            return json.loads(line[len("RATES "):])
    return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-400:]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="another build: a pip --target directory holding llama_cpp")
    parser.add_argument("--flags", action="append", default=[], metavar="NAME=CMAKE_ARGS",
                        help="the CMAKE_ARGS a build was made with, recorded beside its figures")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, builds in turns (2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (every core)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    builds: dict[str, str | None] = {"installed": None}
    for item in args.build:
        name, _, directory = item.partition("=")
        if not name or not directory or not Path(directory, "llama_cpp").is_dir():
            parser.error(f"--build {item!r}: pass NAME=DIR, DIR holding a llama_cpp package (pip install --target)")
        builds[name] = directory
    flags = dict(item.partition("=")[::2] for item in args.flags)
    flags.setdefault("installed", "make install's LLAMACPP_CMAKE (portable AVX2)")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for repeat in range(args.repeats):
        for name in builds if repeat % 2 == 0 else list(builds)[::-1]:
            runs[name].append(probe(builds[name], args.threads))
            print(f"[{name}] {runs[name][-1]}", file=sys.stderr, flush=True)
    report: dict[str, Any] = {"threads": args.threads, "builds": {}}
    for name, samples in runs.items():
        good = [s for s in samples if "error" not in s]
        entry: dict[str, Any] = {"directory": builds[name], "cmake_args": flags.get(name), "runs": samples}
        if good:
            for key in ("tokens_per_second_without_logits", "tokens_per_second_with_logits"):
                entry[key] = statistics.median(s[key] for s in good)
        report["builds"][name] = entry
    base = report["builds"]["installed"]
    for name, entry in report["builds"].items():
        if name != "installed" and "tokens_per_second_with_logits" in entry and "tokens_per_second_with_logits" in base:
            entry["vs_installed"] = round(entry["tokens_per_second_with_logits"]
                                          / base["tokens_per_second_with_logits"], 3)
    write_results(args.out, report, module="benchmarks.llamacpp_builds", argv=argv, backend="llamacpp",
                  threads=args.threads)
    print(json.dumps({n: {k: v for k, v in e.items() if k != "runs"} for n, e in report["builds"].items()}))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
