"""Preference adherence: Persona-judge vs the direct prompt vs no preference, per preference dimension.

    .venv/bin/python -m benchmarks.quality             # the subset `make bench` runs (a 6-minute budget)
    .venv/bin/python -m benchmarks.quality --full      # all 100 prompts, every setting (no time limit)
    .venv/bin/python -m benchmarks.quality --quick     # a smoke test
    .venv/bin/python -m benchmarks.quality --rescore benchmarks/results/quality.json   # recompute from saved texts

Run it from the repository root, as a module. How long each takes: benchmarks/README.md.

Prompts, dimensions, metrics, margins, guards and statistics: ../shared/bench/README.md (read at run time from
the project's shared/ folder beside the repository; --shared or $PERSONA_JUDGE_SHARED point elsewhere).
The preference texts are the Personalized Soups wordings in ../shared/reference/preferences.json.

A *setting* is a set of preferences given at once (e.g. simple + friendly). For each prompt and seed:

none           no preference (the base system prompt "You are a helpful AI assistant." and the question)
direct         every preference of the setting in that one system prompt (the usual way to personalise)
persona_judge  one persona per preference (system layout), Persona-judge decoding, λ = 4
paper          the paper's setting: each preference as an earlier user turn (layout "user_turn"),
               temperature 0.9, top-k 20, top-p 0.9, λ = 4

none, direct and persona_judge sample with temperature 0.7, top-p 0.95 (the chat model's defaults); every
condition is decoded by the package's engine (one persona = plain decoding with a KV cache), to EOS or
--max-new-tokens. Within a setting, each preference's dimension is scored on every response; A beats B on a
prompt when its metric is better by more than the dimension's margin (every seed of A against every seed of B),
and a response that fails a guard (empty/under 5 words, echoes the question, repeats itself) loses.
Win rate = (wins + ties/2) / comparisons, 95% bootstrap CI resampling prompts and seeds within a prompt.
A/A control: seed 0 against seed 1 of the same condition; its CI must contain 50%.
Raw texts are saved with the results, so every figure can be recomputed (--rescore).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine_info, shared_dir
from benchmarks.metrics import DIMENSIONS, aa_matrix, guard_failures, outcome_matrix, win_rate

SETTINGS: dict[str, list[str]] = {
    "simple+friendly": ["simple", "friendly"],
    "concise+friendly": ["concise", "friendly"],
    "expert+informative": ["expert", "informative"],
    "concise+unfriendly": ["concise", "unfriendly"],
    "simple+concise+friendly": ["simple", "concise", "friendly"],
}
DEFAULT_SETTINGS = ["simple+friendly", "concise+friendly"]
MAIN_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
PAPER_SAMPLING = {"temperature": 0.9, "top_k": 20, "top_p": 0.9}
LOOKAHEAD = 4
COMPARISONS = [
    ("persona_judge", "direct"),
    ("persona_judge", "none"),
    ("direct", "none"),
    ("paper", "direct"),
    ("paper", "none"),
    ("persona_judge", "paper"),
]
DETECTABLE_AT_FULL = 0.10  # shared/bench/README.md: ~10 points with 100 prompts x 2 seeds
DEFAULT_PROMPTS = 20  # at most; on 2 CPU cores the default time budget stops earlier
DEFAULT_MAX_MINUTES = 6.0  # `make bench` passes what its time budget leaves (see the Makefile)


# -- generation (in worker processes) --------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(model: str | None, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from langchain_persona_judge import load_model

    _STATE["model"], _STATE["tokenizer"] = load_model(model, device="cpu")


def build_prompts(tokenizer: Any, question: str, condition: str, preferences: list[str]) -> list[Any]:
    """The token prompts of one condition (one tensor per persona)."""
    from langchain_persona_judge.personas import persona_messages, render_preferences
    from langchain_persona_judge.runtime import encode_chat

    conversation = [{"role": "user", "content": question}]
    if condition == "none":
        base = render_preferences("system", [])
        return [encode_chat(tokenizer, [{"role": "system", "content": base}, *conversation])]
    if condition == "direct":
        return [encode_chat(tokenizer, persona_messages(conversation, preferences))]
    layout = "user_turn" if condition == "paper" else "system"
    return [encode_chat(tokenizer, persona_messages(conversation, [p], layout=layout)) for p in preferences]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from langchain_persona_judge import generate

    model, tokenizer = _STATE["model"], _STATE["tokenizer"]
    prompts = build_prompts(tokenizer, job["question"], job["condition"], job["preferences"])
    sampling = PAPER_SAMPLING if job["condition"] == "paper" else MAIN_SAMPLING
    start = time.perf_counter()
    gen = generate(model, prompts, max_new_tokens=job["max_new_tokens"], lookahead=LOOKAHEAD, do_sample=True,
                   seed=job["engine_seed"], **sampling)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=True).strip()
    out = {k: v for k, v in job.items() if k not in ("preferences", "max_new_tokens")}
    out.update(text=text, tokens=len(gen.token_ids), finish_reason=gen.finish_reason, seconds=round(seconds, 3))
    if len(prompts) > 1:
        out.update(acceptance_rate=round(gen.stats.acceptance_rate, 4),
                   tokens_per_iteration=round(gen.stats.tokens_per_iteration, 3))
    return out


def plan_jobs(prompts: list[dict[str, str]], settings: list[str], paper_settings: list[str], seeds: int,
              max_new_tokens: int, texts: dict[str, str]) -> list[dict[str, Any]]:
    jobs = []
    for p_index, row in enumerate(prompts):
        for seed in range(seeds):
            base = {"prompt_id": row["id"], "question": row["prompt"], "seed": seed,
                    "engine_seed": 7919 * seed + p_index, "max_new_tokens": max_new_tokens}
            jobs.append({**base, "setting": None, "condition": "none", "preferences": []})
            for setting in settings:
                prefs = [texts[d] for d in SETTINGS[setting]]
                conditions = ["direct", "persona_judge"] + (["paper"] if setting in paper_settings else [])
                for condition in conditions:
                    jobs.append({**base, "setting": setting, "condition": condition, "preferences": prefs})
    return jobs


def generate_all(jobs: list[dict[str, Any]], model: str | None, workers: int, threads: int,
                 max_seconds: float | None = None, min_prompts: int = 2) -> tuple[list[dict[str, Any]], bool]:
    """Decode every job; returns (records, whether the time budget stopped it before the last prompts).

    Jobs are started a prompt at a time, in order. With ``max_seconds``, a new prompt is started only while the
    time it is expected to take (from the wall time per response so far) still fits; a started prompt is
    always finished, so the prompts run are always a prefix of the list and complete.
    """
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(job["prompt_id"], []).append(job)
    pending = deque(groups.values())
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="quality", unit="response", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    started = 0
    stopped = False
    pool = worker_pool(model, workers, threads)
    inflight: set[Any] = set()

    def fits(extra_jobs: int) -> bool:
        if max_seconds is None or started < min_prompts or not records:
            return True
        elapsed = time.perf_counter() - start
        per_job = elapsed / len(records)
        return elapsed + (len(inflight) + extra_jobs) * per_job <= max_seconds

    with pool:
        while pending or inflight:
            while pending and not stopped and len(inflight) < 2 * max(workers, 1):
                if not fits(len(pending[0])):
                    stopped = True
                    break
                group = pending.popleft()
                inflight |= {pool.submit(run_job, job) for job in group}
                started += 1
            if stopped:
                pending.clear()
            if not inflight:
                break
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                records.append(future.result())
                bar.update()
    if stopped:
        bar.total = len(records)
        bar.refresh()
    bar.close()
    order = {(j["prompt_id"], j["seed"], j["setting"], j["condition"]): i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r["prompt_id"], r["seed"], r["setting"], r["condition"])])
    return records, stopped


def worker_pool(model: str | None, workers: int, threads: int) -> Executor:
    """``workers`` spawned processes with the model loaded, or (``workers <= 1``) one thread of this process."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1:
        return ThreadPoolExecutor(1, initializer=_init_worker, initargs=(model, threads))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(model, threads))


