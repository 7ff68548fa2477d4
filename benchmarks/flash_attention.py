"""llama.cpp's attention settings: does a position's logits depend on its batch, and what does each setting cost.

    .venv/bin/python -m benchmarks.flash_attention          # writes benchmarks/results/llamacpp_flash_attention.json

Run it from the repository root, as a module (needs the llama.cpp backend: ``make install``). The embedded GGUF,
the backend's own contexts (per-sequence KV, as the lockstep batches use):

1. **Exactness**, with the backend's default threads (torch's thread count: every core, as the server and the
   chat app decode; with one thread flash attention gave equal logits here): the logits of a chat prompt's last
   position (38 tokens) read in a batch of just the prompt, and in batches of 48 to 120 tokens (the prompt and
   more text after it, as a longer cached request read it): equal or not, and the largest difference.
2. **Cost**, one thread: a 2-row chat prompt read, then 64 two-row decode steps; and a 2 x 500-token prompt, then
   16 steps; three runs of each setting in turns, medians.

Settings: ``llama.cpp`` (its defaults: flash attention ``auto``, on for a CPU, and micro-batches of up to 2048
tokens), ``no_flash_attention`` (micro-batches of 2048), ``backend`` (what the backend now uses: flash attention,
micro-batches of :data:`~langchain_persona_judge.decoding.backends.llamacpp.UBATCH` tokens).

Why it matters: the llama.cpp backend's prompt cache (``PERSONA_JUDGE_PROMPT_CACHE``) reuses a prefix that an
earlier, longer request read; with flash attention that prefix's cache holds other numbers than a fresh
context would compute, and a seeded request decodes another answer (``benchmarks/load.py`` counted 18 of 32
answers that way).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch

from benchmarks.common import RESULTS, write_results

OUT = RESULTS / "llamacpp_flash_attention.json"
MODES = {"llama.cpp": (True, 2048), "no_flash_attention": (False, 2048), "backend": (True, None)}
"""Each setting's (flash attention, micro-batch tokens; None: the backend's UBATCH)."""
PROMPT = ("<|im_start|>system\nYou are a helpful assistant who explains things simply.<|im_end|>\n"
          "<|im_start|>user\nWhy is the sky blue? Tell me about it in detail please.<|im_end|>\n"
          "<|im_start|>assistant\n")
MORE = (" The sky is blue because sunlight is scattered by the molecules of the air, and blue light is scattered "
        "more than red light, which is why we see it everywhere we look during a clear day. At sunset the light "
        "travels through more air, so the blue is scattered away and the reds and oranges are left for us to see.")


def context(model: Any, mode: str, rows: int, n_ctx: int) -> Any:
    """One of the backend's contexts under setting ``mode`` (:data:`MODES`)."""
    from langchain_persona_judge.decoding.backends.llamacpp import UBATCH

    flash, ubatch = MODES[mode]
    model.flash_attention = flash
    try:
        return model.context(rows, n_ctx, unified=False, ubatch=ubatch or UBATCH)
    finally:
        model.flash_attention = True


def exactness(model: Any, mode: str) -> dict[str, Any]:
    from langchain_persona_judge.decoding.options import DecodingStats

    prompt = model.tokenizer(PROMPT)["input_ids"]
    text = prompt + model.tokenizer(MORE)["input_ids"]
    at = len(prompt) - 1
    seen = {}
    for length in [len(prompt), 48, 64, 80, 120]:
        ctx = context(model, mode, 1, 512)
        try:
            seen[length] = ctx.decode([(t, i, 0, i == at) for i, t in enumerate(text[:length])], DecodingStats())[0]
        finally:
            ctx.close()
    base = seen[len(prompt)]
    return {"prompt_tokens": len(prompt), "batches": {
        str(n): {"equal": bool(torch.equal(v, base)), "max_abs_difference": round(float((v - base).abs().max()), 4)}
        for n, v in seen.items() if n != len(prompt)}}


def cost(model: Any, mode: str, prompt: list[int], steps: int) -> tuple[float, float]:
    from langchain_persona_judge.decoding.options import DecodingStats

    stats = DecodingStats()
    ctx = context(model, mode, 2, 2048)
    try:
        started = time.perf_counter()
        ctx.decode([(t, i, r, i == len(prompt) - 1) for r in range(2) for i, t in enumerate(prompt)], stats)
        read = time.perf_counter()
        for k in range(steps):
            ctx.decode([(5, len(prompt) + k, r, True) for r in range(2)], stats)
        done = time.perf_counter()
    finally:
        ctx.close()
    return read - started, (done - read) / steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from langchain_persona_judge.runtime import load_model

    handle = load_model(None, backend="llamacpp")
    model = getattr(handle, "backend", handle)  # its default threads: what the server and the chat app decode with
    chat = model.tokenizer(PROMPT)["input_ids"]
    long = (chat * 20)[:500]
    threads = model.n_threads
    exact = {mode: exactness(model, mode) for mode in MODES}
    model.n_threads = 1  # timed on one thread: steady on a shared 2-core machine, as the other benchmarks time
    samples: dict[str, list[tuple[float, float]]] = {}
    for repeat in range(3):
        for mode in list(MODES) if repeat % 2 == 0 else list(MODES)[::-1]:
            for name, prompt, steps in (("chat", chat, 64), ("long_prompt", long, 16)):
                samples.setdefault(f"{mode}/{name}", []).append(cost(model, mode, prompt, steps))
    report = {
        "exactness": exact,
        "cost": {key: {"prompt_s": round(statistics.median(s[0] for s in v), 3),
                       "step_ms": round(1000 * statistics.median(s[1] for s in v), 1),
                       "runs": [[round(a, 3), round(1000 * b, 1)] for a, b in v]} for key, v in sorted(samples.items())},
        "config": {"exactness_threads": threads, "cost_threads": 1, "rows": 2, "chat_prompt_tokens": len(chat), "long_prompt_tokens": len(long),
                   "steps": {"chat": 64, "long_prompt": 16}, "repeats": 3},
    }
    write_results(OUT, report, module="benchmarks.flash_attention", argv=argv, backend="llamacpp", threads=threads)
    for mode, figures in report["exactness"].items():
        print(f"{mode:>18}: position {figures['prompt_tokens'] - 1} in longer batches: "
              + ", ".join(f"{n}: {'equal' if v['equal'] else v['max_abs_difference']}"
                          for n, v in figures["batches"].items()))
    for key, figures in report["cost"].items():
        print(f"{key:>30}: prompt {figures['prompt_s']} s, step {figures['step_ms']} ms")
    print(f"wrote {OUT}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
