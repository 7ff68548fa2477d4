"""Markdown tables rendered from the results JSON, so that the README's figures are never typed by hand.

    .venv/bin/python -m benchmarks.tables --update benchmarks/README.md     # regenerate every marked table
    .venv/bin/python -m benchmarks.tables quality_rules benchmarks/results/quality_rules.json   # print one

A table in a Markdown file sits between two markers naming the renderer and the results file (relative to the
Markdown file)::

    <!-- table:quality_rules results/quality_rules.json -->
    ...generated, replaced on --update...
    <!-- /table -->

Renderers (``TABLES``): ``quality_rules`` (each rule against the direct prompt, one table per setting: win rates
with 95% CIs, without guards, both preferences at once, guard failures, plain-model perplexity, the bar),
``quality_measurable`` (direct vs none and the A/A control: which dimensions are measurable),
``quality_dose`` (win rate and perplexity against γ), ``speed_rules`` (the main section: tokens/s against
``generate``, forward calls, batch rows, loops) and ``speed_lengths`` (tokens/s at each length, and whether the
answer had fallen into a loop by then), ``backends`` (every rule on each backend: benchmarks/backends.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RULE_LABELS = {"persona_judge": "Persona-judge", "product": "product", "direct": "direct prompt"}
DIM_MARK = "†"


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.0%}"


def _ci(c: dict[str, Any] | None, key: str = "win_rate") -> str:
    if not c:
        return "–"
    return f"{c[key]:.0%} [{c['ci95'][0]:.0%}, {c['ci95'][1]:.0%}]"


def condition_label(condition: str) -> str:
    """persona_judge_g2 -> Persona-judge, γ=2; direct -> direct prompt; product -> product (Σ w log p)."""
    m = re.match(r"^(persona_judge|product|direct)(?:_g(-?[\d.]+))?$", condition)
    if not m:
        return condition
    label = RULE_LABELS[m[1]]
    if m[1] == "product" and not m[2]:
        label += " (Σ w log p)"
    return f"{label}, γ={m[2]}" if m[2] else label


def _gamma_key(condition: str) -> tuple[int, float]:
    m = re.match(r"^(persona_judge|product|direct)(?:_g(-?[\d.]+))?$", condition)
    if not m:
        return (9, 0.0)
    return (["persona_judge", "product", "direct"].index(m[1]), float(m[2] or 1))


# -- quality ------------------------------------------------------------------------------------------------


def quality_rules(report: dict[str, Any]) -> str:
    """One table per setting: every condition against the direct prompt."""
    out: list[str] = []
    cfg = report["config"]
    for setting, res in report["results"]["settings"].items():
        dims = res["dimensions"]
        conds = sorted({name.split(" vs ")[0] for d in dims.values() for name in d["comparisons"]
                        if name.endswith(" vs direct")}, key=_gamma_key)
        head = ["vs the direct prompt", "prompts"]
        for dim, d in dims.items():
            head.append(f"{dim}{' ' + DIM_MARK if d['measurable_on_this_model'] is False else ''} (no guards)")
        head += ["both at once (no guards)", "guard failures", "perplexity (× direct)", "bar"]
        out.append(f"**{setting}**\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|---:|" + "---|" * len(dims) + "---|---:|---|---|")
        guards, fluency, criteria = res["guards_and_lengths"], res.get("fluency", {}), res.get("criteria", {})
        for cond in ["direct", *conds]:
            row = [condition_label(cond)]
            if cond == "direct":
                row.append(str(cfg["prompts"]))
                row += ["(reference)"] * len(dims) + ["–"]
            else:
                first = next(iter(dims.values()))["comparisons"][f"{cond} vs direct"]
                row.append(str(first["prompts"]))
                for d in dims.values():
                    c = d["comparisons"][f"{cond} vs direct"]
                    cell = _ci(c)
                    if c["win_rate"] >= 0.6 and c["ci95"][0] > 0.5:
                        cell = f"**{cell}**"
                    row.append(f"{cell} ({_pct(c.get('no_guards', {}).get('win_rate'))})")
                j = res.get("both", {}).get(f"{cond} vs direct")
                row.append(f"{_ci(j['wins_all'], 'share')} ({_pct(j['no_guards_wins_all']['share'])})" if j else "–")
            g = guards.get(cond, {})
            row.append(_pct(g.get("any")))
            f = fluency.get(cond, {})
            ppl = f"{f['ppl_geomean']:.2f}" if f else "–"
            if "ratio_vs_direct" in f:
                lo, hi = f["ratio_vs_direct_ci95"]
                ppl += f" ({f['ratio_vs_direct']:.2f}× [{lo:.2f}, {hi:.2f}])"
            row.append(ppl)
            crit = criteria.get(cond)
            row.append("–" if not crit else "**met**" if crit["met"] else _why_not(crit))
            out.append("| " + " | ".join(row) + " |")
        none = guards.get("none")
        if none:
            f = fluency.get("none", {})
            out.append(f"\nNo preference (none): guard failures {_pct(none['any'])}, perplexity "
                       f"{f.get('ppl_geomean', float('nan')):.2f}; mean tokens: "
                       + ", ".join(f"{condition_label(c)} {g['mean_tokens']:.0f}" for c, g in guards.items()) + ".")
        out.append("")
    out.append(f"{DIM_MARK} not measurable on this model: the direct prompt does not beat no preference on it "
               "(CI above 50%). Bold: win rate ≥ 60% with the CI's lower bound above 50%. Guard failures: empty, "
               "echo or repetitive answers (they lose every comparison; the figures in brackets count them as "
               "ordinary answers). Perplexity: geometric mean per-token perplexity of the answers under the plain "
               "model (the conversation with no preference), and its ratio to the direct prompt's on the same "
               "prompts with a 95% CI. Bar: wins ≥ 60% with CI low > 50% on every measurable dimension, guard "
               f"failures ≤ 1.5× the direct prompt's, perplexity ≤ 1.5× the direct prompt's. {_n_note(report)}")
    return "\n".join(out) + "\n"


def _why_not(crit: dict[str, Any]) -> str:
    why = []
    if not crit["wins_measurable_met"]:
        why.append("wins")
    if not crit["guards_met"]:
        why.append("guards")
    if not crit["perplexity_met"]:
        why.append("perplexity")
    return "no (" + ", ".join(why) + ")"


def _n_note(report: dict[str, Any]) -> str:
    cfg = report["config"]
    note = (f"{cfg['prompts']} of {cfg['prompts_available']} prompts × {cfg['seeds']} seeds, "
            f"{cfg['max_new_tokens']} new tokens")
    if cfg.get("sweep_gammas"):
        sweep = ", ".join(f"{g:g}" for g in cfg["sweep_gammas"])
        note += f"; γ ∈ {{{sweep}}} on the first {cfg.get('sweep_prompts')} prompts only"
    half = report["results"].get("median_ci_half_width")
    if half:
        note += f"; median CI half-width ±{half * 100:.0f} points"
    return note + "."


def quality_measurable(report: dict[str, Any]) -> str:
    """Direct vs none (which dimensions are measurable) and the pooled A/A control, per setting and dimension."""
    lines = ["| setting | dimension | direct vs none | measurable | A/A (seed 0 vs 1, pooled) |",
             "|---|---|---|---|---|"]
    for setting, res in report["results"]["settings"].items():
        for dim, d in res["dimensions"].items():
            aa = d["aa_control"].get("pooled")
            aa_cell = _ci(aa) + ("" if not aa or aa["contains_50"] else " (excludes 50%!)")
            lines.append(f"| {setting} | {dim} | {_ci(d['comparisons'].get('direct vs none'))} | "
                         f"{'yes' if d['measurable_on_this_model'] else 'no ' + DIM_MARK} | {aa_cell} |")
    return "\n".join(lines) + "\n"


def dose_points(report: dict[str, Any]) -> dict[str, Any]:
    """Per setting, rule and γ: each dimension's win rate vs direct (with CI) and the perplexity ratio."""
    out: dict[str, Any] = {}
    for setting, res in report["results"]["settings"].items():
        per_rule: dict[str, dict[float, dict[str, Any]]] = {}
        conds = {name.split(" vs ")[0] for d in res["dimensions"].values() for name in d["comparisons"]} | {"direct"}
        for cond in conds:
            m = re.match(r"^(persona_judge|product|direct)(?:_g(-?[\d.]+))?$", cond)
            if not m:
                continue
            gamma = float(m[2] or 1)
            point: dict[str, Any] = {"prompts": None}
            for dim, d in res["dimensions"].items():
                c = d["comparisons"].get(f"{cond} vs direct")
                point[dim] = (c["win_rate"], c["ci95"][0], c["ci95"][1]) if c else (0.5, 0.5, 0.5)
                if c:
                    point["prompts"] = c["prompts"]
            f = res.get("fluency", {}).get(cond, {})
            point["ppl"] = f.get("ppl_geomean")
            point["ppl_ratio"] = (f["ratio_vs_direct"], *f["ratio_vs_direct_ci95"]) if "ratio_vs_direct" in f \
                else ((1.0, 1.0, 1.0) if cond == "direct" else None)
            point["guards"] = res["guards_and_lengths"].get(cond, {}).get("any")
            per_rule.setdefault(m[1], {})[gamma] = point
        out[setting] = {rule: dict(sorted(pts.items())) for rule, pts in per_rule.items()}
    return out