# -- scoring and statistics --------------------------------------------------------------------------------


def score_records(records: list[dict[str, Any]]) -> None:
    """Add every dimension's metric and the guard failures to each record, in place."""
    for r in records:
        r["metrics"] = {name: round(dim.score(r["text"]), 5) for name, dim in DIMENSIONS.items()}
        r["guards"] = guard_failures(r["text"], r["question"])


def _by_condition(records: list[dict[str, Any]], setting: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """condition -> prompt_id -> records sorted by seed (none is shared by every setting)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        if r["condition"] == "none" or r["setting"] == setting:
            out.setdefault(r["condition"], {}).setdefault(r["prompt_id"], []).append(r)
    for per_prompt in out.values():
        for rs in per_prompt.values():
            rs.sort(key=lambda r: r["seed"])
    return out


def analyse(records: list[dict[str, Any]], settings: list[str], n_boot: int = 2000) -> dict[str, Any]:
    results: dict[str, Any] = {}
    aa_all: list[bool] = []
    half_widths: list[float] = []
    for setting in settings:
        groups = _by_condition(records, setting)
        dims_out: dict[str, Any] = {}
        for dim_name in SETTINGS[setting]:
            dims_out[dim_name], widths = analyse_dimension(groups, dim_name, n_boot)
            half_widths += widths
            if "pooled" in dims_out[dim_name]["aa_control"]:
                aa_all.append(dims_out[dim_name]["aa_control"]["pooled"]["contains_50"])
        results[setting] = {"preferences": SETTINGS[setting], "dimensions": dims_out,
                            "guards_and_lengths": guards_and_lengths(groups)}
    return {"settings": results, "aa_control_ok": all(aa_all) if aa_all else None,
            "median_ci_half_width": round(float(np.median(half_widths)), 4) if half_widths else None}


def analyse_dimension(groups: dict[str, dict[str, list[dict[str, Any]]]], dim_name: str, n_boot: int
                      ) -> tuple[dict[str, Any], list[float]]:
    """One dimension of a setting: every comparison's win rate, the A/A controls, the metric's means; and the
    comparisons' CI half-widths."""
    dim = DIMENSIONS[dim_name]

    def scored(rs: list[dict[str, Any]]) -> list[tuple[float, bool]]:
        return [(r["metrics"][dim_name], bool(r["guards"])) for r in rs]

    comps: dict[str, Any] = {}
    half_widths: list[float] = []
    for a, b in COMPARISONS:
        if a not in groups or b not in groups:
            continue
        shared = sorted(set(groups[a]) & set(groups[b]))
        wr = win_rate([outcome_matrix(scored(groups[a][p]), scored(groups[b][p]), dim) for p in shared],
                      n_boot=n_boot)
        entry = wr.to_dict()
        entry["verdict"] = ("better" if wr.ci_low > 0.5 else "worse" if wr.ci_high < 0.5 else
                            "no detectable difference")
        comps[f"{a} vs {b}"] = entry
        half_widths.append(wr.half_width)
    # A/A: seed 0 against seed 1 of the same condition. The primary control pools every condition of the
    # setting (one check per setting and dimension, so chance failures do not multiply); the per-condition
    # figures are for reading.
    aa: dict[str, Any] = {}
    pooled: list[Any] = []
    for cond, per_prompt in groups.items():
        mats = [aa_matrix(scored(rs), dim) for rs in per_prompt.values() if len(rs) >= 2]
        if mats:
            wr = win_rate(mats, n_boot=n_boot)
            aa[cond] = {**wr.to_dict(), "contains_50": wr.contains_half}
            pooled.extend(mats)
    if pooled:
        wr = win_rate(pooled, n_boot=n_boot)
        aa["pooled"] = {**wr.to_dict(), "contains_50": wr.contains_half}
    direct_none = comps.get("direct vs none")
    means = {cond: round(_mean([r["metrics"][dim_name] for rs in pp.values() for r in rs]), 4)
             for cond, pp in groups.items()}
    return {
        "metric": dim.metric, "better": "higher" if dim.higher_is_better else "lower", "margin": dim.margin,
        "measurable_on_this_model": bool(direct_none and direct_none["ci95"][0] > 0.5),
        "comparisons": comps, "aa_control": aa, "metric_mean": means,
    }, half_widths


def guards_and_lengths(groups: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per condition: the share of responses failing each guard (and any), mean tokens, mean acceptance."""
    guards: dict[str, Any] = {}
    for cond, pp in groups.items():
        rs = [r for rr in pp.values() for r in rr]
        guards[cond] = {g: round(sum(g in r["guards"] for r in rs) / len(rs), 4) for g in ("empty", "echo", "repetitive")}
        guards[cond]["any"] = round(sum(bool(r["guards"]) for r in rs) / len(rs), 4)
        guards[cond]["mean_tokens"] = round(_mean([r["tokens"] for r in rs]), 1)
        accept = [r["acceptance_rate"] for r in rs if "acceptance_rate" in r]
        if accept:
            guards[cond]["mean_acceptance_rate"] = round(_mean(accept), 4)
    return guards


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return sum(xs) / len(xs) if xs else float("nan")


# -- the run -------------------------------------------------------------------------------------------------


def load_prompts(shared: Path) -> list[dict[str, str]]:
    with open(shared / "bench" / "prompts.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_texts(shared: Path) -> dict[str, str]:
    path = shared / "reference" / "preferences.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the preference texts (Personalized Soups wordings) live there.")
    psoups = json.loads(path.read_text(encoding="utf-8"))["psoups"]
    return {name: psoups[dim.psoups] for name, dim in DIMENSIONS.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="all prompts, every setting, the paper's setting in each")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 prompts, 32 new tokens, one setting")
    parser.add_argument("--prompts", type=int, default=None,
                        help="use (at most) the first N prompts (default 20; --full: all 100)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new prompt once the run would exceed this many minutes (default 6; "
                             "--full and --quick: no limit; 0: no limit)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt and condition (default 2)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None,
                        help=f"default: {' '.join(DEFAULT_SETTINGS)}")
    parser.add_argument("--paper-settings", nargs="*", choices=sorted(SETTINGS), default=None,
                        help="settings that also run the paper's condition (default: the first setting; --full: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (shared/bench/README.md: >= 128)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--model", default=None, help="model id/path/.gguf (default: the embedded SmolLM2)")
    parser.add_argument("--shared", default=None, help="the project's shared/ folder (default ../shared)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--rescore", type=Path, default=None, help="recompute everything from a saved results JSON")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/quality.json")
    args = parser.parse_args(argv)
    if args.max_minutes is None and not (args.full or args.quick):
        args.max_minutes = DEFAULT_MAX_MINUTES
    args.max_minutes = args.max_minutes or None  # 0: no limit
    if args.quick:
        args.prompts = args.prompts or 2
        args.max_new_tokens = args.max_new_tokens or 32
        args.settings = args.settings or ["simple+friendly"]
    elif not args.full:
        args.prompts = args.prompts or DEFAULT_PROMPTS
    if args.full:
        args.settings = args.settings or sorted(SETTINGS, key=list(SETTINGS).index)
        if args.paper_settings is None:
            args.paper_settings = list(args.settings)
    args.settings = args.settings or list(DEFAULT_SETTINGS)
    if args.paper_settings is None:
        args.paper_settings = args.settings[:1]
    args.max_new_tokens = args.max_new_tokens or 128
    if args.out is None:
        args.out = RESULTS / ("quality_quick.json" if args.quick else "quality.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.rescore:
        saved = json.loads(args.rescore.read_text(encoding="utf-8"))
        records, config = saved["records"], saved["config"]
        out = args.out if "--out" in (argv if argv is not None else sys.argv) else args.rescore
    else:
        records, config = generate_records(args, started)
        out = args.out
    score_records(records)
    analysis = analyse(records, config["settings"], n_boot=args.bootstrap)
    report = {"benchmark": "quality", "config": config, "notes": report_notes(config, analysis), "results": analysis,
              "records": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print_report(report)
    print(f"\nwritten to {out} ({time.perf_counter() - started:.0f} s)")
    return report


def generate_records(args: argparse.Namespace, started: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode every planned response (within the time budget): (records, the run's config)."""
    shared = shared_dir(args.shared)
    all_prompts = load_prompts(shared)
    prompts = all_prompts[: args.prompts] if args.prompts else all_prompts
    texts = load_texts(shared)
    settings = args.settings
    jobs = plan_jobs(prompts, settings, args.paper_settings, args.seeds, args.max_new_tokens, texts)
    budget = f", starting no new prompt after ~{args.max_minutes:g} min" if args.max_minutes else ""
    print(f"quality: up to {len(prompts)} of {len(all_prompts)} prompts{budget}; {args.seeds} seeds, settings {settings} "
          f"(paper's condition in {args.paper_settings}), {args.max_new_tokens} new tokens: {len(jobs)} responses "
          f"on {args.workers} process(es)", file=sys.stderr, flush=True)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    records, stopped = generate_all(jobs, args.model, args.workers, args.threads, max_seconds)
    run_ids = list(dict.fromkeys(r["prompt_id"] for r in records))
    config = {
        "prompts": len(run_ids), "prompts_available": len(all_prompts), "prompts_planned": len(prompts),
        "stopped_by_time_budget": stopped, "max_minutes": args.max_minutes,
        "subset": len(run_ids) < len(all_prompts), "prompt_ids": run_ids,
        "seeds": args.seeds, "settings": settings, "paper_settings": args.paper_settings,
        "max_new_tokens": args.max_new_tokens, "lookahead": LOOKAHEAD,
        "sampling": {"main": MAIN_SAMPLING, "paper": PAPER_SAMPLING},
        "preference_texts": {d: texts[d] for s in settings for d in SETTINGS[s]},
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "machine": machine_info("cpu", args.threads), "workers": args.workers,
        "generation_s": round(time.perf_counter() - started, 1),
        "paper_layout_note": ("the paper's code chat-templates the preference as its own user turn ahead of the "
                              "question's; here the package's user_turn layout (a user turn before the question)"),
    }
    return records, config


def report_notes(config: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """What a reader must know to read the figures: a subset, the CIs' width, few prompts, a failed A/A."""
    notes = []
    if config.get("subset"):
        why = (f"the first prompts that fit in the {config['max_minutes']:g}-minute budget"
               if config.get("stopped_by_time_budget") else "the first prompts")
        notes.append(f"Subset: {config['prompts']} of {config['prompts_available']} prompts x {config['seeds']} seeds "
                     f"({why}, to keep make bench bounded); run with --full for all prompts.")
    half = analysis["median_ci_half_width"]
    if half is not None:
        notes.append(f"The 95% CIs here are about ±{half * 100:.0f} points (median half-width): a win rate closer to "
                     f"50% than that is not a detectable difference (about ±{DETECTABLE_AT_FULL * 100:.0f} points with "
                     "100 prompts x 2 seeds).")
    if config.get("prompts", 100) < 10:
        notes.append("Under 10 prompts the bootstrap CIs are rough (percentile intervals on few clusters) and can "
                     "be degenerate (e.g. [100%, 100%]).")
    if analysis["aa_control_ok"] is False:
        notes.append("A pooled A/A control's CI does not contain 50%: the setup is suspect, or chance (about 1 in 20 "
                     "checks fails by chance; see aa_control).")
    return notes


def print_report(report: dict[str, Any]) -> None:
    config, analysis = report["config"], report["results"]
    print(f"\nmodel: {config['model']}; {config['prompts']} prompts x {config['seeds']} seeds, "
          f"{config['max_new_tokens']} new tokens, λ={config['lookahead']}")
    for note in report["notes"]:
        print(f"NOTE: {note}")
    for setting, res in analysis["settings"].items():
        print(f"\n[{setting}]")
        print(f"  {'dimension':12} {'comparison':28} {'win rate':>9} {'95% CI':>15} {'tie':>6}  verdict")
        for dim_name, d in res["dimensions"].items():
            tag = "" if d["measurable_on_this_model"] else "  (not measurable on this model: direct does not beat none)"
            print(f"  {dim_name:12} ({d['metric']}, {d['better']} is better, margin {d['margin']}){tag}")
            for name, c in d["comparisons"].items():
                lo, hi = c["ci95"]
                print(f"  {'':12} {name:28} {c['win_rate']:9.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} {c['tie']:6.1%}  {c['verdict']}")
            for cond, c in d["aa_control"].items():
                if cond != "pooled":
                    continue
                lo, hi = c["ci95"]
                print(f"  {'':12} {'A/A ' + cond:28} {c['win_rate']:9.1%} {f'[{lo:.0%}, {hi:.0%}]':>15} {c['tie']:6.1%}  "
                      f"{'ok' if c['contains_50'] else 'CI excludes 50%!'}")
        print("  guards failed / mean tokens / acceptance:")
        for cond, g in res["guards_and_lengths"].items():
            acc = f", acceptance {g['mean_acceptance_rate']:.0%}" if "mean_acceptance_rate" in g else ""
            print(f"    {cond:14} {g['any']:5.0%} (empty {g['empty']:.0%}, echo {g['echo']:.0%}, repetitive "
                  f"{g['repetitive']:.0%}), {g['mean_tokens']:.0f} tokens{acc}")
    print(f"\nA/A controls (pooled per setting and dimension) all contain 50%: {analysis['aa_control_ok']}")


if __name__ == "__main__":
    main()
