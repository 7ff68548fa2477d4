"""Every decoding rule on each backend, side by side: transformers and llama.cpp, in one interleaved run.

    .venv/bin/python -m benchmarks.backends                  # greedy, λ=4, 128 tokens, one thread (~6 minutes)
    .venv/bin/python -m benchmarks.speed --backend transformers llamacpp   # the same (speed.py delegates here)
    .venv/bin/python -m benchmarks.backends --quick          # a smoke test
    .venv/bin/python -m benchmarks.backends --requantize q4_0   # llama.cpp on the GGUF re-quantised to Q4_0

Run it from the repository root, as a module. For each question and repeat, back to back (the order reverses on
every other pass, so a linear drift of the machine's speed cancels in the means), on the embedded
SmolLM2-135M-Instruct GGUF:

transformers  the GGUF de-quantised to fp32 (the package's default load on a CPU: linear weights prepacked)
              ``generate``      transformers' own greedy ``model.generate`` on the direct prompt (KV cache)
llamacpp      the GGUF as it is (Q4_1), llama.cpp through llama-cpp-python's C API, one context per request
              ``native``        llama-cpp-python's own ``Llama.generate`` on the direct prompt: plain llama.cpp,
                                what a user of Ollama or llama.cpp gets (greedy, top_k=1)

and on each backend through the engine (``generate`` of this package): ``direct`` (the direct prompt: every
preference in one system prompt, plain decoding), Persona-judge on the ``speculative`` and the ``lockstep``
schedule, ``product`` (Σ w_i log p_i), ``judge_g2`` (Persona-judge over guided personas, γ=2, lockstep, plus the
reference row) and ``product_g1.5``. Every run emits exactly --max-new-tokens tokens (EOS ignored), greedy.

After the runs, ``decode_ms``: one forward's milliseconds as it adds n = 1, 2, 3, 5 tokens to one sequence (the
speculative judge's read) or one token to each of n sequences (a lockstep step), on each backend — what a second
persona costs there.

Per condition: tokens/s, its ratio to each backend's direct prompt and to llama.cpp's native direct decoding,
forward calls and token positions ("rows") per emitted token, and whether the answer had fallen into a loop.
Results: benchmarks/results/backends.json (``--out``); ``benchmarks/tables.py`` renders the README's table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import LOOKAHEAD, PREFERENCES, QUESTIONS, RESULTS, machine_info, write_results
from langchain_persona_judge.decoding.options import DecodingStats
from benchmarks.metrics import loop_report

CONDITIONS = ["direct", "speculative", "lockstep", "product", "judge_g2", "product_g1.5"]
"""Engine conditions, run on every backend."""


def engine_options(condition: str) -> dict[str, Any]:
    return {
        "direct": {},
        "speculative": {"schedule": "speculative"},
        "lockstep": {"schedule": "lockstep"},
        "product": {"combine": "product"},
        "judge_g2": {"schedule": "lockstep", "guidance": 2.0},
        "product_g1.5": {"combine": "product", "guidance": 1.5},
    }[condition]


REQUANTIZE = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
"""Weight types ``--requantize`` makes (with llama.cpp's own quantiser)."""


def requantize(source: Path, kind: str) -> Path:
    """A copy of ``source`` re-quantised to ``kind`` by llama.cpp (cached in the temp folder)."""
    import tempfile

    import llama_cpp

    target = Path(tempfile.gettempdir()) / f"persona-judge-{source.stem}-{kind}.gguf"
    if not target.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, REQUANTIZE[kind])
        params.allow_requantize = True
        partial = target.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
            raise SystemExit(f"llama.cpp could not re-quantise {source} to {kind}")
        partial.replace(target)
    return target


def prompts_for(tokenizer: Any, question: str) -> dict[str, Any]:
    from langchain_persona_judge.personas import persona_messages
    from langchain_persona_judge.runtime import encode_chat

    conversation = [{"role": "user", "content": question}]
    return {
        "direct": [encode_chat(tokenizer, persona_messages(conversation, PREFERENCES))],
        "personas": [encode_chat(tokenizer, persona_messages(conversation, [p])) for p in PREFERENCES],
        "reference": encode_chat(tokenizer, persona_messages(conversation, [])),
    }


class Native:
    """llama-cpp-python's high-level ``Llama``: plain llama.cpp decoding, the baseline a CPU user would pick."""

    def __init__(self, path: str, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(self, prompt: list[int], n: int) -> list[int]:
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) >= n:
                break
        return out


