"""Decoding speed at real model sizes: ``generate``, the engine, Persona-judge and continuous batching, GPU or CPU.

    python -m benchmarks.gpu --device cuda --json          # the GPU run: 135M, 1B and 8B shapes in bf16 (< 8 min)
    python -m benchmarks.gpu --device cpu --quick --json   # the tiny config, seconds (what the unit test runs)
    python -m benchmarks.gpu --device cpu --shapes embedded --only batching --threads 1 \\
        --out benchmarks/results/batching_cpu.json       # the CPU batching figure on the embedded model

Run it from the repository root, as a module. Models are built from the configs in ``benchmarks/configs/``
(``<shape>.json``: a LlamaConfig) with random weights (nothing is downloaded; a decode costs what the trained
model's does), in bf16 on CUDA and fp32 on a CPU (linear weights prepacked, as ``load_model`` does);
``embedded`` is the embedded SmolLM2-135M-Instruct itself (CPU). Every run is greedy, ignores EOS and emits
exactly ``--max-new-tokens`` tokens.

Conditions, per model:

=========================  ============================================================================
``generate``               ``model.generate`` on one prompt (dynamic cache)
``generate_static``        ``model.generate(cache_implementation="static")``
``engine``                 the engine's plain decoding (one persona)
``lockstep_k2``, ``_k3``   Persona-judge, lockstep schedule, K = 2 or 3 personas
``speculative_k2``, ``_k3``  Persona-judge, the paper's schedule (λ = 4)
``product_k2``             the weighted product of two personas
``guidance_k2``            Persona-judge over guided personas (γ = 2): two persona rows and the reference
``batched_N``              N concurrent Persona-judge requests (lockstep, K = 2), one thread each, with
                           continuous batching (:mod:`langchain_persona_judge.decoding.batching`)
``unbatched_8``            the same 8 requests as today: each runs its own forwards (one per request per step)
=========================  ============================================================================

``join_stall``: a Persona-judge request (lockstep, K = 2) decoding under continuous batching while a newcomer whose
two prompts are ``--long-prompt`` tokens each (default 1024; --quick 48) joins after its 8th token (of
``--max-new-tokens``, at least 32); the running
request's longest and median gap between tokens and the newcomer's time to its first token, with the newcomer's
prompts read whole (``prefill_chunk=0``) and in chunks (the device's default: 128 columns on a CPU, 512 on an
accelerator; --quick 16; or each of ``--prefill-chunks``). With ``--newcomers N`` (default 1), N such newcomers
join at once, read oldest first (one chunk in all between two steps) and, as ``chunk_<c>_each``, under the
scheduler's earlier rule (a chunk of every newcomer between two steps). Median of ``--repeats`` runs, taken in
turns.

Figures: tokens/s (concurrent conditions: every request's tokens over the wall time), peak GPU memory (CUDA),
ratios to ``generate``; ``lockstep_vs_generate`` per model and ``batching_speedup_8`` (``batched_8`` ÷
``unbatched_8``, one run). With ``--json`` the last line printed is one JSON object holding ``device``,
``batching_speedup_8`` (of the first model), ``lockstep_vs_generate`` and ``models`` (every figure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.common import PREFERENCES, QUESTIONS, RESULTS, MemoryMeter, now, write_results
from langchain_persona_judge.decoding import (
    BatchingBackend,
    BatchScheduler,
    DecodingOptions,
    generate,
    prepack_linear_weights,
    stream,
)
from langchain_persona_judge.decoding.backends import TransformersBackend

CONFIGS = Path(__file__).resolve().parent / "configs"
CUDA_SHAPES = ["smollm2-135m", "llama-3.2-1b", "llama-3.1-8b"]
SINGLE = ["generate", "generate_static", "engine", "lockstep_k2", "lockstep_k3", "speculative_k2", "speculative_k3",
          "product_k2", "guidance_k2"]
PROMPT_LENGTH = 48
"""Tokens of a random model's persona prompt (each persona's differs by a few, so rows are padded)."""


# -- models and prompts ------------------------------------------------------------------------------------


def load_config(shape: str) -> dict[str, Any]:
    path = CONFIGS / f"{shape}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise SystemExit(f"--shapes {shape!r}: no {path}; choose among {known + ['embedded']}")
    return json.loads(path.read_text())


def build_model(shape: str, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer or None, description) for ``shape`` on ``device``."""
    if shape == "embedded":
        from benchmarks.common import load_bench_model

        bench = load_bench_model(None, device, None, None)
        return bench.model, bench.tokenizer, bench.description
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = load_config(shape)
    config = LlamaConfig(**spec["config"], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: an 8B model never exists in fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    if device == "cpu":
        prepack_linear_weights(model)
    return model, None, f"{spec['name']}, random weights, {dtype}"


def request_prompts(model: Any, tokenizer: Any, index: int, personas: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Request ``index``'s persona prompts and reference prompt: chat prompts with the embedded model's tokenizer,
    else random token ids (lengths differ a little per persona and request)."""
    if tokenizer is not None:
        question = QUESTIONS[index % len(QUESTIONS)]

        def encode(system: str | None) -> torch.Tensor:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]

        preferences = [PREFERENCES[(index + i) % len(PREFERENCES)] for i in range(personas)]
        if personas > len(PREFERENCES):
            preferences = [f"{p} ({i + 1})" for i, p in enumerate(preferences)]
        return [encode(p) for p in preferences], encode(None)
    generator = torch.Generator().manual_seed(1000 + index)
    vocab = model.config.vocab_size

    def random_prompt(length: int) -> torch.Tensor:
        return torch.randint(1, vocab, (length,), generator=generator)

    return [random_prompt(PROMPT_LENGTH + 3 * i + index % 5) for i in range(personas)], random_prompt(PROMPT_LENGTH - 4)


def condition_options(condition: str, tokens: int) -> tuple[int, dict[str, Any]]:
    """(personas, decoding options) of a single-request engine condition."""
    base: dict[str, Any] = {"max_new_tokens": tokens, "do_sample": False, "eos_token_id": [], "lookahead": 4}
    personas = 3 if condition.endswith("_k3") else 1 if condition == "engine" else 2
    extra = {
        "engine": {}, "lockstep_k2": {"schedule": "lockstep"}, "lockstep_k3": {"schedule": "lockstep"},
        "speculative_k2": {"schedule": "speculative"}, "speculative_k3": {"schedule": "speculative"},
        "product_k2": {"combine": "product"}, "guidance_k2": {"schedule": "lockstep", "guidance": 2.0},
    }[condition]
    return personas, {**base, **extra}


# -- timing ------------------------------------------------------------------------------------------------


def run_single(model: Any, tokenizer: Any, condition: str, tokens: int, device: str) -> int:
    """Decode once under ``condition``; the tokens emitted."""
    if condition.startswith("generate"):
        prompts, _ = request_prompts(model, tokenizer, 0, 1)
        kwargs: dict[str, Any] = {"cache_implementation": "static"} if condition == "generate_static" else {}
        ids = prompts[0].unsqueeze(0).to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=0, **kwargs)
        return int(out.shape[1] - ids.shape[1])
    personas, options = condition_options(condition, tokens)
    prompts, reference = request_prompts(model, tokenizer, 0, personas)
    gen = generate(model, prompts, options=DecodingOptions(**options), reference=reference)
    return len(gen.token_ids)


def run_concurrent(model: Any, tokenizer: Any, requests: int, tokens: int, batching: bool) -> int:
    """``requests`` Persona-judge requests (lockstep, K = 2) at once, one thread each; the tokens of all."""
    backend = TransformersBackend(model)
    target: Any = BatchingBackend(backend, BatchScheduler()) if batching else backend
    options = DecodingOptions(max_new_tokens=tokens, do_sample=False, eos_token_id=[], schedule="lockstep")
    counts = [0] * requests
    errors: list[BaseException] = []
    start = threading.Barrier(requests)

    def work(i: int) -> None:
        prompts, _ = request_prompts(model, tokenizer, i, 2)
        start.wait()
        try:
            with torch.inference_mode():
                counts[i] = len(generate(target, prompts, options=options).token_ids)
        except BaseException as exc:  # noqa: BLE001  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts)


def join_stall_once(model: Any, tokenizer: Any, chunk: int, long_tokens: int, tokens: int,
                    device: str, newcomers: int = 1, each: bool = False) -> dict[str, float]:
    """One run of ``join_stall`` (see the module) with the newcomers' prompts read ``chunk`` columns at a time
    (``each``: a chunk of every newcomer between two steps, the scheduler's old rule; else oldest first)."""
    scheduler = BatchScheduler(prefill_newcomers=None if each else 1)
    target = BatchingBackend(TransformersBackend(model, prefill_chunk=chunk), scheduler)
    options = DecodingOptions(max_new_tokens=tokens, do_sample=False, eos_token_id=[], schedule="lockstep")
    prompts, _ = request_prompts(model, tokenizer, 0, 2)
    generator = torch.Generator().manual_seed(7)
    vocab = model.config.vocab_size
    long_prompts = [[torch.randint(1, vocab, (long_tokens + i,), generator=generator) for i in range(2)]
                    for _ in range(newcomers)]
    ttft: dict[int, float] = {}

    def join(number: int) -> None:
        started = now(device)
        with torch.inference_mode():
            first = stream(target, long_prompts[number], options=DecodingOptions(
                max_new_tokens=4, do_sample=False, eos_token_id=[], schedule="lockstep"))
            for _ in first.chunks():
                ttft.setdefault(number, now(device) - started)

    stamps: list[float] = []
    threads = [threading.Thread(target=join, args=(number,)) for number in range(newcomers)]
    with torch.inference_mode():
        running = stream(target, prompts, options=options)
        for chunk_ids in running.chunks():
            stamps.append(now(device))
            if len(running.generation.token_ids) >= 8 and not threads[0].is_alive() and not ttft:
                for thread in threads:
                    thread.start()
    for thread in threads:
        thread.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    firsts = [ttft.get(number, float("nan")) for number in range(newcomers)]
    out = {"max_gap_ms": round(1000 * max(gaps), 1), "median_gap_ms": round(1000 * statistics.median(gaps), 1),
           "newcomer_ttft_s": round(statistics.mean(firsts), 3)}
    if newcomers > 1:
        out.update(first_newcomer_ttft_s=round(min(firsts), 3), last_newcomer_ttft_s=round(max(firsts), 3))
    return out


def join_stall(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``join_stall`` (see the module): whole and chunked prefill, runs in turns, medians. With several
    ``--newcomers`` each chunked setting also runs under the scheduler's old rule (``_each``: a chunk of every
    newcomer between two steps)."""
    chunks = args.prefill_chunks or [16 if args.quick else TransformersBackend(model).prefill_chunk]  # the default
    settings: dict[str, tuple[int, bool]] = {"whole": (0, False), **{f"chunk_{c}": (c, False) for c in chunks if c}}
    if args.newcomers > 1:
        settings.update({f"chunk_{c}_each": (c, True) for c in chunks if c})
    chunked = max(chunks)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    tokens = max(args.max_new_tokens, 32)  # the newcomer joins after the 8th token: the rest shows the stall
    join_stall_once(model, tokenizer, chunked, args.long_prompt, tokens, args.device)  # warm-up
    for repeat in range(args.repeats):
        for name in settings if repeat % 2 == 0 else list(settings)[::-1]:
            chunk, each = settings[name]
            runs[name].append(join_stall_once(model, tokenizer, chunk, args.long_prompt, tokens, args.device,
                                              args.newcomers, each))
    out: dict[str, Any] = {"long_prompt_tokens": args.long_prompt, "tokens": tokens}
    if args.newcomers > 1:
        out["newcomers"] = args.newcomers
    for name, samples in runs.items():
        out[name] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        out[name]["runs"] = samples
    return out


def measure(device: str, repeats: int, runs: dict[str, Any]) -> dict[str, Any]:
    """Median tokens/s of each of ``runs`` over ``repeats`` timed runs (after one warm-up run each), taken in turns
    (A B, then B A, ...) so that a drift of the machine's speed falls on each alike; the peak GPU memory of each.
    A condition that fails gets ``error`` instead, and the others go on."""
    cuda = device.startswith("cuda")
    samples: dict[str, list[tuple[int, float, float]]] = {name: [] for name in runs}
    failed: dict[str, str] = {}

    def once(name: str, timed: bool) -> None:
        meter = MemoryMeter(device)
        try:
            with meter if cuda else contextlib.nullcontext():
                started = now(device)
                tokens = runs[name]()
                elapsed = now(device) - started
        except Exception as exc:  # noqa: BLE001  # one failing condition must not cost the whole GPU run
            failed[name] = f"{type(exc).__name__}: {exc}"[:500]
            return
        if timed:
            samples[name].append((tokens, elapsed, meter.peak_mib if cuda else 0.0))

    for name in runs:
        once(name, timed=False)  # warm-up: kernels, allocator, packed weights
    names = list(runs)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            if name not in failed:
                once(name, timed=True)
    out: dict[str, Any] = {}
    for name in names:
        if name in failed:
            out[name] = {"error": failed[name]}
            continue
        out[name] = {"tokens_per_s": round(statistics.median(t / s for t, s, _ in samples[name]), 2),
                     "tokens": samples[name][-1][0], "seconds": [round(s, 4) for _, s, _ in samples[name]]}
        if cuda:
            out[name]["peak_gpu_mib"] = round(max(p for _, _, p in samples[name]), 1)
    return out


def bench_model(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every condition on one model shape; ``batched_8`` and ``unbatched_8`` in turns, side by side."""
    started = time.perf_counter()
    model, tokenizer, description = build_model(shape, args.device)
    built = time.perf_counter() - started
    groups: list[dict[str, Any]] = []
    if args.only != "batching":
        for condition in SINGLE:
            groups.append({condition: lambda c=condition: run_single(model, tokenizer, c, args.max_new_tokens,
                                                                     args.device)})
    for n in args.concurrency:
        group = {f"batched_{n}": lambda n=n: run_concurrent(model, tokenizer, n, args.max_new_tokens, True)}
        if n == 8:
            group["unbatched_8"] = lambda: run_concurrent(model, tokenizer, 8, args.max_new_tokens, False)
        groups.append(group)
    if 8 not in args.concurrency:
        groups.append({"unbatched_8": lambda: run_concurrent(model, tokenizer, 8, args.max_new_tokens, False)})
    conditions: dict[str, Any] = {}
    stall = None
    if args.only != "stall":
        for group in groups:
            for name, figures in measure(args.device, args.repeats, group).items():
                conditions[name] = figures
                print(f"  {shape:>14} {name:<16} {figures}", file=sys.stderr, flush=True)
    if args.only in ("all", "stall"):
        stall = join_stall(model, tokenizer, args)
        print(f"  {shape:>14} join_stall       {stall}", file=sys.stderr, flush=True)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"description": description, "build_seconds": round(built, 2), "conditions": conditions,
            **ratios(conditions), **({"join_stall": stall} if stall is not None else {})}


def _rate(conditions: dict[str, Any], name: str) -> float | None:
    return conditions.get(name, {}).get("tokens_per_s")


def ratios(conditions: dict[str, Any]) -> dict[str, Any]:
    """Each single-request condition against ``generate``; batching against the same requests unbatched."""
    out: dict[str, Any] = {}
    base = _rate(conditions, "generate")
    if base:
        out["vs_generate"] = {n: round(r / base, 3) for n in SINGLE if (r := _rate(conditions, n)) is not None}
    batched, unbatched = _rate(conditions, "batched_8"), _rate(conditions, "unbatched_8")
    if batched and unbatched:
        out["batching_speedup_8"] = round(batched / unbatched, 3)
    one, many = _rate(conditions, "batched_1"), _rate(conditions, "batched_32")
    if one and many:
        out["batched_32_vs_1"] = round(many / one, 3)
    return out


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--quick", action="store_true", help="the tiny config, few tokens: checks that it runs")
    parser.add_argument("--shapes", nargs="+", help="configs in benchmarks/configs (or 'embedded'); default: "
                        f"{' '.join(CUDA_SHAPES)} on cuda, tiny on cpu")
    parser.add_argument("--only", choices=["all", "batching", "stall"], default="all",
                        help="batching: only the concurrent conditions; stall: only join_stall")
    parser.add_argument("--prefill-chunks", type=int, nargs="+", help="join_stall's chunked settings (default: "
                        "the device's default prefill_chunk; --quick 16)")
    parser.add_argument("--long-prompt", type=int, help="join_stall's newcomer prompt tokens (default 1024; "
                        "--quick 48)")
    parser.add_argument("--newcomers", type=int, default=1, help="join_stall's newcomers, joining at once (1)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per request (default 64; --quick 6)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="batched request counts (default 1 8 32)")
    parser.add_argument("--repeats", type=int, help="timed runs per condition, after a warm-up (default 2; --quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads (CPU); 1 also pins the process to one core")
    parser.add_argument("--out", type=Path, help="results file (default on cuda: benchmarks/results/gpu.json)")
    args = parser.parse_args(argv)
    args.shapes = args.shapes or (CUDA_SHAPES if args.device == "cuda" and not args.quick else ["tiny"])
    args.max_new_tokens = args.max_new_tokens or (6 if args.quick else 64)
    args.concurrency = args.concurrency or ([1, 8] if args.quick else [1, 8, 32])
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.long_prompt = args.long_prompt or (48 if args.quick else 1024)
    if args.out is None and args.device == "cuda" and not args.quick:
        args.out = RESULTS / "gpu.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; pass --device cpu.")
    pinned = None
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1 and args.device == "cpu" and hasattr(os, "sched_setaffinity"):
            pinned = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {pinned})  # concurrent requests' threads share this one core too
    models: dict[str, Any] = {}
    for shape in args.shapes:
        models[shape] = bench_model(shape, args)
        report = build_report(args, models, pinned)
        if args.out is not None:  # after every model: a run cut short still leaves what it measured
            write_results(args.out, report, module="benchmarks.gpu", argv=argv, backend="transformers",
                          device=args.device, threads=torch.get_num_threads())
            print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return report


def build_report(args: argparse.Namespace, models: dict[str, Any], pinned: int | None) -> dict[str, Any]:
    first = next(iter(models.values()))
    return {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "device_type": args.device,
        "batching_speedup_8": first.get("batching_speedup_8"),
        "lockstep_vs_generate": {s: m.get("vs_generate", {}).get("lockstep_k2") for s, m in models.items()},
        "config": {"max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency, "repeats": args.repeats,
                   "threads": torch.get_num_threads(), "pinned_cpu": pinned, "shapes": args.shapes,
                   "greedy": True, "eos_ignored": True, "lookahead": 4},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda},
        "models": models,
    }


if __name__ == "__main__":
    main()