def quality_dose(report: dict[str, Any]) -> str:
    """Win rate vs the direct prompt and perplexity against γ, per setting and rule (the dose-response)."""
    lines: list[str] = []
    for setting, rules in dose_points(report).items():
        dims = list(report["results"]["settings"][setting]["dimensions"])
        lines.append(f"| {setting}: rule | γ | prompts | " + " | ".join(f"{d} vs direct" for d in dims)
                     + " | guard failures | perplexity (× direct) |")
        lines.append("|---|---:|---:|" + "---|" * len(dims) + "---:|---:|")
        for rule in ("persona_judge", "product", "direct"):
            for gamma, p in rules.get(rule, {}).items():
                wins = ["(reference)" if rule == "direct" and gamma == 1 else
                        f"{p[d][0]:.0%} [{p[d][1]:.0%}, {p[d][2]:.0%}]" for d in dims]
                ratio = p["ppl_ratio"][0] if p["ppl_ratio"] else float("nan")
                lines.append(f"| {RULE_LABELS[rule]} | {gamma:g} | {p['prompts'] or '–'} | " + " | ".join(wins)
                             + f" | {_pct(p['guards'])} | {p['ppl'] or float('nan'):.2f} ({ratio:.2f}×) |")
        lines.append("")
    return "\n".join(lines)


