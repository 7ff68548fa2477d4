"""Persona-judge decoding speed against plain decoding and the paper's no-cache code path, in one interleaved run.

    .venv/bin/python -m benchmarks.speed            # greedy, λ=4, 128 new tokens, vs generate (embedded model)
    .venv/bin/python -m benchmarks.speed --suite    # everything `make bench` reports
    .venv/bin/python -m benchmarks.speed --quick    # tiny sizes, to check that it runs
    .venv/bin/python -m benchmarks.speed --device cuda   # on a GPU (random-init stand-in weights, see --random-init)
    .venv/bin/python -m benchmarks.speed --backend transformers llamacpp   # every rule on each backend
                                                      # (benchmarks/backends.py; its own options)

Run it from the repository root, as a module. How long each takes: benchmarks/README.md.

Sections (``--sections``; the default is ``main``):

main     For each question and repeat, back to back: ``generate`` (transformers generate, greedy, KV cache, on
         the first persona's prompt), ``direct`` (generate on the direct prompt: every preference in one system
         prompt) and Persona-judge (two personas) for every λ in --lookahead and every --schedule (the paper's
         ``speculative`` one, and ``lockstep``: every persona in one batched forward per token), greedy and,
         with --sampling, sampling (temperature 0.7, top-p 0.95). The order reverses on every other
         question/repeat (A B ... B A), so a linear drift of the machine's speed cancels in the means. Every run
         emits exactly --max-new-tokens tokens (EOS ignored).
lengths  Cost against the number of new tokens (--lengths, 64 ... 1024): generate and Persona-judge (greedy, λ=4,
         each schedule) decode max(--lengths) tokens once each, timed at every checkpoint; the naive paper path (no KV cache,
         langchain_persona_judge/decoding/reference.py) is measured up to --naive-max tokens and estimated beyond
         (see below).
prompts  Cost against the prompt length (--prompt-lengths, up to the context limit with a long enough list),
         --prompt-new-tokens new tokens each.

Rules (``--rules product guidance``, ``--guidance 2``): the main section also runs the engine's other batched
rules, greedy, one batched forward per token: ``product_greedy`` (the weighted product Σ w_i log p_i, no
reference row), and per γ ``persona_judge_greedy_l4_lockstep_gγ`` (Persona-judge over guided personas),
``product_greedy_gγ`` and ``direct_gγ`` (the direct prompt guided), each with the reference prompt (the
conversation with no preference) as one more row of the batch. ``--length-rules`` adds ``product`` and
``persona_judge_lockstep_gγ`` (the first γ) to the lengths section.

Loops: greedy decoding with EOS ignored often falls into a loop on long answers. Every run keeps its token ids;
the main section and every lengths checkpoint report the repeated 4-gram share (benchmarks/metrics.py
``loop_report``: the share of n-grams already seen earlier) over the answer and over its last stretch, and flag
``looping`` when that stretch is at least half repeats, so a speed figure at a long length says what was decoded.

Naive estimates: in greedy mode the naive path emits the same tokens as the engine and runs a known sequence of
no-cache forwards (its lengths follow from the engine's iteration history), so its time is estimated as the
sum of measured single-forward latencies (a quadratic fit over a grid of sequence lengths, timed in this run).
Where it is also measured, the estimate is checked against the measurement (reported as ``estimate_check``).

Per setting: tokens/s and its ratio to generate, forward calls and token positions per emitted token (counted
by a hook on the model, not by the engine's bookkeeping), acceptance rate, tokens per iteration, and peak
memory added by the run (RSS sampled on CPU, exact on CUDA). Results: benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.metrics import loop_report
from benchmarks.common import (
    PREFERENCES,
    QUESTIONS,
    RESULTS,
    SAMPLING,
    BenchModel,
    ForwardCounter,
    MemoryMeter,
    kv_cache_mib,
    load_bench_model,
    machine_info,
    now,
    write_results,
)
from langchain_persona_judge import stream
from langchain_persona_judge.decoding import SCHEDULES, is_prepacked
from langchain_persona_judge.decoding.backends import TransformersBackend
from langchain_persona_judge.decoding.reference import engine_history, iteration_schedule, naive_generate

FILLER = (
    "Here are my notes from a long day of reading, for context. Light scatters off the molecules of the air, "
    "and shorter wavelengths scatter more. Vaccines show the immune system a harmless piece of a germ so it can "
    "learn to recognise it. A good hiking pack holds water, food, layers of clothing, a map and a first-aid kit. "
)
MARK_EVERY = 16


@dataclass
class Run:
    """One timed decoding run."""

    setting: str
    tokens: int
    seconds: float
    calls: int
    positions: int
    peak_mib: float
    first_token_s: float
    question: int = 0
    repeat: int = 0
    prompt_tokens: int = 0
    acceptance_rate: float | None = None
    tokens_per_iteration: float | None = None
    marks: list[tuple[int, float, int, int]] = field(default_factory=list)
    """(tokens emitted, seconds, forward calls, positions) along the run, every MARK_EVERY tokens and at the end."""
    token_ids: list[int] = field(default_factory=list, repr=False)
    rows: int = 0
    """Batch rows over all forwards (hook count): rows per forward = rows / calls."""
    forward_lengths: list[int] = field(default_factory=list, repr=False)
    generation: Any = field(default=None, repr=False, compare=False)
    """Persona-judge runs: the engine's Generation (its iteration history gives the naive path's schedule)."""

    def at(self, n: int) -> tuple[int, float, int, int]:
        """The first mark with at least ``n`` tokens."""
        for mark in self.marks:
            if mark[0] >= n:
                return mark
        raise ValueError(f"{self.setting} emitted only {self.tokens} tokens, not {n}")


class Marker:
    """Records (tokens, seconds, calls, positions) as tokens arrive; keeps marks at checkpoints and every 16 tokens."""

    def __init__(self, counter: ForwardCounter, device: str, start: float, checkpoints: list[int]) -> None:
        self.counter, self.device, self.start = counter, device, start
        self.checkpoints = sorted(checkpoints)
        self.marks: list[tuple[int, float, int, int]] = []
        self.first: float | None = None
        self._last_bucket = 0

    def __call__(self, tokens: int) -> None:
        t = now(self.device) - self.start
        if self.first is None and tokens > 0:
            self.first = t
        bucket = tokens // MARK_EVERY
        previous = self.marks[-1][0] if self.marks else 0
        crossed = any(previous < c <= tokens for c in self.checkpoints)
        if bucket > self._last_bucket or crossed:
            self._last_bucket = bucket
            self.marks.append((tokens, t, self.counter.calls, self.counter.positions))

    def close(self, tokens: int, seconds: float) -> list[tuple[int, float, int, int]]:
        if not self.marks or self.marks[-1][0] != tokens:
            self.marks.append((tokens, seconds, self.counter.calls, self.counter.positions))
        return self.marks


class Bench:
    """The model, its hook counter and the timed runners."""

    def __init__(self, bm: BenchModel, device: str) -> None:
        self.bm = bm
        self.model = bm.model
        self.device = device
        self.counter = ForwardCounter(self.model)
        handle = TransformersBackend(self.model)  # the facts every layer reads
        self.vocab = handle.vocab_size
        self.context: int | None = handle.context_length

    # -- prompts --------------------------------------------------------------------------------------

    def prompts(self, question: int, context_tokens: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(persona prompts, direct prompt) for QUESTIONS[question], with ``context_tokens`` of filler text first."""
        if self.bm.tokenizer is None:
            return self._random_prompts(question, context_tokens)
        from langchain_persona_judge.personas import persona_messages
        from langchain_persona_judge.runtime import encode_chat

        tok = self.bm.tokenizer
        text = QUESTIONS[question % len(QUESTIONS)]
        if context_tokens > 0:
            filler = tok(FILLER * (context_tokens // 40 + 2), add_special_tokens=False)["input_ids"][:context_tokens]
            text = tok.decode(filler) + "\n\nMy question: " + text
        conversation = [{"role": "user", "content": text}]
        personas = [encode_chat(tok, persona_messages(conversation, [p])) for p in PREFERENCES]
        direct = encode_chat(tok, persona_messages(conversation, PREFERENCES))
        return personas, direct

    def reference(self, question: int, context_tokens: int = 0) -> torch.Tensor:
        """The reference prompt of guidance: the conversation with no preference (the chat model's)."""
        if self.bm.tokenizer is None:
            g = torch.Generator().manual_seed(1000 + question)
            return torch.randint(3, self.vocab, (12 + context_tokens,), generator=g)
        from langchain_persona_judge.personas import persona_messages
        from langchain_persona_judge.runtime import encode_chat

        tok = self.bm.tokenizer
        conversation = [{"role": "user", "content": QUESTIONS[question % len(QUESTIONS)]}]
        return encode_chat(tok, persona_messages(conversation, []))

    def _random_prompts(self, question: int, context_tokens: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + question)
        conv = torch.randint(3, self.vocab, (12 + context_tokens,), generator=g)
        prefs = [torch.randint(3, self.vocab, (24,), generator=g) for _ in PREFERENCES]
        personas = [torch.cat([p, conv]) for p in prefs]
        return personas, torch.cat([*prefs, conv])

    def fit_prompt(self, target: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Prompts whose first persona prompt is about ``target`` tokens long (a long context before the question)."""
        base = len(self.prompts(0)[0][0])
        personas, direct = self.prompts(0, max(0, target - base - 6))
        return personas, direct

    # -- runners --------------------------------------------------------------------------------------

    def generate(self, prompt: torch.Tensor, n: int, checkpoints: list[int], setting: str = "generate") -> Run:
        """transformers generate, greedy, KV cache, exactly ``n`` new tokens."""
        from transformers.generation.streamers import BaseStreamer

        ids = prompt[None].to(self.device)
        self.counter.reset()

        class Clock(BaseStreamer):
            def __init__(self, marker: Marker) -> None:
                self.marker, self.count = marker, -1

            def put(self, value: torch.Tensor) -> None:
                self.count += 1  # the first put is the prompt
                if self.count:
                    self.marker(self.count)

            def end(self) -> None:
                pass

        with MemoryMeter(self.device) as mem, torch.inference_mode():
            start = now(self.device)
            marker = Marker(self.counter, self.device, start, checkpoints)
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=self.model.generation_config.pad_token_id or 0, streamer=Clock(marker),
                temperature=None, top_p=None, top_k=None,
            )
            seconds = now(self.device) - start
        tokens = out.shape[1] - ids.shape[1]
        assert tokens == n, f"generate emitted {tokens} tokens, not {n}"
        return Run(setting, tokens, seconds, self.counter.calls, self.counter.positions, mem.peak_mib,
                   marker.first or seconds, prompt_tokens=len(prompt), marks=marker.close(tokens, seconds),
                   token_ids=out[0, ids.shape[1]:].tolist(), rows=self.counter.rows)

    def persona_judge(self, prompts: list[torch.Tensor], n: int, lookahead: int, sample: bool, checkpoints: list[int],
                      seed: int = 0, setting: str | None = None, draft_confidence: float = 0.0,
                      schedule: str = "speculative", combine: str = "judge", guidance: float = 1.0,
                      reference: torch.Tensor | None = None) -> Run:
        """The engine on ``prompts``: Persona-judge (``combine="judge"``) or the weighted product, guided
        against ``reference`` when ``guidance != 1`` (both of those batched: ``schedule`` must be lockstep)."""
        options: dict[str, Any] = {"do_sample": False}
        if sample:
            options = {"do_sample": True, "seed": seed, **SAMPLING}
        options["draft_confidence"] = draft_confidence
        options["schedule"] = schedule
        options["combine"] = combine
        if guidance != 1.0:
            options["guidance"] = guidance
            options["reference"] = reference
        self.counter.reset()
        with MemoryMeter(self.device) as mem:
            start = now(self.device)
            marker = Marker(self.counter, self.device, start, checkpoints)
            tokens = stream(self.model, prompts, max_new_tokens=n, lookahead=lookahead, eos_token_id=[], **options)
            count = 0
            for chunk in tokens.chunks():
                count += len(chunk)
                marker(count)
            seconds = now(self.device) - start
        gen = tokens.generation
        assert len(gen.token_ids) == n, f"Persona-judge emitted {len(gen.token_ids)} tokens, not {n}"
        assert gen.stats.forward_calls == self.counter.calls, "the engine's forward count disagrees with the hook's"
        name = setting or setting_name(lookahead, sample, schedule)
        judged = combine == "judge" and len(prompts) > 1  # the product (and one persona) drafts nothing
        return Run(name, n, seconds, self.counter.calls, self.counter.positions, mem.peak_mib, marker.first or seconds,
                   prompt_tokens=len(prompts[0]),
                   acceptance_rate=gen.stats.acceptance_rate if judged else None,
                   tokens_per_iteration=gen.stats.tokens_per_iteration if judged else None,
                   marks=marker.close(n, seconds),
                   token_ids=list(gen.token_ids), generation=gen, rows=self.counter.rows)

    def naive(self, prompts: list[torch.Tensor], n: int, lookahead: int, checkpoints: list[int]) -> Run:
        self.counter.reset()
        with MemoryMeter(self.device) as mem:
            start = now(self.device)
            marker = Marker(self.counter, self.device, start, checkpoints)
            result = naive_generate(self.model, prompts, max_new_tokens=n, lookahead=lookahead, eos_token_id=[],
                                    on_iteration=marker)
            seconds = now(self.device) - start
        assert result.forward_calls == self.counter.calls
        return Run("naive_paper_greedy_l%d" % lookahead, len(result.token_ids), seconds, self.counter.calls,
                   self.counter.positions, mem.peak_mib, marker.first or seconds, prompt_tokens=len(prompts[0]),
                   acceptance_rate=result.acceptance_rate, tokens_per_iteration=result.tokens_per_iteration,
                   marks=marker.close(len(result.token_ids), seconds), token_ids=list(result.token_ids),
                   forward_lengths=result.forward_lengths)

    def forward_latency(self, length: int) -> tuple[float, float]:
        """(seconds, peak MiB) of one no-cache forward over ``length`` positions, all logits returned (the naive path)."""
        g = torch.Generator().manual_seed(length)
        ids = torch.randint(3, self.vocab, (1, length), generator=g).to(self.device)
        with MemoryMeter(self.device) as mem, torch.inference_mode():
            start = now(self.device)
            self.model(input_ids=ids)
            seconds = now(self.device) - start
        return seconds, mem.peak_mib


# -- summaries -------------------------------------------------------------------------------------------


def summarise(runs: list[Run], base_tps: float | None) -> dict[str, Any]:
    tokens = sum(r.tokens for r in runs)
    seconds = sum(r.seconds for r in runs)
    tps = tokens / seconds
    out: dict[str, Any] = {
        "tokens_per_s": round(tps, 3),
        "speed_ratio_vs_generate": round(tps / base_tps, 4) if base_tps else None,
        "forward_calls_per_token": round(sum(r.calls for r in runs) / tokens, 4),
        "positions_per_token": round(sum(r.positions for r in runs) / tokens, 3),
        "rows_per_forward": round(sum(r.rows for r in runs) / max(1, sum(r.calls for r in runs)), 3),
        "repeated_ngram_share": round(statistics.fmean(loop_report(r.token_ids)["repeated_ngram_share"]
                                                       for r in runs), 4),
        "looping_runs": sum(loop_report(r.token_ids)["looping"] for r in runs),
        "acceptance_rate": None,
        "tokens_per_iteration": None,
        "peak_mib": round(max(r.peak_mib for r in runs), 1),
        "runs": len(runs),
        "seconds": [round(r.seconds, 3) for r in runs],
    }
    if runs[0].acceptance_rate is not None:
        out["acceptance_rate"] = round(statistics.fmean(r.acceptance_rate or 0.0 for r in runs), 4)
        out["tokens_per_iteration"] = round(statistics.fmean(r.tokens_per_iteration or 0.0 for r in runs), 3)
    return out


def fit_latency(grid: list[dict[str, float]]) -> list[float]:
    """Least-squares fit of t(L) = a + b L + c L^2 with relative weights; coefficients clipped at zero."""
    L = np.array([p["length"] for p in grid], dtype=float)
    t = np.array([p["seconds"] for p in grid], dtype=float)
    w = 1 / t
    for cols in ([np.ones_like(L), L, L**2], [np.ones_like(L), L]):
        if len(L) < len(cols):
            continue
        A = np.stack(cols, axis=1) * w[:, None]
        coef, *_ = np.linalg.lstsq(A, t * w, rcond=None)
        if (coef >= 0).all():
            return [float(x) for x in coef] + [0.0] * (3 - len(coef))
    return [0.0, float(np.median(t / L)), 0.0]


def latency(coef: list[float], length: float) -> float:
    return coef[0] + coef[1] * length + coef[2] * length**2


def naive_curve(gen: Any, prompt_lengths: list[int], n: int, lookahead: int, coef: list[float]) -> list[tuple]:
    """Estimated (tokens, seconds, calls, positions) after every iteration of the naive path, from the engine's history."""
    emitted_before, drafted = engine_history(gen, n, lookahead, len(prompt_lengths))
    curve, seconds, calls, positions = [], 0.0, 0, 0
    for k, lengths in enumerate(iteration_schedule(prompt_lengths, emitted_before, drafted)):
        seconds += sum(latency(coef, L) for L in lengths)
        calls += len(lengths)
        positions += sum(lengths)
        after = emitted_before[k + 1] if k + 1 < len(emitted_before) else n
        curve.append((after, seconds, calls, positions))
    return curve


def curve_at(curve: list[tuple], n: int) -> tuple:
    for point in curve:
        if point[0] >= n:
            return point
    return curve[-1]


def point(n: int, mark: tuple, measured: bool, **extra: Any) -> dict[str, Any]:
    """Costs at ``n`` new tokens from a mark (tokens, seconds, calls, positions) taken when >= n had been emitted.

    Persona-judge emits tokens in chunks, so the mark may lie a few tokens past ``n``: the per-token figures
    divide by the tokens actually emitted at the mark (``at_tokens``).
    """
    tokens, seconds, calls, positions = mark
    return {
        "new_tokens": n,
        "at_tokens": tokens,
        "seconds": round(seconds * n / tokens, 4),
        "tokens_per_s": round(tokens / seconds, 4) if seconds else None,
        "forward_calls_per_token": round(calls / tokens, 4),
        "positions_per_token": round(positions / tokens, 3),
        "measured": measured,
        **extra,
    }


def cached_reload_seconds(runs: int = 3) -> dict[str, Any]:
    """A cached reload of the embedded model in fresh processes: the median of ``runs`` processes.

    ``load_model``: the first ``load_model()`` of a process, which also imports transformers' model code;
    ``load_model_again``: a second one in the same process (reading the checkpoint, no imports);
    ``process_with_imports``: python start, ``import torch`` and all of the above but the second load.
    The conversion is made first (outside the timing) if this environment has none yet.
    """
    from langchain_persona_judge.runtime import resolve_model_path

    resolve_model_path(None)
    code = (
        "import time; t0 = time.perf_counter();"
        "from langchain_persona_judge import load_model; t1 = time.perf_counter();"
        "load_model(device='cpu', backend='transformers'); t2 = time.perf_counter();"
        "load_model(device='cpu', backend='transformers'); t3 = time.perf_counter();"
        "print(t2 - t1, t3 - t2, t2 - t0)"
    )
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        samples.append([float(x) for x in out.split()[-3:]])
    first, again, total = (statistics.median(column) for column in zip(*samples))
    return {"load_model": round(first, 3), "load_model_again": round(again, 3),
            "process_with_imports": round(total, 3), "runs": runs,
            "load_model_each": [round(s[0], 3) for s in samples]}


# -- the run ----------------------------------------------------------------------------------------------


def setting_name(lookahead: int, sample: bool, schedule: str = "speculative", draft_confidence: float = 0.0) -> str:
    """persona_judge_greedy_l4, persona_judge_greedy_l4_lockstep, persona_judge_greedy_l4_dc0.5, ..."""
    name = f"persona_judge_{'sample' if sample else 'greedy'}_l{lookahead}"
    if schedule != "speculative":
        name += f"_{schedule}"
    if draft_confidence:
        name += f"_dc{draft_confidence:g}"
    return name


SUITE = dict(lookahead=[1, 2, 4, 8], draft_confidence=[0.5], schedule=list(SCHEDULES), sampling=True, questions=2, repeats=1, max_new_tokens=128,
             rules=["product", "guidance"], guidance=[2.0], length_rules=False,
             sections=["main", "lengths", "prompts"], lengths=[64, 256, 512, 1024], naive_max=64,
             prompt_lengths=[256, 1024], prompt_new_tokens=32)
QUICK = dict(lookahead=[2, 4], draft_confidence=[0.5], schedule=list(SCHEDULES), sampling=True, questions=1, repeats=1, max_new_tokens=16,
             rules=["product", "guidance"], guidance=[2.0], length_rules=True,
             sections=["main", "lengths", "prompts"], lengths=[8, 16, 32], naive_max=16,
             prompt_lengths=[64, 160], prompt_new_tokens=8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="all sections at the sizes `make bench` uses")
    parser.add_argument("--quick", action="store_true", help="all sections at tiny sizes (a smoke test)")
    parser.add_argument("--sections", nargs="+", choices=["main", "lengths", "prompts"], default=None)
    parser.add_argument("--model", default=None, help="model id/path/.gguf (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--random-init", default=None, metavar="ARCH",
                        help="randomly initialised stand-in of a real shape: smollm2-135m or llama-3.2-1b "
                             "(default on cuda without --model: llama-3.2-1b)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    parser.add_argument("--lookahead", type=int, nargs="+", default=None, help="λ values (default 4)")
    parser.add_argument("--draft-confidence", type=float, nargs="*", default=None, metavar="C",
                        help="main section: also run greedy Persona-judge at each λ >= 4 of --lookahead with the engine's "
                             "draft_confidence=C (stop drafting after a draft the drafter gives less than C; "
                             "default 0.5, ChatPersonaJudge's default; pass no value for none)")
    parser.add_argument("--schedule", nargs="+", choices=list(SCHEDULES), default=None,
                        help="engine schedules to run (default both): speculative (the paper's: λ drafter forwards, "
                             "then one judge forward) and lockstep (every persona in one batched forward per token)")
    parser.add_argument("--rules", nargs="*", choices=["product", "guidance"], default=None,
                        help="main section: also run the weighted product and/or guided rules (greedy, one batched "
                             "forward per token; --suite: both)")
    parser.add_argument("--guidance", type=float, nargs="+", default=None, metavar="γ",
                        help="guidance strengths for --rules guidance (default 2)")
    parser.add_argument("--length-rules", action="store_true", default=None,
                        help="lengths section: also decode the product and guided Persona-judge (first γ) to "
                             "max(--lengths) tokens")
    parser.add_argument("--prepack", choices=["auto", "on", "off"], default="auto",
                        help="oneDNN-packed linear weights (load_model's prepack; auto: on for fp32 CPU models)")
    parser.add_argument("--sampling", action="store_true", default=None,
                        help="also run Persona-judge with sampling (temperature 0.7, top-p 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="main section (default 128)")
    parser.add_argument("--repeats", type=int, default=None, help="main section (default 2)")
    parser.add_argument("--questions", type=int, default=None, help=f"main section, up to {len(QUESTIONS)} (default 3)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="lengths section (default 64 256 512 1024)")
    parser.add_argument("--naive-max", type=int, default=None,
                        help="measure the naive paper path up to this many new tokens; estimate beyond (default 64)")
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=None,
                        help="prompts section (default 256 1024; the embedded model's context is 8192)")
    parser.add_argument("--prompt-new-tokens", type=int, default=None, help="prompts section (default 32)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/speed.json)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else SUITE if args.suite else dict(
        lookahead=[4], draft_confidence=[0.5], schedule=list(SCHEDULES), sampling=False, questions=3, repeats=2, max_new_tokens=128, sections=["main"],
        rules=[], guidance=[2.0], length_rules=False,
        lengths=[64, 256, 512, 1024], naive_max=64, prompt_lengths=[256, 1024], prompt_new_tokens=32)
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.random_init is None and args.model is None and args.device.startswith("cuda"):
        args.random_init = "llama-3.2-1b"
    if args.out is None:
        args.out = RESULTS / ("speed_quick.json" if args.quick else "speed.json")
    return args


Step = tuple[str, Callable[[], None]]


@dataclass
class Results:
    """What the timed steps fill in, per section, and the naive path's latency grid."""

    main: list[Run] = field(default_factory=list)
    lengths: dict[str, Run] = field(default_factory=dict)
    prompts: dict[int, dict[str, Run]] = field(default_factory=dict)
    grid: list[dict[str, float]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--backend" in argv:  # every rule on each backend, side by side: benchmarks/backends.py
        from benchmarks import backends

        return backends.main(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here.")
    started = time.perf_counter()
    reload = cached_reload_seconds() if (args.model is None and args.random_init is None and
                                         "main" in args.sections and args.device == "cpu") else None
    prepack = {"auto": None, "on": True, "off": False}[args.prepack]
    bm = load_bench_model(args.model, args.device, args.random_init, args.dtype, prepack)
    bench = Bench(bm, args.device)
    results = Results()
    run_steps(plan_steps(bench, args, results))
    report = build_report(bench, args, results, reload)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_results(args.out, report, module="benchmarks.speed", argv=argv, backend="transformers",
                  device=args.device, threads=args.threads, default=_json_default)
    print_report(report)
    print(f"\nwritten to {args.out} ({report['elapsed_s']:.0f} s)")
    return report


# -- planning: every timed run is a step, the warm-up first ---------------------------------------------


def lengths_lookahead(args: argparse.Namespace) -> int:
    """The λ of the lengths and prompts sections: 4 if it is among --lookahead, else the first one."""
    return 4 if 4 in args.lookahead or not args.lookahead else args.lookahead[0]


def plan_steps(bench: Bench, args: argparse.Namespace, results: Results) -> list[Step]:
    """The warm-up, then each requested section's runs, then the latency grid, in the order they run."""
    steps: list[Step] = [("warm-up", lambda: warm_up(bench))]
    if "main" in args.sections:
        steps += main_steps(bench, args, results)
    if "lengths" in args.sections:
        steps += lengths_steps(bench, args, results)
    if "prompts" in args.sections:
        steps += prompts_steps(bench, args, results)
    steps += latency_steps(bench, args, results)
    return steps


def warm_up(bench: Bench) -> None:
    personas, _ = bench.prompts(0)
    bench.generate(personas[0], 4, [4])
    bench.persona_judge(personas, 4, 2, False, [4])
    bench.persona_judge(personas, 4, 2, True, [4])
    bench.persona_judge(personas, 4, 2, False, [4], schedule="lockstep")
    bench.naive(personas, 2, 2, [2])


def rule_settings(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """--rules: the product (greedy) and, per --guidance γ, guided Persona-judge (λ=4, lockstep), the guided
    product and the guided direct prompt: (setting name, engine spec)."""
    out: list[tuple[str, dict[str, Any]]] = []
    lam = 4 if 4 in args.lookahead else max(args.lookahead)
    if "product" in args.rules:
        out.append(("product_greedy", {"prompts": "personas", "combine": "product"}))
    if "guidance" in args.rules:
        for g in args.guidance:
            out.append((f"{setting_name(lam, False, 'lockstep')}_g{g:g}",
                        {"prompts": "personas", "lookahead": lam, "guidance": g}))
            if "product" in args.rules:
                out.append((f"product_greedy_g{g:g}", {"prompts": "personas", "combine": "product", "guidance": g}))
            out.append((f"direct_g{g:g}", {"prompts": "direct", "guidance": g}))
    return out


def main_order(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The main section's settings: (name, None) for generate and direct, else (name, engine spec)."""
    order: list[tuple[str, Any]] = [("generate", None), ("direct", None)]

    def spec(lam: int, sample: bool, conf: float, schedule: str) -> dict[str, Any]:
        return {"prompts": "personas", "lookahead": lam, "sample": sample, "draft_confidence": conf,
                "schedule": schedule}

    for schedule in args.schedule:
        for lam in args.lookahead:
            order.append((setting_name(lam, False, schedule), spec(lam, False, 0.0, schedule)))
    # draft_confidence saves the speculative schedule's wasted drafts (lockstep wastes none), and only with
    # several drafts per iteration: λ = 4 (the headline) and above.
    if "speculative" in args.schedule:
        for lam in [lam for lam in args.lookahead if lam >= 4] or [max(args.lookahead)]:
            for conf in args.draft_confidence:
                order.append((setting_name(lam, False, "speculative", conf), spec(lam, False, conf, "speculative")))
    if args.sampling:
        for lam in args.lookahead:
            order.append((setting_name(lam, True), spec(lam, True, 0.0, "speculative")))
        if "lockstep" in args.schedule:
            lam = 4 if 4 in args.lookahead else max(args.lookahead)
            order.append((setting_name(lam, True, "lockstep"), spec(lam, True, 0.0, "lockstep")))
    order += rule_settings(args)
    # The headline settings (generate, greedy λ=4 under each schedule, the rules) run adjacent.
    headline = {setting_name(4, False, schedule) for schedule in args.schedule} | {n for n, _ in rule_settings(args)}
    order.sort(key=lambda item: 0 if item[0] == "generate" else 1 if item[0] in headline else 2)
    return order


def run_spec(bench: Bench, name: str, spec: dict[str, Any], q: int, n: int, checkpoints: list[int],
             seed: int = 0) -> Run:
    """One engine run of a main-order (or lengths) spec on question ``q``."""
    personas, direct = bench.prompts(q)
    guidance = spec.get("guidance", 1.0)
    return bench.persona_judge(
        personas if spec["prompts"] == "personas" else [direct], n, spec.get("lookahead", 4),
        spec.get("sample", False), checkpoints, seed=seed, setting=name,
        draft_confidence=spec.get("draft_confidence", 0.0),
        schedule=spec.get("schedule", "lockstep"), combine=spec.get("combine", "judge"), guidance=guidance,
        reference=bench.reference(q) if guidance != 1.0 else None)


def main_steps(bench: Bench, args: argparse.Namespace, results: Results) -> list[Step]:
    """Every setting of ``main_order`` per question and repeat, A B ... B A (the order reverses every other time)."""
    n, order, steps = args.max_new_tokens, main_order(args), []
    slot = 0
    for repeat in range(args.repeats):
        for q in range(min(args.questions, len(QUESTIONS))):
            seq = order if slot % 2 == 0 else order[::-1]
            slot += 1
            for name, spec in seq:
                def job(name: str = name, spec: Any = spec, q: int = q, repeat: int = repeat) -> None:
                    personas, direct = bench.prompts(q)
                    if name == "generate":
                        run = bench.generate(personas[0], n, [n])
                    elif name == "direct":
                        run = bench.generate(direct, n, [n], setting="direct")
                    else:
                        run = run_spec(bench, name, spec, q, n, [n], seed=1000 + q + 100 * repeat)
                    run.question, run.repeat = q, repeat
                    results.main.append(run)
                steps.append((f"main {name} q{q} r{repeat}", job))
    return steps


def lengths_steps(bench: Bench, args: argparse.Namespace, results: Results) -> list[Step]:
    """generate, Persona-judge (each schedule) to max(--lengths) tokens, the naive path to --naive-max."""
    lam, top = lengths_lookahead(args), max(args.lengths)
    naive_max = min(args.naive_max, top)
    checkpoints = sorted(set(args.lengths) | {naive_max})

    def length_job(kind: str) -> None:
        personas, _ = bench.prompts(0)
        if kind == "generate":
            results.lengths[kind] = bench.generate(personas[0], top, checkpoints)
        elif kind == "persona_judge":
            results.lengths[kind] = bench.persona_judge(personas, top, lam, False, checkpoints)
        elif kind == "persona_judge_lockstep":
            results.lengths[kind] = bench.persona_judge(personas, top, lam, False, checkpoints, schedule="lockstep")
        elif kind in rules:
            results.lengths[kind] = run_spec(bench, kind, rules[kind], 0, top, checkpoints)
        else:
            results.lengths[kind] = bench.naive(personas, naive_max, lam, checkpoints)

    rules: dict[str, dict[str, Any]] = {}
    if args.length_rules:
        if "product" in args.rules:
            rules["product"] = {"prompts": "personas", "combine": "product"}
        if "guidance" in args.rules and args.guidance:
            rules[f"persona_judge_lockstep_g{args.guidance[0]:g}"] = {"prompts": "personas", "lookahead": lam,
                                                                     "guidance": args.guidance[0]}
    kinds = ["generate", "persona_judge", *rules, "naive_paper"]
    if "lockstep" in args.schedule:
        kinds.insert(2, "persona_judge_lockstep")
    return [(f"lengths {kind} {naive_max if kind == 'naive_paper' else top} tokens",
             lambda kind=kind: length_job(kind)) for kind in kinds]


def prompts_steps(bench: Bench, args: argparse.Namespace, results: Results) -> list[Step]:
    """generate and Persona-judge on a prompt of each --prompt-lengths, --prompt-new-tokens new tokens."""
    lam, m, context = lengths_lookahead(args), args.prompt_new_tokens, bench.context
    steps: list[Step] = []
    for target in args.prompt_lengths:
        if context and target + m > context:
            raise SystemExit(f"--prompt-lengths {target} + {m} new tokens exceed the "
                             f"model's context of {context} tokens.")

        def prompt_job(kind: str, target: int = target) -> None:
            personas, _ = bench.fit_prompt(target)
            runs = results.prompts.setdefault(target, {})
            if kind == "generate":
                runs[kind] = bench.generate(personas[0], m, [m])
            else:
                runs[kind] = bench.persona_judge(personas, m, lam, False, [m])

        for kind in ("generate", "persona_judge"):
            steps.append((f"prompts {kind} {target}", lambda kind=kind, target=target: prompt_job(kind, target)))
    return steps


def latency_steps(bench: Bench, args: argparse.Namespace, results: Results) -> list[Step]:
    """Single no-cache forwards over a grid of lengths, up to the longest sequence any naive estimate needs."""
    need = 0
    if "lengths" in args.sections:
        need = max(need, len(bench.prompts(0)[0][1]) + max(args.lengths) + max(args.lookahead) + 1)
    if "prompts" in args.sections:
        need = max(need, max(args.prompt_lengths) + args.prompt_new_tokens + max(args.lookahead) + 16)
    if not need:
        return []
    points = [x for x in (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if x < need] + [need]
    if bench.context:
        points = [min(p, bench.context) for p in points]
    steps: list[Step] = [("naive latency warm-up", lambda: bench.forward_latency(points[0]))]
    for length in sorted(set(points)):
        def grid_job(length: int = length) -> None:
            seconds, peak = bench.forward_latency(length)
            results.grid.append({"length": length, "seconds": round(seconds, 5), "peak_mib": round(peak, 1)})
        steps.append((f"naive latency L={length}", grid_job))
    return steps


def run_steps(steps: list[Step]) -> None:
    from tqdm import tqdm

    bar = tqdm(steps, desc="speed", unit="run", file=sys.stderr, dynamic_ncols=True)
    for label, job in bar:
        bar.set_postfix_str(label)
        job()
    bar.close()


# -- the report: one function per section ---------------------------------------------------------------


def build_report(bench: Bench, args: argparse.Namespace, results: Results, reload: dict[str, Any] | None
                 ) -> dict[str, Any]:
    """The JSON report (all but ``elapsed_s``): the header, then each section that ran, then the criteria."""
    bm = bench.bm
    report: dict[str, Any] = {
        "benchmark": "speed",
        "machine": {**machine_info(args.device, args.threads), "prepacked_linear_weights": is_prepacked(bm.model)},
        "model": bm.description,
        "random_weights": bm.random_weights,
        "context_limit": bench.context,
        "preferences": PREFERENCES,
        "sampling": SAMPLING,
        "notes": [],
    }
    if bm.random_weights:
        report["notes"].append("Weights are random (a real architecture's shape): see 'model'.")
    if reload is not None:
        report["cached_reload_s"] = reload
    if results.main:
        report["main"] = main_section(bench, args, results.main)
    coef = fit_latency(results.grid) if results.grid else None
    if results.grid:
        report["naive_latency"] = {"grid": sorted(results.grid, key=lambda p: p["length"]), "fit_a_b_c": coef,
                                   "model": "seconds = a + b*L + c*L^2 for one no-cache forward over L positions"}
    if results.lengths:
        report["lengths"] = lengths_section(bench, args, results, coef)
        if not report["lengths"]["estimate_check"]["same_tokens_as_engine"]:
            report["notes"].append("The naive path's greedy tokens differ from the engine's on the real model "
                                   "(floating-point ties); its estimate uses the engine's schedule.")
    if results.prompts:
        report["prompts"] = prompts_section(bench, args, results, coef)
    report["criteria"] = criteria(report)
    return report


def main_section(bench: Bench, args: argparse.Namespace, runs: list[Run]) -> dict[str, Any]:
    """Per setting: the pooled summary, and the min-max of its ratio to generate over (question, repeat) pairs."""
    names = list(dict.fromkeys(r.setting for r in runs))
    names.sort(key=lambda s: (0 if s == "generate" else 1 if s == "direct" else 2, s))
    base = summarise([r for r in runs if r.setting == "generate"], None)["tokens_per_s"]
    settings = {}
    for name in names:
        mine = [r for r in runs if r.setting == name]
        summary = summarise(mine, base)
        # Per (question, repeat) pair ratio, to show the spread the mean hides.
        pair = [r2.tokens / r2.seconds / (r1.tokens / r1.seconds)
                for r2 in mine for r1 in runs
                if r1.setting == "generate" and (r1.question, r1.repeat) == (r2.question, r2.repeat)]
        summary["pair_ratio_min_max"] = [round(min(pair), 3), round(max(pair), 3)]
        settings[name] = summary
    return {
        "max_new_tokens": args.max_new_tokens, "questions": QUESTIONS[: args.questions], "repeats": args.repeats,
        "lookahead": args.lookahead, "rules": args.rules, "guidance": args.guidance,
        "runs": [{"setting": r.setting, "question": r.question, "repeat": r.repeat, "tokens": r.tokens,
                  "seconds": round(r.seconds, 3), "loop": loop_report(r.token_ids), "token_ids": r.token_ids}
                 for r in runs],
        "kv_cache_mib_per_sequence": round(kv_cache_mib(bench.model, args.max_new_tokens + 64), 2),
        "settings": settings,
    }


def naive_peak(grid: list[dict[str, float]], length: int) -> float | None:
    """The naive path's peak memory at ``length`` positions: interpolated on the grid, extrapolated past it."""
    if not grid:
        return None
    g = sorted(grid, key=lambda p: p["length"])
    xs, ys = [p["length"] for p in g], [p["peak_mib"] for p in g]
    if length <= xs[-1] or len(xs) < 2:
        return round(float(np.interp(length, xs, ys)), 1)
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return round(ys[-1] + slope * (length - xs[-1]), 1)


def lengths_section(bench: Bench, args: argparse.Namespace, results: Results, coef: list[float] | None
                    ) -> dict[str, Any]:
    """Cost at each --lengths checkpoint per path (the naive one estimated past what was measured)."""
    lam, runs = lengths_lookahead(args), results.lengths
    pj_run, nv_run = runs["persona_judge"], runs["naive_paper"]
    personas, _ = bench.prompts(0)
    plens = [len(p) for p in personas]
    curve = naive_curve(pj_run.generation, plens, max(args.lengths), lam, coef)
    ours = {key: run for key, run in runs.items() if key != "naive_paper"}
    series: dict[str, list[dict[str, Any]]] = {key: [] for key in [*ours, "naive_paper"]}
    previous = 0
    for n in sorted(args.lengths):
        for key, run in ours.items():
            # What had been decoded by then: a loop in the stretch since the previous checkpoint shows here.
            loop = loop_report(run.token_ids[:n], window=n - previous)
            series[key].append(point(n, run.at(n), True, repeated_ngram_share=loop["repeated_ngram_share"],
                                     window_repeated_ngram_share=loop["tail_repeated_ngram_share"],
                                     looping=loop["looping"]))
        previous = n
        if n <= nv_run.tokens:
            series["naive_paper"].append(point(n, nv_run.at(n), True, peak_mib=round(nv_run.peak_mib, 1)))
        else:
            series["naive_paper"].append(point(n, curve_at(curve, n), False,
                                               peak_mib=naive_peak(results.grid, max(plens) + n)))
    for key, run in ours.items():
        series[key][-1]["peak_mib"] = round(run.peak_mib, 1)
    return {
        "lookahead": lam, "question": QUESTIONS[0], "prompt_tokens": plens, "series": series,
        "naive_measured_up_to": nv_run.tokens, "estimate_check": estimate_check(nv_run, pj_run, coef),
        "token_ids": {key: run.token_ids for key, run in ours.items()},
        "rows_per_forward": {key: round(run.rows / max(1, run.calls), 3) for key, run in runs.items()},
        "curves": {**{key: run.marks for key, run in ours.items()}, "naive_paper_measured": nv_run.marks,
                   "naive_paper_estimated": [(t, round(s, 4), c, p) for t, s, c, p in curve]},
        "note": ("generate and Persona-judge (persona_judge: the paper's speculative schedule; persona_judge_lockstep: "
                 "the lockstep schedule; product and persona_judge_lockstep_gγ with --length-rules) decode "
                 "max(lengths) tokens once, greedy, EOS ignored; the cost at a shorter length is the "
                 "time and forward count when that many tokens had been emitted. The naive paper path is measured "
                 f"up to {nv_run.tokens} new tokens and estimated beyond from the single-forward latency fit. "
                 "window_repeated_ngram_share: the share of the 4-grams since the previous checkpoint already seen "
                 "earlier in the answer; looping: at least half (the answer had fallen into a loop)."),
    }


def estimate_check(nv_run: Run, pj_run: Run, coef: list[float] | None) -> dict[str, Any]:
    """The latency model, checked on the measured naive run's own forwards."""
    est_s = sum(latency(coef, L) for L in nv_run.forward_lengths)
    return {"new_tokens": nv_run.tokens, "measured_s": round(nv_run.seconds, 3), "estimated_s": round(est_s, 3),
            "estimate_over_measured": round(est_s / nv_run.seconds, 3), "forward_calls": nv_run.calls,
            "same_tokens_as_engine": nv_run.token_ids == pj_run.token_ids[: nv_run.tokens]}


def prompts_section(bench: Bench, args: argparse.Namespace, results: Results, coef: list[float] | None
                    ) -> dict[str, Any]:
    """One row per prompt length: generate, Persona-judge and the (estimated) naive path."""
    rows = [prompt_row(bench, args, results.grid, target, runs, coef)
            for target, runs in sorted(results.prompts.items())]
    return {"lookahead": lengths_lookahead(args), "new_tokens": args.prompt_new_tokens, "rows": rows,
            "note": ("seconds include reading the prompt (prefill); positions_per_token_beyond_prompts "
                     "leaves out one read of each persona's prompt; the naive paper path is estimated")}


def prompt_row(bench: Bench, args: argparse.Namespace, grid: list[dict[str, float]], target: int,
               runs: dict[str, Run], coef: list[float] | None) -> dict[str, Any]:
    gen_run, pj_run = runs["generate"], runs["persona_judge"]
    m = args.prompt_new_tokens
    personas, _ = bench.fit_prompt(target)
    plens = [len(p) for p in personas]
    curve = naive_curve(pj_run.generation, plens, m, lengths_lookahead(args), coef)
    row: dict[str, Any] = {"prompt_tokens": plens[0]}
    for key, mark, prompts_read, extra in (
        ("generate", gen_run.marks[-1], plens[0],
         {"first_token_s": round(gen_run.first_token_s, 4), "peak_mib": round(gen_run.peak_mib, 1)}),
        ("persona_judge", pj_run.marks[-1], sum(plens),
         {"first_token_s": round(pj_run.first_token_s, 4), "peak_mib": round(pj_run.peak_mib, 1),
          "acceptance_rate": round(pj_run.acceptance_rate or 0, 4)}),
        ("naive_paper", curve[-1], sum(plens), {"peak_mib": naive_peak(grid, max(plens) + m)}),
    ):
        entry = point(m, mark, key != "naive_paper", **extra)
        # Work per token once every prompt has been read once: flat with a KV cache, ~P per forward without.
        entry["positions_per_token_beyond_prompts"] = round((mark[3] - prompts_read) / mark[0], 3)
        row[key] = entry
    return row


def _json_default(value: Any) -> Any:
    if isinstance(value, Run):
        return {f.name: getattr(value, f.name) for f in fields(value) if f.name != "generation"}
    raise TypeError(f"cannot serialise {type(value).__name__}")


def criteria(report: dict[str, Any]) -> dict[str, Any]:
    """The issues' acceptance figures, where this run measured them.

    Issue 5: greedy λ=4 at ≥ 0.8× generate's tokens/s, and ≥ 5× the naive paper path at 512 new tokens.
    Issue 2: greedy λ=4 at ≤ 1.25 forward calls per token and ≤ 1.35× generate's wall time.
    Each for both schedules at the paper's fixed λ=4, and for each draft_confidence setting (λ=4 is then the
    most drafts per iteration).
    """
    out: dict[str, Any] = {}
    settings = report.get("main", {}).get("settings", {})
    for name, s in settings.items():
        if not re.fullmatch(r"persona_judge_greedy_l4(_lockstep)?(_dc[\d.]+)?", name):
            continue
        tag = name.removeprefix("persona_judge_")
        ratio = s["speed_ratio_vs_generate"]
        out[f"{tag}_speed_vs_generate"] = {"value": ratio, "target": ">= 0.8", "met": ratio >= 0.8}
        out[f"{tag}_time_vs_generate"] = {"value": round(1 / ratio, 3), "target": "<= 1.35", "met": 1 / ratio <= 1.35}
        fwd = s["forward_calls_per_token"]
        out[f"{tag}_forward_calls_per_token"] = {"value": fwd, "target": "<= 1.25", "met": fwd <= 1.25}
    lengths = report.get("lengths")
    if lengths and lengths["lookahead"] == 4:
        for key in ("persona_judge", "persona_judge_lockstep"):
            for ours, naive in zip(lengths["series"].get(key, []), lengths["series"]["naive_paper"]):
                if ours["new_tokens"] == 512:
                    ratio = naive["seconds"] / ours["seconds"]
                    tag = "greedy_l4" + key.removeprefix("persona_judge")
                    out[f"{tag}_vs_naive_at_512"] = {"value": round(ratio, 2), "target": ">= 5", "met": ratio >= 5.0,
                                                     "naive_measured": naive["measured"]}
    if "cached_reload_s" in report:
        seconds = report["cached_reload_s"]["load_model"]
        out["cached_reload_s"] = {"value": seconds, "target": "< 5", "met": seconds < 5}
    return out


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nmodel: {report['model']}")
    print(f"machine: {m['cpu']}, {m['cpu_cores']} cores, torch threads {m['torch_threads']}, device {m['device']}"
          + (f" ({m['gpu']})" if m.get("gpu") else "") + f", load average at the end {m.get('load_average')}")
    for note in report["notes"]:
        print(f"NOTE: {note}")
    if "cached_reload_s" in report:
        r = report["cached_reload_s"]
        print(f"cached reload (median of {r.get('runs', 1)} fresh processes): load_model {r['load_model']:.2f} s, "
              f"{r['process_with_imports']:.2f} s with python start and import torch; "
              f"a second load_model in the same process {r.get('load_model_again', float('nan')):.2f} s")
    if "main" in report:
        sec = report["main"]
        print(f"\n[main] {sec['max_new_tokens']} new tokens, {len(sec['questions'])} questions x {sec['repeats']} repeats")
        print(f"{'setting':38} {'tok/s':>7} {'vs generate':>11} {'(pair min-max)':>15} {'fwd/tok':>8} {'rows/fwd':>8} "
              f"{'pos/tok':>8} {'accept':>7} {'tok/iter':>8} {'peak MiB':>9} {'rep 4-gr':>8} {'loops':>5}")
        for name, s in sec["settings"].items():
            acc = f"{s['acceptance_rate']:.1%}" if s["acceptance_rate"] is not None else "-"
            tpi = f"{s['tokens_per_iteration']:.2f}" if s["tokens_per_iteration"] is not None else "-"
            lo, hi = s["pair_ratio_min_max"]
            print(f"{name:38} {s['tokens_per_s']:7.2f} {s['speed_ratio_vs_generate']:10.3f}x "
                  f"{f'{lo:.2f}-{hi:.2f}':>15} "
                  f"{s['forward_calls_per_token']:8.3f} {s['rows_per_forward']:8.2f} {s['positions_per_token']:8.2f} "
                  f"{acc:>7} {tpi:>8} {s['peak_mib']:9.1f} {s['repeated_ngram_share']:8.0%} {s['looping_runs']:5d}")
    if "lengths" in report:
        sec = report["lengths"]
        print(f"\n[lengths] greedy λ={sec['lookahead']}, prompt {sec['prompt_tokens']} tokens; "
              f"naive measured up to {sec['naive_measured_up_to']} tokens, * = estimated")
        lock = sec["series"].get("persona_judge_lockstep") or [None] * len(sec["series"]["generate"])
        print(f"{'new tokens':>10} {'generate tok/s':>15} {'ours tok/s':>11} {'lockstep':>9} {'naive tok/s':>12} "
              f"{'ours/naive':>11} {'pos/tok gen':>12} {'pos/tok ours':>13} {'pos/tok naive':>14}")
        for g, o, lk, nv in zip(*(sec["series"][k] for k in ("generate", "persona_judge")), lock,
                                sec["series"]["naive_paper"]):
            star = "" if nv["measured"] else "*"
            lk_tps = f"{lk['tokens_per_s']:9.2f}" if lk else f"{'-':>9}"
            print(f"{g['new_tokens']:10d} {g['tokens_per_s']:15.2f} {o['tokens_per_s']:11.2f} {lk_tps} "
                  f"{format(nv['tokens_per_s'], '.3f') + star:>12} {nv['seconds'] / o['seconds']:10.1f}x "
                  f"{g['positions_per_token']:12.2f} {o['positions_per_token']:13.2f} {nv['positions_per_token']:14.1f}")
        for key, pts in sec["series"].items():
            if key == "naive_paper":
                continue
            print(f"  {key:34} tok/s " + "  ".join(f"{p['new_tokens']}: {p['tokens_per_s']:.1f}" for p in pts)
                  + " | repeated 4-grams since the previous checkpoint "
                  + "  ".join(f"{p['window_repeated_ngram_share']:.0%}{' LOOP' if p['looping'] else ''}" for p in pts))
        c = sec["estimate_check"]
        print(f"naive estimate check at {c['new_tokens']} tokens: estimated {c['estimated_s']:.1f} s, measured "
              f"{c['measured_s']:.1f} s (x{c['estimate_over_measured']:.2f}); same tokens as the engine: "
              f"{c['same_tokens_as_engine']}")
    if "prompts" in report:
        sec = report["prompts"]
        print(f"\n[prompts] greedy λ={sec['lookahead']}, {sec['new_tokens']} new tokens, seconds incl. prefill, * = estimated")
        print(f"{'prompt':>7} {'generate s':>11} {'ours s':>9} {'naive s':>10} {'ours/gen':>9} {'naive/ours':>11} "
              f"{'extra pos/tok gen':>18} {'ours':>6} {'naive':>7}")
        for row in sec["rows"]:
            g, o, nv = row["generate"], row["persona_judge"], row["naive_paper"]
            print(f"{row['prompt_tokens']:7d} {g['seconds']:11.2f} {o['seconds']:9.2f} {format(nv['seconds'], '.1f') + '*':>10} "
                  f"{o['seconds'] / g['seconds']:8.2f}x {nv['seconds'] / o['seconds']:10.1f}x "
                  f"{g['positions_per_token_beyond_prompts']:18.2f} {o['positions_per_token_beyond_prompts']:6.2f} "
                  f"{nv['positions_per_token_beyond_prompts']:7.1f}")
        print("(extra pos/tok: token positions fed per emitted token beyond one read of each prompt)")
    if report["criteria"]:
        print("\nissue targets:")
        for name, c in report["criteria"].items():
            extra = "" if c.get("naive_measured", True) else " (naive estimated)"
            print(f"  {name}: {c['value']:.3g} (target {c['target']}) {'met' if c['met'] else 'NOT met'}{extra}")


if __name__ == "__main__":
    main()
