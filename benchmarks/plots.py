"""PNG plots and a Markdown summary from the speed and quality results.

    .venv/bin/python -m benchmarks.plots            # reads benchmarks/results/{speed,quality}.json

Writes into benchmarks/results/: speed_lambda.png (tokens/s against λ), speed_length.png (cost against the
number of new tokens), speed_prompt.png (cost against the prompt length), quality_winrates.png (win rates with
95% CIs) and summary.md (the short tables for the README, naming the machine and the model). A missing
results file or section is skipped with a message.

From the rules run (--quality-rules, default results/quality_rules.json): quality_rules_winrates.png (every
rule against the direct prompt) and quality_dose.png (the dose-response: win rate against the direct prompt
and plain-model perplexity against the guidance strength γ, per rule, setting and dimension); its tables
(benchmarks/tables.py) go into summary.md too. --speed-rules (default results/speed_rules.json) draws its
lengths section as speed_rules_length.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS

COLORS = {"generate": "#555555", "direct": "#999999", "greedy": "#1f77b4", "sample": "#ff7f0e",
          "persona_judge": "#1f77b4", "naive_paper": "#d62728", "paper": "#2ca02c", "none": "#999999",
          "greedy_lockstep": "#9467bd", "sample_lockstep": "#8c564b", "persona_judge_lockstep": "#9467bd",
          "product": "#17becf", "direct_g": "#7f7f7f", "persona_judge_lockstep_g": "#e377c2"}
RULE_COLORS = {"persona_judge": "#1f77b4", "product": "#17becf", "direct": "#7f7f7f"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _machine(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch thread(s)){gpu}"


def _short_model(report: dict[str, Any]) -> str:
    return report["model"].split(" (")[0].split(",")[0]


# persona_judge_greedy_l4, persona_judge_greedy_l4_lockstep, persona_judge_greedy_l4_dc0.5, persona_judge_sample_l8 ...
SETTING_NAME = re.compile(
    r"^persona_judge_(?P<mode>greedy|sample)_l(?P<lam>\d+)(?:_(?P<schedule>lockstep))?(?:_dc(?P<dc>[\d.]+))?$"
)


def plot_lambda(speed: dict[str, Any], out: Path) -> Path | None:
    main = speed.get("main")
    if not main:
        return None
    plt = _plt()
    settings = main["settings"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for name, s in settings.items():
        match = SETTING_NAME.match(name)
        if match:
            key = (match["mode"], match["schedule"] or "", match["dc"] or "")
            series.setdefault(key, []).append((int(match["lam"]), s["tokens_per_s"]))
    for (mode, schedule, dc), pts in sorted(series.items()):
        xs, ys = zip(*sorted(pts))
        label = (f"Persona-judge, {'greedy' if mode == 'greedy' else 'sampling'}"
                 + (", lockstep" if schedule else "") + (f", draft_confidence={dc}" if dc else ""))
        color = COLORS[f"{mode}_{schedule}" if schedule else mode]
        ax.plot(xs, ys, "s--" if dc else "o-", color=color, label=label, alpha=0.7 if dc else 1.0)
    for name, style in (("generate", "-"), ("direct", ":")):
        if name in settings:
            label = ("generate (greedy, KV cache)" if name == "generate"
                     else "generate, direct prompt (all preferences)")
            ax.axhline(settings[name]["tokens_per_s"], color=COLORS[name], linestyle=style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8])
    ax.set_xticklabels(["1", "2", "4", "8"])
    ax.set_xlabel("λ (drafts per iteration)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Decoding speed, {main['max_new_tokens']} new tokens, {_short_model(speed)}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.text(0.01, 0.01, _machine(speed), fontsize=6, color="#666666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "speed_lambda.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_length(speed: dict[str, Any], out: Path, name: str = "speed_length.png") -> Path | None:
    sec = speed.get("lengths")
    if not sec:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    curves = sec["curves"]
    labels = {"generate": "generate (KV cache)", "persona_judge": f"Persona-judge (ours), greedy λ={sec['lookahead']}",
              "persona_judge_lockstep": f"Persona-judge (ours), greedy λ={sec['lookahead']}, lockstep",
              "naive_paper": "paper's code path (no KV cache)"}
    for key in [k for k in curves if not k.startswith("naive_paper")]:
        pts = [(t, s, p) for t, s, _, p in curves[key] if t > 0]
        color = COLORS.get(key, COLORS.get(key.rsplit("_g", 1)[0] + "_g", "#bcbd22"))
        label = labels.get(key, key)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, label=label)
        ax2.plot([p[0] for p in pts], [p[2] / p[0] for p in pts], "-", color=color, label=label)
    measured = [(t, s, p) for t, s, _, p in curves["naive_paper_measured"] if t > 0]
    estimated = [(t, s, p) for t, s, _, p in curves["naive_paper_estimated"] if t > 0]
    if measured:
        ax1.plot([p[0] for p in measured], [p[1] for p in measured], "-", color=COLORS["naive_paper"], lw=2.5,
                 label=labels["naive_paper"] + ", measured")
        ax2.plot([p[0] for p in measured], [p[2] / p[0] for p in measured], "-", color=COLORS["naive_paper"], lw=2.5,
                 label=labels["naive_paper"])
    if estimated:
        ax1.plot([p[0] for p in estimated], [p[1] for p in estimated], "--", color=COLORS["naive_paper"],
                 label=labels["naive_paper"] + ", estimated")
        ax2.plot([p[0] for p in estimated], [p[2] / p[0] for p in estimated], "--", color=COLORS["naive_paper"])
    for key, marker in (("generate", "s"), ("persona_judge", "o"), ("persona_judge_lockstep", "D"), ("naive_paper", "^")):
        for pt in sec["series"].get(key, []):
            ax1.plot(pt["new_tokens"], pt["seconds"], marker, color=COLORS[key],
                     fillstyle="full" if pt["measured"] else "none")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("new tokens")
    ax1.set_ylabel("seconds (cumulative)")
    ax1.set_title("Time to emit n tokens", fontsize=10)
    ax2.set_ylabel("token positions fed to the model per emitted token")
    ax2.set_title("Work per token (hook counts; naive grows with n)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Cost against output length, {_short_model(speed)}; prompt {sec['prompt_tokens'][0]} tokens",
                 fontsize=10)
    fig.text(0.01, 0.01, _machine(speed) + "; dashed: estimated from measured single-forward latencies",
             fontsize=6, color="#666666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / name
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_prompt(speed: dict[str, Any], out: Path) -> Path | None:
    sec = speed.get("prompts")
    if not sec:
        return None
    plt = _plt()
    rows = sec["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    xs = [r["prompt_tokens"] for r in rows]
    for key, label, style in (("generate", "generate (KV cache)", "s-"),
                              ("persona_judge", f"Persona-judge (ours), greedy λ={sec['lookahead']}", "o-"),
                              ("naive_paper", "paper's code path (no KV cache), estimated", "^--")):
        ax1.plot(xs, [r[key]["seconds"] for r in rows], style, color=COLORS[key], label=label,
                 fillstyle="full" if rows[0][key]["measured"] else "none")
        ax2.plot(xs, [r[key].get("positions_per_token_beyond_prompts", r[key]["positions_per_token"]) for r in rows],
                 style, color=COLORS[key], label=label,
                 fillstyle="full" if rows[0][key]["measured"] else "none")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt tokens")
    ax1.set_ylabel(f"seconds for {sec['new_tokens']} new tokens (prefill included)")
    ax2.set_ylabel("positions per emitted token, beyond one read of each prompt")
    ax2.set_title("Decoding work per token (hook counts)", fontsize=10)
    ax1.set_title("Time, prompt reading included", fontsize=10)
    ax1.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Cost against prompt length, {_short_model(speed)} (context {speed.get('context_limit')})", fontsize=10)
    fig.text(0.01, 0.01, _machine(speed), fontsize=6, color="#666666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "speed_prompt.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _plotted(name: str) -> bool:
    """The comparisons a win-rate figure shows: everything against the direct prompt, direct and Persona-judge
    against none, and the paper's layout (the rules' comparisons against none are in the JSON)."""
    a, b = name.split(" vs ")
    return b in ("direct", "paper") or a in ("direct", "persona_judge", "paper")


def plot_quality(quality: dict[str, Any], out: Path, filename: str = "quality_winrates.png") -> Path | None:
    settings = quality["results"]["settings"]
    if not settings:
        return None
    plt = _plt()
    rows = max(sum(len([c for c in d["comparisons"] if _plotted(c)]) + 1 for d in res["dimensions"].values())
               for res in settings.values())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), max(4.6, 1.2 + 0.16 * rows)),
                             squeeze=False)
    for ax, (setting, res) in zip(axes[0], settings.items()):
        labels, values, lows, highs, colors = [], [], [], [], []
        for dim, d in res["dimensions"].items():
            comps = [(n, c) for n, c in d["comparisons"].items() if _plotted(n)]
            entries = comps + [("A/A (seed 0 vs 1)", d["aa_control"]["pooled"])] \
                if "pooled" in d["aa_control"] else comps
            for name, c in entries:
                tag = " †" if d["measurable_on_this_model"] is False else ""
                labels.append(f"{dim}{tag}: {name}")
                values.append(c["win_rate"])
                lows.append(c["win_rate"] - c["ci95"][0])
                highs.append(c["ci95"][1] - c["win_rate"])
                colors.append(RULE_COLORS.get(name.split(" vs ")[0].split("_g")[0], COLORS.get(name.split(" vs ")[0],
                              "#777777")) if "A/A" not in name else "#bbbbbb")
        ys = list(range(len(labels)))[::-1]
        ax.errorbar(values, ys, xerr=[lows, highs], fmt="none", ecolor="#444444", capsize=2, lw=1)
        ax.scatter(values, ys, c=colors, zorder=3, s=18)
        ax.axvline(0.5, color="#888888", linestyle=":")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_xlabel("win rate (wins + ties/2), 95% bootstrap CI")
        ax.set_title(setting, fontsize=9)
    cfg = quality["config"]
    subset = f"{cfg['prompts']} of {cfg['prompts_available']} prompts" if cfg.get("subset") else f"{cfg['prompts']} prompts"
    fig.suptitle(f"Preference adherence, {cfg['model'].split(' (')[0]}: {subset} x {cfg['seeds']} seeds, "
                 f"{cfg['max_new_tokens']} new tokens\n(† direct does not beat none here: not measurable)", fontsize=9)
    m = cfg["machine"]
    fig.text(0.01, 0.01, f"{m['cpu']} ({m['cpu_cores']} cores)", fontsize=6, color="#666666")
    fig.tight_layout(rect=(0, 0.03, 1, 0.92))
    path = out / filename
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_dose(quality: dict[str, Any], out: Path) -> Path | None:
    """The dose-response: per setting (rows), each dimension's win rate against the direct prompt and the
    plain-model perplexity (ratio to the direct prompt's) against γ, one line per rule, 95% CIs."""
    from benchmarks.tables import RULE_LABELS, dose_points

    points = dose_points(quality)
    if not points or not any(len(pts) > 1 for rules in points.values() for pts in rules.values()):
        return None
    plt = _plt()
    settings = quality["results"]["settings"]
    ncols = max(len(res["dimensions"]) for res in settings.values()) + 1
    fig, axes = plt.subplots(len(points), ncols, figsize=(3.6 * ncols, 3.2 * len(points)), squeeze=False)
    offsets = {"persona_judge": -0.03, "product": 0.0, "direct": 0.03}
    for row, (setting, rules) in zip(axes, points.items()):
        dims = list(settings[setting]["dimensions"])
        for ax, dim in zip(row, dims):
            for rule, pts in rules.items():
                gs = [g for g in pts if not (rule == "direct" and g == 1)]
                if not gs:
                    continue
                ys = [pts[g][dim][0] for g in gs]
                err = [[pts[g][dim][0] - pts[g][dim][1] for g in gs], [pts[g][dim][2] - pts[g][dim][0] for g in gs]]
                ax.errorbar([g + offsets[rule] for g in gs], ys, yerr=err, fmt="o-", color=RULE_COLORS[rule],
                            capsize=2, lw=1.2, ms=4, label=RULE_LABELS[rule] + ("" if rule != "direct" else ", guided"))
            measurable = settings[setting]["dimensions"][dim]["measurable_on_this_model"]
            ax.axhline(0.5, color="#888888", linestyle=":")
            ax.axhline(0.6, color="#2ca02c", linestyle="--", lw=0.8)
            ax.set_ylim(0, 1)
            ax.set_title(f"{setting}: {dim}{' † not measurable' if measurable is False else ''}", fontsize=8)
            ax.set_ylabel("win rate vs the direct prompt", fontsize=7)
        ax = row[-1]
        for rule, pts in rules.items():
            gs = [g for g in pts if pts[g]["ppl_ratio"]]
            ys = [pts[g]["ppl_ratio"][0] for g in gs]
            err = [[pts[g]["ppl_ratio"][0] - pts[g]["ppl_ratio"][1] for g in gs],
                   [pts[g]["ppl_ratio"][2] - pts[g]["ppl_ratio"][0] for g in gs]]
            ax.errorbar([g + offsets[rule] for g in gs], ys, yerr=err, fmt="o-", color=RULE_COLORS[rule], capsize=2,
                        lw=1.2, ms=4, label=RULE_LABELS[rule])
        ax.axhline(1.0, color="#888888", linestyle=":")
        ax.axhline(1.5, color="#d62728", linestyle="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{setting}: plain-model perplexity", fontsize=8)
        ax.set_ylabel("perplexity ÷ direct prompt's", fontsize=7)
        for a in row:
            a.set_xlabel("guidance γ (1 = the rule itself)", fontsize=7)
            a.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="lower right")
    cfg = quality["config"]
    sweep = ", ".join(f"{g:g}" for g in cfg.get("sweep_gammas") or [])
    fig.suptitle(f"Preference strength: {cfg['model'].split(' (')[0]}, {cfg['prompts']} prompts × "
                 f"{cfg['seeds']} seeds "
                 f"(γ ∈ {{{sweep}}} on {cfg.get('sweep_prompts')} prompts); dotted: parity, "
                 "dashed: the bar (60% wins, 1.5× perplexity)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = out / "quality_dose.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_markdown(speed: dict[str, Any] | None, quality: dict[str, Any] | None, images: list[Path]) -> str:
    lines: list[str] = []
    if speed:
        lines.append(f"Speed: {speed['model']}; {_machine(speed)}.\n")
        main = speed.get("main")
        if main:
            lines.append(f"| setting ({main['max_new_tokens']} new tokens) | tokens/s | vs generate | forward calls/token "
                         "| positions/token | acceptance | tokens/iteration |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|")
            for name, s in main["settings"].items():
                acc = f"{s['acceptance_rate']:.0%}" if s["acceptance_rate"] is not None else "–"
                tpi = f"{s['tokens_per_iteration']:.2f}" if s["tokens_per_iteration"] is not None else "–"
                lines.append(f"| {name} | {s['tokens_per_s']:.1f} | {s['speed_ratio_vs_generate']:.2f}× | "
                             f"{s['forward_calls_per_token']:.2f} | {s['positions_per_token']:.1f} | {acc} | {tpi} |")
            lines.append("")
        sec = speed.get("lengths")
        if sec:
            lock = sec["series"].get("persona_judge_lockstep")
            lines.append(f"| new tokens | generate tokens/s | Persona-judge tokens/s (greedy λ={sec['lookahead']}) | "
                         + ("lockstep tokens/s | " if lock else "")
                         + "paper's code path tokens/s | Persona-judge / paper's path |")
            lines.append("|---:|---:|---:|" + ("---:|" if lock else "") + "---:|---:|")
            for i, (g, o, nv) in enumerate(zip(*(sec["series"][k] for k in ("generate", "persona_judge", "naive_paper")))):
                est = "" if nv["measured"] else " (est.)"
                lk = f"{lock[i]['tokens_per_s']:.1f} | " if lock else ""
                lines.append(f"| {g['new_tokens']} | {g['tokens_per_s']:.1f} | {o['tokens_per_s']:.1f} | {lk}"
                             f"{nv['tokens_per_s']:.2f}{est} | {nv['seconds'] / o['seconds']:.1f}× |")
            lines.append("")
        for name, c in speed.get("criteria", {}).items():
            lines.append(f"- {name}: {c['value']:.3g} (target {c['target']}): {'met' if c['met'] else 'not met'}"
                         + ("" if c.get("naive_measured", True) else " (paper's path estimated)"))
        lines.append("")
    if quality:
        cfg = quality["config"]
        lines.append(f"Preference adherence: {cfg['prompts']} of {cfg['prompts_available']} prompts × {cfg['seeds']} "
                     f"seeds, {cfg['max_new_tokens']} new tokens, {cfg['model']}.\n")
        lines.append("| setting | dimension | Persona-judge vs direct | Persona-judge vs none | direct vs none | "
                     "paper vs direct | A/A |")
        lines.append("|---|---|---|---|---|---|---|")

        def cell(c: dict[str, Any] | None) -> str:
            if not c:
                return "–"
            return f"{c['win_rate']:.0%} [{c['ci95'][0]:.0%}, {c['ci95'][1]:.0%}]"

        for setting, res in quality["results"]["settings"].items():
            for dim, d in res["dimensions"].items():
                comps = d["comparisons"]
                tag = " †" if d["measurable_on_this_model"] is False else ""
                lines.append(f"| {setting} | {dim}{tag} | {cell(comps.get('persona_judge vs direct'))} | "
                             f"{cell(comps.get('persona_judge vs none'))} | {cell(comps.get('direct vs none'))} | "
                             f"{cell(comps.get('paper vs direct'))} | {cell(d['aa_control'].get('pooled'))} |")
        lines.append("\n† direct does not beat none on this dimension here: not measurable on this model.")
        for note in quality.get("notes", []):
            lines.append(f"\n{note}")
        lines.append("")
    for image in images:
        lines.append(f"![{image.stem}]({image.name})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", type=Path, default=RESULTS / "speed.json")
    parser.add_argument("--quality", type=Path, default=RESULTS / "quality.json")
    parser.add_argument("--quality-rules", type=Path, default=RESULTS / "quality_rules.json")
    parser.add_argument("--speed-rules", type=Path, default=RESULTS / "speed_rules.json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    speed = json.loads(args.speed.read_text()) if args.speed.is_file() else None
    quality = json.loads(args.quality.read_text()) if args.quality.is_file() else None
    images: list[Path] = []
    if speed is None:
        print(f"no {args.speed}: run python -m benchmarks.speed first; skipping the speed plots", file=sys.stderr)
    else:
        images += [p for p in (plot_lambda(speed, args.out), plot_length(speed, args.out), plot_prompt(speed, args.out)) if p]
    if quality is None:
        print(f"no {args.quality}: run python -m benchmarks.quality first; skipping the quality plot", file=sys.stderr)
    else:
        images += [p for p in (plot_quality(quality, args.out),) if p]
    rules = json.loads(args.quality_rules.read_text()) if args.quality_rules.is_file() else None
    extra = ""
    if rules is not None:
        from benchmarks.tables import quality_rules

        images += [p for p in (plot_quality(rules, args.out, "quality_rules_winrates.png"), plot_dose(rules, args.out))
                   if p]
        extra += "\n## Decoding rules against the direct prompt\n\n" + quality_rules(rules)
    speed_rules = json.loads(args.speed_rules.read_text()) if args.speed_rules.is_file() else None
    if speed_rules is not None and speed_rules.get("lengths"):
        images += [p for p in (plot_length(speed_rules, args.out, "speed_rules_length.png"),) if p]
    summary = args.out / "summary.md"
    summary.write_text(summary_markdown(speed, quality, images) + extra, encoding="utf-8")
    for path in [*images, summary]:
        print(f"wrote {path}")
    return images


if __name__ == "__main__":
    main()