# -- speed --------------------------------------------------------------------------------------------------


def speed_rules(report: dict[str, Any]) -> str:
    """The main section: one row per setting."""
    main = report["main"]
    lines = [f"| setting ({main['max_new_tokens']} new tokens, greedy) | tokens/s | vs `generate` (pair min–max) | "
             "forward calls / token | rows / forward | repeated 4-grams | answers looping |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in main["settings"].items():
        lo, hi = s["pair_ratio_min_max"]
        ratio = f"{s['speed_ratio_vs_generate']:.2f}× ({lo:.2f}–{hi:.2f})"
        lines.append(f"| {name} | {s['tokens_per_s']:.1f} | {ratio} | "
                     f"{s['forward_calls_per_token']:.2f} | {s.get('rows_per_forward', float('nan')):.2f} | "
                     f"{_pct(s.get('repeated_ngram_share'))} | {s.get('looping_runs', '–')} of {s['runs']} |")
    m = report["machine"]
    lines.append(f"\n{len(main['questions'])} questions × {main['repeats']} repeats, interleaved (A B … B A); "
                 f"{m['cpu']}, {m['torch_threads']} torch thread(s), load average at the end {m.get('load_average')}.")
    return "\n".join(lines) + "\n"


def speed_lengths(report: dict[str, Any]) -> str:
    """Tokens/s at each length and whether the answer had fallen into a loop by then (LOOP)."""
    sec = report["lengths"]
    keys = [k for k in sec["series"] if k != "naive_paper"]
    lengths = [p["new_tokens"] for p in sec["series"][keys[0]]]
    lines = ["| path (greedy, EOS ignored) | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    gen = {p["new_tokens"]: p for p in sec["series"]["generate"]}
    for key in keys:
        cells = []
        for p in sec["series"][key]:
            ratio = "" if key == "generate" else f" ({p['tokens_per_s'] / gen[p['new_tokens']]['tokens_per_s']:.2f}×)"
            loop = p.get("window_repeated_ngram_share")
            flag = "" if loop is None else f", {loop:.0%} rep{' **LOOP**' if p.get('looping') else ''}"
            cells.append(f"{p['tokens_per_s']:.1f}{ratio}{flag}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    nv = sec["series"]["naive_paper"]
    lines.append("| naive_paper | " + " | ".join(
        f"{p['tokens_per_s']:.2f}{'' if p['measured'] else ' (est.)'}" for p in nv) + " |")
    lines.append("\ntokens/s (× `generate` at the same length); rep: the share of the 4-grams decoded since the "
                 "previous length that had already occurred earlier in the answer; **LOOP**: at least half.")
    return "\n".join(lines) + "\n"


BACKEND_LABELS = {
    "generate": "`model.generate` (direct prompt)", "native": "llama.cpp's own `Llama.generate` (direct prompt)",
    "direct": "direct prompt (engine)", "speculative": "Persona-judge, speculative",
    "lockstep": "Persona-judge, lockstep", "product": "product (Σ w log p)",
    "judge_g2": "Persona-judge, γ=2 (+ reference row)", "product_g1.5": "product, γ=1.5 (+ reference row)",
}


def backends(report: dict[str, Any]) -> str:
    """Every rule on each backend (benchmarks/backends.py): tokens/s, ratios, rows per token, loops."""
    cfg, table = report["config"], report["table"]
    lines = [f"| rule ({cfg['max_new_tokens']} tokens, greedy, λ=4) | backend | tokens/s | × own direct prompt | "
             "× llama.cpp direct | forwards / token | rows / token | answers looping |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in table.values():
        lines.append(
            f"| {BACKEND_LABELS.get(row['condition'], row['condition'])} | {row['backend']} | "
            f"{row['tokens_per_s']:.1f} | {row.get('vs_' + row['backend'] + '_direct', float('nan')):.2f}× | "
            f"{row.get('vs_llamacpp_native', float('nan')):.2f}× | {row['forwards_per_token']:.2f} | "
            f"{row['rows_per_token']:.2f} | {_pct(row['looping_share'])} |")
    crit = report.get("criteria", {})
    m = cfg["machine"]
    lines.append(
        f"\n{len(cfg['questions'])} questions × {cfg['repeats']} repeats, interleaved (A B … B A), EOS ignored; "
        f"{m['cpu']}, {cfg['threads']} thread(s), load average at the end {m.get('load_average')}. Persona-judge "
        f"(its faster schedule) on llama.cpp: **{crit.get('persona_judge_llamacpp_vs_transformers', float('nan')):.2f}×** "
        f"Persona-judge on transformers, **{crit.get('persona_judge_llamacpp_vs_native_direct', float('nan')):.2f}×** "
        "llama.cpp decoding the direct prompt. Rows / token: token positions the model computed per emitted token "
        "(prompts included).")
    return "\n".join(lines) + "\n"


def backend_costs(report: dict[str, Any]) -> str:
    """One forward's milliseconds as it adds n tokens to one sequence or one token to each of n sequences."""
    costs = report.get("decode_ms", {})
    sizes = sorted({int(k.split()[0]) for rows in costs.values() for k in rows})
    lines = ["| backend | layout | " + " | ".join(f"n = {n}" for n in sizes) + " |",
             "|---|---|" + "---:|" * len(sizes)]
    for backend, rows in costs.items():
        for kind, label in (("tokens", "n tokens of one sequence"), ("sequences", "1 token in each of n sequences")):
            one = rows.get(f"1 {kind}")
            cells = [f"{rows[f'{n} {kind}']:.1f} ms ({rows[f'{n} {kind}'] / one:.1f}×)" if one else "–" for n in sizes]
            lines.append(f"| {backend} | {label} | " + " | ".join(cells) + " |")
    lines.append("\nms per forward (× the one-token forward), logits at every new position, after a "
                 "question's prompt.")
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "backends": backends,
    "backend_costs": backend_costs,
    "quality_rules": quality_rules,
    "quality_measurable": quality_measurable,
    "quality_dose": quality_dose,
    "speed_rules": speed_rules,
    "speed_lengths": speed_lengths,
}

MARKER = re.compile(r"(<!-- table:(?P<name>\w+) (?P<source>\S+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def update_markdown(path: Path) -> list[str]:
    """Regenerate every marked table of the Markdown file at ``path``; returns the tables' names."""
    text = path.read_text(encoding="utf-8")
    done: list[str] = []
    cache: dict[Path, dict[str, Any]] = {}

    def render(m: re.Match[str]) -> str:
        source = (path.parent / m["source"]).resolve()
        if source not in cache:
            cache[source] = json.loads(source.read_text(encoding="utf-8"))
        done.append(m["name"])
        return m[1] + TABLES[m["name"]](cache[source]) + m[5]

    path.write_text(MARKER.sub(render, text), encoding="utf-8")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", choices=sorted(TABLES), help="print this table")
    parser.add_argument("source", nargs="?", type=Path, help="the results JSON it reads")
    parser.add_argument("--update", type=Path, nargs="+", default=[], metavar="MARKDOWN",
                        help="regenerate every marked table in these Markdown files")
    args = parser.parse_args(argv)
    for md in args.update:
        print(f"{md}: {', '.join(update_markdown(md)) or 'no marked table'}", file=sys.stderr)
    if args.table:
        if not args.source:
            parser.error("name the results JSON the table reads")
        print(TABLES[args.table](json.loads(args.source.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