def run_once(backend: str, condition: str, models: dict[str, Any], prompts: dict[str, Any], n: int) -> dict[str, Any]:
    from langchain_persona_judge import generate

    start = time.perf_counter()
    if condition == "generate":
        model = models["transformers"].model
        ids = prompts["direct"][0].unsqueeze(0)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        tokens = out[0, ids.shape[1]:].tolist()
        stats = {"forward_calls": len(tokens), "positions": ids.shape[1] + len(tokens) - 1}
    elif condition == "native":
        tokens = models["native"].run(prompts["direct"][0].tolist(), n)
        stats = {"forward_calls": len(tokens), "positions": len(prompts["direct"][0]) + len(tokens) - 1}
    else:
        options = engine_options(condition)
        personas = prompts["direct"] if condition == "direct" else prompts["personas"]
        if options.get("guidance", 1.0) != 1.0:
            options["reference"] = prompts["reference"]
        gen = generate(models[backend], personas, max_new_tokens=n, do_sample=False, lookahead=LOOKAHEAD,
                       eos_token_id=[], **options)
        tokens = gen.token_ids
        stats = {"forward_calls": gen.stats.forward_calls, "positions": gen.stats.positions}
    seconds = time.perf_counter() - start
    return {"backend": backend, "condition": condition, "seconds": seconds, "tokens": len(tokens),
            "token_ids": tokens, "forward_calls": stats["forward_calls"], "positions": stats["positions"],
            "loop": loop_report(tokens)}


def decode_costs(models: dict[str, Any], prompt: list[int], sizes: tuple[int, ...] = (1, 2, 3, 5), reps: int = 9
                 ) -> dict[str, Any]:
    """Milliseconds of one forward that adds ``n`` tokens to a ``len(prompt)``-token context, logits at every new
    position (best of ``reps``): as ``n`` positions of one sequence (the speculative judge) and as one position in
    each of ``n`` sequences (a lockstep step). What a second persona costs on each backend follows from these."""
    out: dict[str, Any] = {}
    stats = DecodingStats()
    if "llamacpp" in models:
        llama = models["llamacpp"]
        context = llama.context(max(sizes), (len(prompt) + 8) * max(sizes))
        for seq in range(max(sizes)):
            context.decode([(t, i, seq, i == len(prompt) - 1) for i, t in enumerate(prompt)], stats)
        base = len(prompt)
        rows: dict[str, Any] = {}
        for n in sizes:
            for kind in ("tokens", "sequences"):
                best = float("inf")
                for _ in range(reps):
                    items = ([(500, base + i, 0, True) for i in range(n)] if kind == "tokens" else
                             [(500, base, s, True) for s in range(n)])
                    start = time.perf_counter()
                    context.decode(items, stats)
                    best = min(best, time.perf_counter() - start)
                    for s in ({0} if kind == "tokens" else range(n)):
                        context.crop(s, base)
                rows[f"{n} {kind}"] = round(best * 1000, 2)
        context.close()
        out["llamacpp"] = rows
    if "transformers" in models:
        from transformers import DynamicCache

        from langchain_persona_judge.decoding.backends import ForwardSignature

        model = models["transformers"].model
        name = ForwardSignature(model).cache_argument  # past_key_values before transformers 5.24, cache after
        rows = {}
        with torch.inference_mode():
            for n in sizes:
                for kind in ("tokens", "sequences"):
                    width = 1 if kind == "sequences" else n
                    batch = n if kind == "sequences" else 1
                    ids = torch.tensor([prompt] * batch)
                    cache = DynamicCache(config=model.config)
                    model(input_ids=ids, **{name: cache}, use_cache=True, logits_to_keep=1)
                    best = float("inf")
                    for _ in range(reps):
                        new = torch.full((batch, width), 500)
                        start = time.perf_counter()
                        model(input_ids=new, **{name: cache}, use_cache=True, logits_to_keep=width)
                        best = min(best, time.perf_counter() - start)
                        cache.crop(-width)
                    rows[f"{n} {kind}"] = round(best * 1000, 2)
        out["transformers"] = rows
    return out


