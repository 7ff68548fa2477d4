"""Per-token cost of grammar-constrained Persona-judge decoding on the embedded model, and xgrammar vs llguidance.

    .venv/bin/python -m benchmarks.constrained            # both sections
    .venv/bin/python -m benchmarks.constrained --quick    # a smoke run
    .venv/bin/python -m benchmarks.constrained --sections engines   # xgrammar vs llguidance only

Run it from the repository root, as a module. How long each takes, and the figures: benchmarks/README.md.

Sections:

overhead  Two personas, greedy, λ = 4, on the embedded SmolLM2-135M-Instruct. Each constrained run has an
          unconstrained twin: the same persona prompts (system text included), decoding exactly as many tokens
          with EOS ignored, run back to back (the order alternates), so the ratio is the grammar's cost alone:
          ``json``   a JSON grammar that cannot end within --tokens tokens (an array of at least 1000 strings),
                     mask only (no budget guard);
          ``schema`` a real structured answer: a Person schema, budget guard on (max_tokens=--tokens), ending
                     at EOS when the JSON is complete;
          ``tools``  a forced call of one of three tools (structural tag, tool_choice="any"), guard on.
          Reported per setting: ms per emitted token constrained and free, their ratio, the same per forward
          pass, and the time spent inside the grammar (mask, advance, rollback, budget guard; timed directly)
          per token. The texts differ (the grammar changes what is written), so acceptance rates and forwards
          per token differ a little; the direct grammar time does not depend on that.
engines   xgrammar and llguidance on the same JSON schema and the same 34-token answer (SmolLM2 tokenizer):
          tokenizer set-up, compile, and mask time per token (fill + accept): what grammar.py's choice of
          engine rests on.
          llguidance is optional (skipped when not installed).

Results: benchmarks/results/constrained.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import LOOKAHEAD, RESULTS, write_results
from langchain_persona_judge import decoding as engine
from langchain_persona_judge import shared_model
from langchain_persona_judge.grammar import Grammar, GrammarConstraint, constraint_for
from langchain_persona_judge.personas import persona_messages
from langchain_persona_judge.runtime import encode_chat
from langchain_persona_judge.output_spec import OutputSpec
from langchain_persona_judge.tool_rendering import render_conversation
from langchain_persona_judge.tools import convert_tool

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]
QUESTIONS = [
    "Name some fruits and say what colour they are.",
    "Who lives in the city of Lyon? Describe two people.",
    "What is 12 times 7, and what is 365 minus 42?",
    "List a few things to pack for a beach holiday.",
]
PERSON = {
    "title": "Person", "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
                   "hobbies": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "city", "hobbies"],
}
ENDLESS = {"type": "array", "items": {"type": "string"}, "minItems": 1000}
TOOLS = [
    {"type": "function", "function": {"name": "calculator", "description": "Compute a op b.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "op": {"enum": ["+", "-", "*", "/"]},
                                         "b": {"type": "number"}}, "required": ["a", "op", "b"]}}},
    {"type": "function", "function": {"name": "get_weather", "description": "Today's weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web.", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]


class TimedConstraint:
    """Wraps a GrammarConstraint and adds up the time spent in it."""

    def __init__(self, inner: GrammarConstraint) -> None:
        self.inner = inner
        self.seconds = 0.0

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def allowed(self) -> torch.Tensor:
        return self._timed(self.inner.allowed)

    def advance(self, token_id: int) -> None:
        self._timed(self.inner.advance, token_id)

    def rollback(self, count: int) -> None:
        self._timed(self.inner.rollback, count)


def _prompts(tokenizer: Any, question: str, spec: OutputSpec | None) -> list[torch.Tensor]:
    conversation, kwargs = render_conversation(tokenizer, [{"role": "user", "content": question}], spec)
    return [encode_chat(tokenizer, persona_messages(conversation, [p]), **kwargs) for p in PREFERENCES]


def _decode(model: Any, prompts: list[torch.Tensor], constraint: TimedConstraint | None,
            **options: Any) -> dict[str, Any]:
    start = time.perf_counter()
    generation = engine.generate(model, prompts, constraint=constraint, lookahead=4, do_sample=False, **options)
    return {
        "tokens": len(generation.token_ids), "seconds": time.perf_counter() - start,
        "forwards": generation.stats.forward_calls, "acceptance_rate": generation.stats.acceptance_rate,
        "grammar_seconds": constraint.seconds if constraint else 0.0,
        "forced": constraint.inner.forced if constraint else 0,
        "ids": generation.token_ids,
    }


def _pair(model: Any, tokenizer: Any, setting: str, question: str, tokens: int, twin_first: bool) -> dict[str, Any]:
    """One constrained run and its unconstrained twin (same prompts, same number of tokens, EOS ignored)."""
    if setting == "json":
        spec = OutputSpec(response_format={"type": "json_schema", "json_schema": {"schema": ENDLESS}})
        grammar, budget, eos = Grammar.json_schema(ENDLESS), None, []  # cannot end: never asks for EOS
    elif setting == "schema":
        spec = OutputSpec(response_format={"type": "json_schema", "json_schema": {"schema": PERSON}})
        grammar, budget, eos = spec.grammar(), tokens, None
    else:
        spec = OutputSpec(tools=[convert_tool(t) for t in TOOLS], tool_choice="required")
        grammar, budget, eos = spec.grammar(), tokens, None
    prompts = _prompts(tokenizer, question, spec)

    def constrained() -> dict[str, Any]:
        constraint = TimedConstraint(constraint_for(tokenizer, grammar, vocab_size=model.vocab_size,
                                                    stop_token_ids=model.eos_token_ids, budget=budget))
        return _decode(model, prompts, constraint, max_new_tokens=tokens, eos_token_id=eos)

    if twin_first and setting == "json":
        free = _decode(model, prompts, None, max_new_tokens=tokens, eos_token_id=[])
        run = constrained()
    else:  # the twin's length is the constrained run's
        run = constrained()
        free = _decode(model, prompts, None, max_new_tokens=max(run["tokens"], 1), eos_token_id=[])
    text = tokenizer.decode(run.pop("ids"))
    free.pop("ids")
    return {"setting": setting, "question": question, "constrained": run, "free": free, "text": text[:160]}


def overhead(model: Any, tokenizer: Any, questions: list[str], tokens: int) -> dict[str, Any]:
    settings = ["json", "schema", "tools"]
    pairs: list[dict[str, Any]] = []
    _pair(model, tokenizer, "json", questions[0], 8, False)  # warm-up: compile caches, tokenizer info, kernels
    _pair(model, tokenizer, "tools", questions[0], 48, False)
    for i, question in enumerate(questions):
        for setting in settings if i % 2 == 0 else settings[::-1]:
            pair = _pair(model, tokenizer, setting, question, tokens, twin_first=i % 2 == 1)
            pairs.append(pair)
            c, f = pair["constrained"], pair["free"]
            print(f"  {setting:7s} {c['tokens']:4d} tok {c['seconds']:6.2f} s (free {f['seconds']:6.2f} s)  "
                  f"{pair['text'][:60]!r}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for setting in settings:
        mine = [p for p in pairs if p["setting"] == setting]
        row: dict[str, Any] = {}
        for kind in ("constrained", "free"):
            runs = [p[kind] for p in mine]
            n_tokens = sum(r["tokens"] for r in runs)
            seconds = sum(r["seconds"] for r in runs)
            row[kind] = {
                "tokens": n_tokens,
                "ms_per_token": 1000 * seconds / n_tokens,
                "ms_per_forward": 1000 * seconds / sum(r["forwards"] for r in runs),
                "acceptance_rate": statistics.mean(r["acceptance_rate"] for r in runs),
            }
            if kind == "constrained":
                grammar = sum(r["grammar_seconds"] for r in runs)
                row["grammar_ms_per_token"] = 1000 * grammar / n_tokens
                row["grammar_share"] = grammar / seconds
                row["forced_positions"] = sum(r["forced"] for r in runs)
        row["ratio_per_token"] = row["constrained"]["ms_per_token"] / row["free"]["ms_per_token"]
        row["ratio_per_forward"] = row["constrained"]["ms_per_forward"] / row["free"]["ms_per_forward"]
        summary[setting] = row
    return {"summary": summary, "pairs": pairs}


def engines(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"},
                                                "rating": {"type": "integer"}},
              "required": ["setup", "punchline", "rating"]}
    text = '{"setup": "Why did the cat sit on the computer?", "punchline": "To keep an eye on the mouse!", "rating": 7}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    out: dict[str, Any] = {"answer_tokens": len(ids)}

    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id])
    setup = time.perf_counter() - start
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
    compile_s = time.perf_counter() - start
    masks = []
    for _ in range(5):
        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        for token in ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            assert matcher.accept_token(token)
            masks.append(time.perf_counter() - start)
    out["xgrammar"] = {"version": version("xgrammar"), "tokenizer_setup_s": setup, "compile_s": compile_s,
                       "mask_us_mean": 1e6 * statistics.mean(masks), "mask_us_max": 1e6 * max(masks)}
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lltorch
    except ImportError:
        out["llguidance"] = None
        return out
    start = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    )
    llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - start
    masks = []
    for _ in range(5):
        matcher = llguidance.LLMatcher(lltok, grammar)
        bitmask = lltorch.allocate_token_bitmask(1, vocab_size)
        for token in ids:
            start = time.perf_counter()
            lltorch.fill_next_token_bitmask(matcher, bitmask, 0)
            assert matcher.consume_token(token), matcher.get_error()
            masks.append(time.perf_counter() - start)
    out["llguidance"] = {"version": version("llguidance"), "tokenizer_setup_s": setup, "compile_s": compile_s,
                         "mask_us_mean": 1e6 * statistics.mean(masks), "mask_us_max": 1e6 * max(masks)}
    return out


@contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run (the budget of schema/tools)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on shared cores)")
    parser.add_argument("--sections", nargs="+", default=["overhead", "engines"], choices=["overhead", "engines"])
    parser.add_argument("--quick", action="store_true", help="2 questions, 32 tokens")
    parser.add_argument("--out", type=Path, default=RESULTS / "constrained.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.questions = 32, 2
    model = shared_model(None, device="cpu", backend="transformers")
    tokenizer = model.tokenizer
    result: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "device": "cpu", "threads": args.threads,
                              "tokens": args.tokens, "personas": len(PREFERENCES), "lookahead": LOOKAHEAD}
    with _threads(args.threads):
        if "overhead" in args.sections:
            result["overhead"] = overhead(model, tokenizer, QUESTIONS[: args.questions], args.tokens)
            print(f"\n{'setting':8s} {'tokens':>6s} {'ms/token':>9s} {'free':>7s} {'ratio':>6s} "
                  f"{'ms/forward':>11s} {'free':>7s} {'ratio':>6s} {'grammar ms/token':>17s} {'share':>7s} "
                  f"{'accept':>7s} {'free':>5s}")
            for setting, row in result["overhead"]["summary"].items():
                c, f = row["constrained"], row["free"]
                print(f"{setting:8s} {c['tokens']:6d} {c['ms_per_token']:9.1f} {f['ms_per_token']:7.1f} "
                      f"{row['ratio_per_token']:6.3f} {c['ms_per_forward']:11.1f} {f['ms_per_forward']:7.1f} "
                      f"{row['ratio_per_forward']:6.3f} {row['grammar_ms_per_token']:17.3f} "
                      f"{100 * row['grammar_share']:6.2f}% {c['acceptance_rate']:7.2f} {f['acceptance_rate']:5.2f}")
        if "engines" in args.sections:
            result["engines"] = engines(tokenizer, model.vocab_size)
            print(f"\n{'engine':11s} {'tokenizer s':>12s} {'compile ms':>11s} {'mask us mean':>13s} {'max':>8s}")
            for name in ("xgrammar", "llguidance"):
                row = result["engines"].get(name)
                if row:
                    print(f"{name:11s} {row['tokenizer_setup_s']:12.2f} {1000 * row['compile_s']:11.1f} "
                          f"{row['mask_us_mean']:13.1f} {row['mask_us_max']:8.0f}")
    write_results(args.out, result, module="benchmarks.constrained", argv=argv, backend="transformers",
                  threads=args.threads, indent=2)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
