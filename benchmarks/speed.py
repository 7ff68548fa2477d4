"""Persona-judge decoding speed against the same model's plain `generate`, in one interleaved run.

    .venv/bin/python benchmarks/speed.py                     # greedy, λ=4, 128 new tokens, embedded model
    .venv/bin/python benchmarks/speed.py --lookahead 1 2 4 8 --max-new-tokens 256 --repeats 3

For each question and repeat, Persona-judge (two personas) and `model.generate` (greedy, KV cache, the
direct prompt: both preferences in one system turn) run back to back, A B A B, so the machine's drift
hits both alike. Both are forced to emit exactly --max-new-tokens tokens (EOS ignored). Forward calls and
positions are counted by a hook on the model, not by the engine's own bookkeeping. Results go to
benchmarks/results/speed.json; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from langchain_persona_judge import generate, load_model
from langchain_persona_judge.prompting import encode_chat, persona_messages

QUESTIONS = [
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What should I pack for a weekend hiking trip?",
]
PREFERENCES = [
    "Explain it so that a ten-year-old understands, with simple words.",
    "Be playful and funny, like a friendly storyteller.",
]
RESULTS = Path(__file__).parent / "results"


class ForwardCounter:
    """Counts forward passes and token positions fed, from a hook on the model itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.positions = 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += int(ids.shape[-1])

    def reset(self) -> None:
        self.calls = self.positions = 0


def cached_reload_seconds() -> tuple[float, float]:
    """(load_model() alone, python start + imports + load) in a fresh process, the conversion being cached."""
    code = (
        "import time; t0 = time.perf_counter();"
        "from langchain_persona_judge import load_model; t1 = time.perf_counter();"
        "load_model(device='cpu'); t2 = time.perf_counter();"
        "print(t2 - t1, t2 - t0)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    total = time.perf_counter() - start
    load_only, _ = (float(x) for x in out.split())
    return load_only, total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model id/path/.gguf (default: the embedded SmolLM2)")
    parser.add_argument("--lookahead", type=int, nargs="+", default=[4])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    load_only, load_total = cached_reload_seconds()
    model, tokenizer = load_model(args.model, device="cpu")
    counter = ForwardCounter(model)
    n = args.max_new_tokens

    rows: dict[str, list[dict[str, float]]] = {"generate": []}
    for lookahead in args.lookahead:
        rows[f"persona_judge_greedy_l{lookahead}"] = []

    def timed(fn: Any) -> tuple[float, int, int]:
        counter.reset()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, counter.calls, counter.positions

    for repeat in range(args.repeats):
        for question in QUESTIONS[: args.questions]:
            conversation = [{"role": "user", "content": question}]
            personas = [encode_chat(tokenizer, persona_messages(conversation, [p])) for p in PREFERENCES]
            direct = encode_chat(tokenizer, persona_messages(conversation, PREFERENCES))[None]

            def plain() -> None:
                with torch.inference_mode():
                    out = model.generate(
                        direct, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        attention_mask=torch.ones_like(direct), pad_token_id=tokenizer.eos_token_id,
                    )
                assert out.shape[1] - direct.shape[1] == n

            seconds, calls, positions = timed(plain)
            rows["generate"].append({"seconds": seconds, "calls": calls, "positions": positions, "accept": 0.0})
            for lookahead in args.lookahead:
                result: dict[str, Any] = {}

                def ours() -> None:
                    result["gen"] = generate(model, personas, max_new_tokens=n, lookahead=lookahead,
                                             do_sample=False, eos_token_id=[])

                seconds, calls, positions = timed(ours)
                gen = result["gen"]
                assert len(gen.token_ids) == n and gen.stats.forward_calls == calls
                rows[f"persona_judge_greedy_l{lookahead}"].append(
                    {"seconds": seconds, "calls": calls, "positions": positions,
                     "accept": gen.stats.acceptance_rate, "tpi": gen.stats.tokens_per_iteration}
                )
            print(f"  repeat {repeat + 1}/{args.repeats}: {question[:40]!r} done", file=sys.stderr, flush=True)

    base = statistics.fmean(r["seconds"] for r in rows["generate"]) / n
    summary: dict[str, Any] = {}
    for name, runs in rows.items():
        per_token = statistics.fmean(r["seconds"] for r in runs) / n
        summary[name] = {
            "tokens_per_s": 1 / per_token,
            "time_ratio_vs_generate": per_token / base,
            "speed_ratio_vs_generate": base / per_token,
            "forward_calls_per_token": statistics.fmean(r["calls"] for r in runs) / n,
            "positions_per_token": statistics.fmean(r["positions"] for r in runs) / n,
            "acceptance_rate": statistics.fmean(r["accept"] for r in runs),
            "tokens_per_iteration": statistics.fmean(r.get("tpi", 1.0) for r in runs),
            "runs": len(runs),
        }
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": args.threads,
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "max_new_tokens": n,
        "cached_reload_s": {"load_model": round(load_only, 3), "process_with_imports": round(load_total, 3)},
        "results": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"\nmodel: {report['model']}, {n} new tokens, greedy, torch threads {args.threads}")
    print(f"cached reload: load_model {load_only:.2f} s ({load_total:.2f} s with python start and imports)")
    print(f"{'setting':32} {'tok/s':>7} {'time vs generate':>17} {'fwd/token':>10} {'pos/token':>10} {'accept':>7} {'tok/iter':>9}")
    for name, s in summary.items():
        print(f"{name:32} {s['tokens_per_s']:7.2f} {s['time_ratio_vs_generate']:16.3f}x {s['forward_calls_per_token']:10.3f} "
              f"{s['positions_per_token']:10.2f} {s['acceptance_rate']:7.1%} {s['tokens_per_iteration']:9.2f}")
    print(f"\nwritten to {args.out}")
    return report


if __name__ == "__main__":
    main()