def plan(backends: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for backend in backends:
        out.append((backend, "generate" if backend == "transformers" else "native"))
        out += [(backend, c) for c in CONDITIONS]
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["backend"], r["condition"]), []).append(r)
    table: dict[str, Any] = {}
    for (backend, condition), rs in groups.items():
        tokens = sum(r["tokens"] for r in rs)
        table[f"{backend}/{condition}"] = {
            "backend": backend, "condition": condition, "runs": len(rs),
            "tokens_per_s": round(tokens / sum(r["seconds"] for r in rs), 2),
            "tokens_per_s_runs": [round(r["tokens"] / r["seconds"], 2) for r in rs],
            "forwards_per_token": round(sum(r["forward_calls"] for r in rs) / tokens, 3),
            "rows_per_token": round(sum(r["positions"] for r in rs) / tokens, 3),
            "looping_share": round(statistics.mean(bool(r["loop"]["looping"]) for r in rs), 3),
        }

    def tps(key: str) -> float | None:
        return table[key]["tokens_per_s"] if key in table else None

    for key, row in table.items():
        for ref in (f"{row['backend']}/direct", "llamacpp/native", "transformers/speculative", "transformers/lockstep"):
            base = tps(ref)
            if base:
                row[f"vs_{ref.replace('/', '_')}"] = round(row["tokens_per_s"] / base, 3)
    criteria = {}
    best_tf = max(filter(None, [tps("transformers/speculative"), tps("transformers/lockstep")]), default=None)
    best_ll = max(filter(None, [tps("llamacpp/speculative"), tps("llamacpp/lockstep")]), default=None)
    if best_tf and best_ll:
        criteria["persona_judge_llamacpp_vs_transformers"] = round(best_ll / best_tf, 3)
    if best_ll and tps("llamacpp/native"):
        criteria["persona_judge_llamacpp_vs_native_direct"] = round(best_ll / tps("llamacpp/native"), 3)
    if best_ll and tps("llamacpp/direct"):
        criteria["persona_judge_llamacpp_vs_engine_direct"] = round(best_ll / tps("llamacpp/direct"), 3)
    return {"table": table, "criteria": criteria}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", nargs="+", choices=["transformers", "llamacpp"],
                        default=["transformers", "llamacpp"])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="16 tokens, one question, one repeat")
    parser.add_argument("--prepack", choices=["auto", "on", "off"], default="auto",
                        help="transformers: oneDNN-packed linear weights (load_model's prepack; auto: on for fp32 "
                             "CPU models); off: PyTorch's default kernels for generate and the engine alike")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--requantize", choices=sorted(REQUANTIZE), default=None,
                        help="llama.cpp runs a copy of the embedded GGUF re-quantised to this type (transformers "
                             "still runs the embedded weights): what the weight format does to the costs")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_new_tokens, args.questions, args.repeats = 16, 1, 1
    torch.set_num_threads(args.threads)
    from langchain_persona_judge import load_model
    from langchain_persona_judge.decoding import is_prepacked
    from langchain_persona_judge.runtime import embedded_model_path

    models: dict[str, Any] = {}
    tokenizer = None
    if "transformers" in args.backend:
        models["transformers"] = load_model(None, device="cpu", backend="transformers",
                                            prepack={"auto": None, "on": True, "off": False}[args.prepack])
        tokenizer = models["transformers"].tokenizer
    gguf = embedded_model_path() if args.requantize is None else requantize(embedded_model_path(), args.requantize)
    if "llamacpp" in args.backend:
        models["llamacpp"] = load_model(None if args.requantize is None else str(gguf), device="cpu",
                                        backend="llamacpp", n_threads=args.threads)
        tokenizer = models["llamacpp"].tokenizer
        models["native"] = Native(str(gguf), args.threads)
    steps = plan(args.backend)
    questions = QUESTIONS[: args.questions]
    # warm-up: one short run of everything
    warm = prompts_for(tokenizer, questions[0])
    for backend, condition in steps:
        run_once(backend, condition, models, warm, 4)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    passes = [(q, r) for q in range(len(questions)) for r in range(args.repeats)]
    for i, (q, r) in enumerate(passes):
        prompts = prompts_for(tokenizer, questions[q])
        order = steps if i % 2 == 0 else steps[::-1]
        for backend, condition in order:
            run = run_once(backend, condition, models, prompts, args.max_new_tokens)
            run.update(question=q, repeat=r)
            runs.append(run)
            print(f"  {backend:12s} {condition:13s} {run['tokens'] / run['seconds']:7.1f} tok/s", file=sys.stderr,
                  flush=True)
    summary = summarise(runs)
    costs = decode_costs(models, prompts_for(tokenizer, questions[0])["personas"][0].tolist())
    report = {
        "benchmark": "backends",
        "config": {"max_new_tokens": args.max_new_tokens, "questions": questions, "repeats": args.repeats,
                   "lookahead": LOOKAHEAD, "greedy": True, "eos_ignored": True, "preferences": PREFERENCES,
                   "model": "SmolLM2-135M-Instruct Q4_1 GGUF (embedded)", "threads": args.threads,
                   "transformers_prepacked": is_prepacked(models["transformers"].model) if "transformers" in models else None,
                   "llamacpp_weights": "Q4_1 (as embedded)" if args.requantize is None else
                   f"{args.requantize.upper()} (the embedded Q4_1 re-quantised; transformers: the embedded weights)",
                   "machine": machine_info("cpu", args.threads), "seconds": round(time.perf_counter() - started, 1)},
        **summary,
        "decode_ms": costs,
        "runs": runs,
    }
    suffix = ("_quick" if args.quick else "") + (f"_{args.requantize}" if args.requantize else "")
    out = args.out or RESULTS / f"backends{suffix}.json"
    write_results(out, report, module="benchmarks.backends", argv=argv, backend=args.backend, threads=args.threads)
    print(f"\n{'condition':28s} {'tok/s':>8s} {'vs own direct':>14s} {'vs llama.cpp':>13s} {'rows/tok':>9s} loops")
    for key, row in summary["table"].items():
        print(f"{key:28s} {row['tokens_per_s']:8.1f} {row.get('vs_' + row['backend'] + '_direct', float('nan')):14.2f} "
              f"{row.get('vs_llamacpp_native', float('nan')):13.2f} {row['rows_per_token']:9.2f} "
              f"{row['looping_share']:.0%}")
    print(f"\nms per forward adding n tokens (one sequence) or one token to each of n sequences: {costs}")
    print(f"\ncriteria: {summary['criteria']}\nwritten to {out}")
    return report


if __name__ == "__main__":
    main()
