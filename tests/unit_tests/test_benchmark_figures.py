"""Every headline figure the docs quote matches the committed results file it comes from.

Each row names a document, a results file under benchmarks/results/, and how the quoted text is written from
that file's values (the formatting the document uses). The document's whitespace is collapsed, so a quote may
wrap across lines. A figure that changes in its results file without the document following (or a document
figure edited away from its file) fails here. The marked tables of benchmarks/README.md are re-rendered from
their files and compared whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@lru_cache(maxsize=None)
def doc(name: str) -> str:
    return " ".join((ROOT / name).read_text(encoding="utf-8").split())


@lru_cache(maxsize=None)
def results(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{x:.0%}"


def signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def ci2(v: list[float]) -> str:
    """[point, low, high] as "0.74 [0.51, 0.88]"."""
    return f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def ci_pct(rate: float, ci: list[float]) -> str:
    return f"{pct(rate)} [{pct(ci[0])}, {pct(ci[1])}]"


def stall_table(stall: dict) -> str:
    """The README's join_stall rows: whole, then each chunk size (the CPU default, 128, in bold)."""
    labels = {"whole": "whole (before)", "chunk_32": "32 columns at a time", "chunk_64": "64",
              "chunk_128": "**128 (the CPU default)**", "chunk_256": "256"}
    rows = []
    for key, label in labels.items():
        v = stall[key]
        gap = f"{v['max_gap_ms'] / 1000:.2f} s"
        gap = f"**{gap}**" if key == "chunk_128" else gap
        rows.append(f"| {label} | {gap} | {v['median_gap_ms']:.0f} ms | {v['newcomer_ttft_s']:.2f} s |")
    return " ".join(rows)


def newcomers_sentence(stall: dict) -> str:
    """The README's figures of four newcomers joining at once: oldest first against a chunk of each per gap."""
    new, old = stall["chunk_128"], stall["chunk_128_each"]
    return (f"longest gap is **{new['max_gap_ms'] / 1000:.2f} s** against {old['max_gap_ms'] / 1000:.2f} s when each "
            f"newcomer read a chunk between two steps (the earlier rule), and the newcomers' first tokens come after "
            f"{new['newcomer_ttft_s']:.1f} s on average instead of {old['newcomer_ttft_s']:.1f} s (the first after "
            f"{new['first_newcomer_ttft_s']:.1f} s instead of {old['first_newcomer_ttft_s']:.1f} s; the last "
            f"{round(100 * (new['last_newcomer_ttft_s'] / old['last_newcomer_ttft_s'] - 1))}% later, "
            f"{new['last_newcomer_ttft_s']:.1f} s against {old['last_newcomer_ttft_s']:.1f} s); the price is a "
            f"running request that waits for a chunk at most of its steps while they join (median gap "
            f"{new['median_gap_ms']:.0f} ms against {old['median_gap_ms']:.0f} ms)")


LEARNING_FRESH_ROWS = {"product@1": "product, γ = 1", "product@2": "product, γ = 2", "product@4": "product, γ = 4",
                       "product+length@2": "product with the length feature, γ = 2",
                       "best_of_4+length@1": "best of 4 (reward with length)"}


def learning_fresh_table(d: dict) -> str:
    """The README's table of decoding with a learned profile (benchmarks/results/learning_fresh.json)."""
    dec = d["decoding"]

    def ci(v: dict) -> str:
        return f"{v['win_rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"

    def short(v: list) -> str:
        return f"{v[0]:.0%}"

    direct = dec["direct_vs_plain"]
    rows = [f"| the preference written in the prompt | {ci(direct)} | {direct['strict_wins']} / "
            f"{direct['strict_losses']} | — | {short(direct['concise_median_shortening'])} |"]
    for key, label in LEARNING_FRESH_ROWS.items():
        v = dec["options"][key]
        rows.append(f"| {label} | {ci(v['vs_plain'])} | {v['vs_plain']['strict_wins']} / "
                    f"{v['vs_plain']['strict_losses']} | {ci(v['vs_direct'])} | "
                    f"{short(v['concise_median_shortening'])} |")
    return " ".join(rows)


def learning_fresh_selection(d: dict) -> str:
    sel = d["decoding"]["selection"]
    held = sel["confirmation"]
    p, q = held["vs_plain"], held["vs_direct"]
    return (f"chose **{sel['chosen']}**; on the other half alone it beats the plain answer "
            f"**{p['win_rate']:.2f}** [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] ({p['strict_wins']} strict wins, "
            f"{p['strict_losses']} losses) and the written preference {q['win_rate']:.2f} "
            f"[{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}]")


def learning_confirm(d: dict) -> str:
    """The README's confirmation of the profile default (product at γ = 4) on new users and answers."""
    option = d["decoding"]["options"]["product@4"]
    p, q, aa = option["vs_plain"], option["vs_direct"], d["decoding"]["aa_control"]
    return (f"after 10 choices it beats the plain answer **{p['win_rate']:.2f}** [{p['ci95'][0]:.2f}, "
            f"{p['ci95'][1]:.2f}] ({p['strict_wins']} strict wins, {p['strict_losses']} losses) and the written "
            f"preference {q['win_rate']:.2f} [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}], and concise users' answers "
            f"are {round(100 * option['concise_median_shortening'][0])}% shorter; the A/A control gives "
            f"{aa['win_rate']:.2f} [{aa['ci95'][0]:.2f}, {aa['ci95'][1]:.2f}]")


def learning(d: dict) -> dict:
    return d["learning"]


def settings(d: dict) -> dict:
    return d["results"]["settings"]


def vs_direct(d: dict, setting: str, dim: str, cond: str) -> dict:
    return settings(d)[setting]["dimensions"][dim]["comparisons"][f"{cond} vs direct"]


def fresh_row(check: dict) -> str:
    """The start of a γ's row in benchmarks/README.md's fresh-prompt table: its win rates, guards, perplexity."""
    sf, cf = check["settings"]["simple+friendly"], check["settings"]["concise+friendly"]
    gamma = float(check["condition"].removeprefix("persona_judge_g"))
    return "| {:g} | {:.1%}, {:.1%} | {:.1%}, {:.1%} | {}, {} | {:.2f}×, {:.2f}× | {} |".format(
        gamma, *sf["win_rates"].values(), *cf["win_rates"].values(), sf["guard_failures"], cf["guard_failures"],
        sf["perplexity_ratio"], cf["perplexity_ratio"], "yes" if check["passes"] else "no")[:-2]


def tps(d: dict, key: str) -> float:
    return d["table"][key]["tokens_per_s"]


FIGURES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    # (id, document, results file, the quoted text written from the file)
    # -- learning (README "Learn my preferences") --
    ("auc_10", "README.md", "learning.json",
     lambda d: f"ROC AUC **{ci2(learning(d)['active']['10']['held_out_auc']).replace(' [', '** [', 1)}"),
    ("auc_users_only", "README.md", "learning.json",
     lambda d: "[{1:.2f}, {2:.2f}] for the first figure".format(
         *learning(d)["active"]["10"]["held_out_auc_ci_over_users_only"])),
    ("accuracy_10", "README.md", "learning.json",
     lambda d: f"(accuracy {ci2(learning(d)['active']['10']['held_out_accuracy'])};"),
    ("after_20", "README.md", "learning.json",
     lambda d: f"{learning(d)['active']['20']['held_out_auc'][0]:.2f} and "
               f"{learning(d)['active']['20']['held_out_accuracy'][0]:.2f} after 20"),
    ("ceiling", "README.md", "learning.json", lambda d: f"reaches {learning(d)['ceiling_full_fit']['mean_auc']:.2f}"),
    ("active_minus_random", "README.md", "learning.json",
     lambda d: "AUC {} [{}, {}] after 10 choices, {} after 5 and {} after 20".format(
         *map(signed, learning(d)["active_minus_random"]["10"]["auc_active_minus_random"]),
         signed(learning(d)["active_minus_random"]["5"]["auc_active_minus_random"][0]),
         signed(learning(d)["active_minus_random"]["20"]["auc_active_minus_random"][0]))),
    ("l2_one", "README.md", "learning.json",
     lambda d: "at L2 = 1 random questions do better ({} [{}, {}])".format(
         *map(signed, d["l2_sensitivity_after_10"]["1.0"]["auc_active_minus_random"]))),
    ("l2_cv", "README.md", "learning.json",
     lambda d: "gives AUC {} after 10 choices, and PReF's questions {} [{}, {}] over random ones".format(
         ci2(learning(d)["l2_by_cross_validation"]["10"]["active_auc"]),
         *map(signed, learning(d)["l2_by_cross_validation"]["10"]["auc_active_minus_random"]))),
    ("l2_default", "README.md", "learning.json", lambda d: f"The fit's L2 strength ({d['config']['l2']:g}, the package"),
    ("top_pole", "README.md", "learning.json",
     lambda d: f"({pct(learning(d)['active']['10']['top_pole'][0])} after 10 choices)"),
    ("decoding_win", "README.md", "learning.json",
     lambda d: "on the user's own metric {} of the time".format(
         ci_pct(d["decoding_win_rate_vs_plain"]["all_user_types"]["win_rate"],
                d["decoding_win_rate_vs_plain"]["all_user_types"]["ci95"]))),
    ("strict", "README.md", "learning.json",
     lambda d: "**wins {} and loses {}** (the rest are draws, {}, and split outcomes of two-dimension users, {})".format(
         *(pct(d["decoding_win_rate_vs_plain"]["all_user_types"][k]) for k in ("win", "loss", "tie", "partial")))),
    ("strict_guided", "README.md", "learning_guidance.json",
     lambda d: "with guidance γ = {:g} on top, {}, wins {}, losses {}".format(
         d["config"]["decoding_guidance"],
         ci_pct(d["decoding_win_rate_vs_plain"]["all_user_types"]["win_rate"],
                d["decoding_win_rate_vs_plain"]["all_user_types"]["ci95"]),
         pct(d["decoding_win_rate_vs_plain"]["all_user_types"]["win"]),
         pct(d["decoding_win_rate_vs_plain"]["all_user_types"]["loss"]))),
    ("best_of_n", "README.md", "learning.json",
     lambda d: "the learned reward scores {} [{}, {}] against the plain answer".format(
         *map(pct, learning(d)["active"]["10"]["best_of_n_vs_plain"]))),
    ("users", "README.md", "learning.json",
     lambda d: f"{d['config']['users']} simulated users"),
    ("cost_warm", "README.md", "learning.json",
     lambda d: f"**{d['cost_per_choice']['threads_2']['warm_seconds']:.1f} s** on a 2-core "
               f"{(d.get('decoded_on') or d['machine'])['cpu']}"),
    ("cost_positions", "README.md", "learning.json",
     lambda d: "{:,} token positions a question; the first question, {:,}, takes {:.1f} s".format(
         d["cost_per_choice"]["threads_2"]["warm_positions"], d["cost_per_choice"]["threads_2"]["cold_positions"],
         d["cost_per_choice"]["threads_2"]["cold_seconds"])),
    ("cost_one_core", "README.md", "learning.json",
     lambda d: f"{d['cost_per_choice']['threads_1']['warm_seconds']:.1f} s on one core"),
    ("cost_bf16", "README.md", "learning.json",
     lambda d: "{:.1f} s, its features within {:.3f} of fp32's (the two answers' differences keep their sign {} of the time)".format(
         d["cost_per_choice"]["bfloat16"]["warm_seconds"], d["cost_per_choice"]["bfloat16"]["max_abs_feature_error"],
         pct(d["cost_per_choice"]["bfloat16"]["difference_sign_agreement"]))),
    # -- speed (README "Speed and quality, in brief") --
    ("lockstep_vs_generate_xeon", "README.md", "backends_xeon_prepack_on.json",
     lambda d: "runs at **{:.2f}×** `generate`'s tokens/s ({:.1f} against {:.1f}), the paper's schedule at {:.2f}×".format(
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"), tps(d, "transformers/lockstep"),
         tps(d, "transformers/generate"), tps(d, "transformers/speculative") / tps(d, "transformers/generate"))),
    ("lockstep_vs_generate_xeon_off", "README.md", "backends_xeon_prepack_off.json",
     lambda d: "lockstep runs at **{:.2f}×** ({:.1f} against {:.1f}), the paper's schedule at {:.2f}×".format(
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"), tps(d, "transformers/lockstep"),
         tps(d, "transformers/generate"), tps(d, "transformers/speculative") / tps(d, "transformers/generate"))),
    ("row_costs_xeon", "README.md", "backends_xeon_prepack_on.json",
     lambda d: "with the packed weights {:.1f} ms against {:.1f} ms".format(
         d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["2 sequences"])),
    ("row_costs_xeon_off", "README.md", "backends_xeon_prepack_off.json",
     lambda d: "with the default kernels {:.1f} ms against {:.1f} ms".format(
         d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["2 sequences"])),
    ("xeon_machine", "README.md", "backends_xeon_prepack_on.json",
     lambda d: "a {}-core {}, transformers {}".format(
         d["provenance"]["machine"]["cpu_cores"],
         " ".join(w for w in d["provenance"]["machine"]["cpu"].replace("(R)", "").split() if w != "Processor"),
         d["provenance"]["machine"]["transformers"].rsplit(".", 1)[0])),
    ("row_costs", "README.md", "backends.json",
     lambda d: "one-row forwards the slower ones ({:.1f} ms against {:.1f} ms for two rows), which handicapped "
               "`generate` and put lockstep at {:.2f}× there".format(
                   d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["2 sequences"],
                   tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    ("row_costs_bench", "benchmarks/README.md", "backends.json",
     lambda d: "a one-row forward with the packed weights cost {:.1f} ms against {:.1f} ms for two rows and {:.1f} ms "
               "for three".format(d["decode_ms"]["transformers"]["1 tokens"],
                                  d["decode_ms"]["transformers"]["2 sequences"],
                                  d["decode_ms"]["transformers"]["3 sequences"])),
    ("naive_measured", "README.md", "speed_naive_measured.json",
     lambda d: "{:.0f} s against {:.0f} s, **{:.1f}×** (lockstep {:.1f}×".format(
         d["lengths"]["series"]["naive_paper"][-1]["seconds"], d["lengths"]["series"]["persona_judge"][-1]["seconds"],
         d["criteria"]["greedy_l4_vs_naive_at_512"]["value"],
         d["criteria"]["greedy_l4_lockstep_vs_naive_at_512"]["value"])),
    ("naive_64", "README.md", "speed.json",
     lambda d: "measured up to 64 tokens ({:.1f}×)".format(
         d["lengths"]["series"]["persona_judge"][0]["tokens_per_s"] / d["lengths"]["series"]["naive_paper"][0]["tokens_per_s"])),
    # -- preference adherence --
    ("pj_vs_direct", "README.md", "quality_extended.json",
     lambda d: "({:.1%} and {:.1%}, slightly".format(vs_direct(d, "simple+friendly", "simple", "persona_judge")["win_rate"],
                                                   vs_direct(d, "concise+friendly", "concise", "persona_judge")["win_rate"])),
    ("not_measurable", "README.md", "quality_extended.json",
     lambda d: "reads {:.1%} [{}, {}]".format(vs_direct(d, "concise+friendly", "friendly", "persona_judge")["win_rate"],
                                             *map(pct, vs_direct(d, "concise+friendly", "friendly", "persona_judge")["ci95"]))),
    ("not_measurable_bench", "benchmarks/README.md", "quality_extended.json",
     lambda d: "(the direct prompt itself does not beat no preference on it: {:.1%} [{}, {}])".format(
         settings(d)["concise+friendly"]["dimensions"]["friendly"]["comparisons"]["direct vs none"]["win_rate"],
         *map(pct, settings(d)["concise+friendly"]["dimensions"]["friendly"]["comparisons"]["direct vs none"]["ci95"]))),
    ("gamma_125", "README.md", "quality_rules.json",
     lambda d: "simple {}, friendly {}; concise {}, friendly {}".format(
         *(ci_pct(c["win_rate"], c["ci95"]) for c in (
             vs_direct(d, "simple+friendly", "simple", "persona_judge_g1.25"),
             vs_direct(d, "simple+friendly", "friendly", "persona_judge_g1.25"),
             vs_direct(d, "concise+friendly", "concise", "persona_judge_g1.25"),
             vs_direct(d, "concise+friendly", "friendly", "persona_judge_g1.25"))))),
    ("gamma_125_ppl", "README.md", "quality_rules.json",
     lambda d: "at {:.2f}× its plain-model perplexity".format(
         settings(d)["simple+friendly"]["fluency"]["persona_judge_g1.25"]["ratio_vs_direct"])),
    ("gamma_125_rp", "README.md", "quality_rules_rp.json",
     lambda d: "({:.1%}, {:.1%};".format(vs_direct(d, "concise+friendly", "concise", "persona_judge_g1.25")["win_rate"],
                                        vs_direct(d, "concise+friendly", "friendly", "persona_judge_g1.25")["win_rate"])),
    ("corrected_no_penalty", "README.md", "quality_rules_g1.25_corrected.json",
     lambda d: "concise [{}, {}] without the penalty".format(*map(pct, d["pairs"]["concise+friendly/concise"]["ci"]))),
    ("corrected_penalty", "README.md", "quality_rules_rp_g1.25_corrected.json",
     lambda d: "simple [{}, {}] and friendly [{}, {}] of simple+friendly with it".format(
         *map(pct, d["pairs"]["simple+friendly/simple"]["ci"]), *map(pct, d["pairs"]["simple+friendly/friendly"]["ci"]))),
    ("corrected_level", "README.md", "quality_rules_g1.25_corrected.json",
     lambda d: f"({d['level']:.2%} CIs".replace(".00%", "%")),
    ("corrected_bench", "benchmarks/README.md", "quality_rules_g1.25_corrected.json",
     lambda d: "concise {} [{}, {}] without the penalty".format(
         pct(d["pairs"]["concise+friendly/concise"]["win_rate"]), *map(pct, d["pairs"]["concise+friendly/concise"]["ci"]))),
    ("corrected_bench_rp", "benchmarks/README.md", "quality_rules_rp_g1.25_corrected.json",
     lambda d: "simple {} [{}, {}] and friendly {} [{}, {}] of simple+friendly with it".format(
         pct(d["pairs"]["simple+friendly/simple"]["win_rate"]), *map(pct, d["pairs"]["simple+friendly/simple"]["ci"]),
         pct(d["pairs"]["simple+friendly/friendly"]["win_rate"]), *map(pct, d["pairs"]["simple+friendly/friendly"]["ci"]))),
    ("fresh_recommended", "README.md", "quality_fresh_rule.json",
     lambda d: "no γ passes, so no guided strength is recommended" if d["recommended"] is None
     else f"recommended γ = {d['recommended']}"),
    *[(f"fresh_row_{gamma}", "benchmarks/README.md", "quality_fresh_rule.json",
       lambda d, gamma=gamma: fresh_row(d["checks"][gamma])) for gamma in ("1.25", "1.5", "2")],
    ("fresh_g125_cis", "benchmarks/README.md", "quality_fresh.json",
     lambda d: "simple [{}, {}], friendly [{}, {}], concise [{}, {}], friendly [{}, {}]".format(
         *map(pct, vs_direct(d, "simple+friendly", "simple", "persona_judge_g1.25")["ci95"]),
         *map(pct, vs_direct(d, "simple+friendly", "friendly", "persona_judge_g1.25")["ci95"]),
         *map(pct, vs_direct(d, "concise+friendly", "concise", "persona_judge_g1.25")["ci95"]),
         *map(pct, vs_direct(d, "concise+friendly", "friendly", "persona_judge_g1.25")["ci95"]))),
    ("loop_at_1024", "benchmarks/README.md", "speed_rules.json",
     lambda d: "{} of its last window's 4-grams repeat earlier ones".format(
         pct(d["lengths"]["series"]["persona_judge"][-1]["window_repeated_ngram_share"]))),
    ("lockstep_ratio_bench", "benchmarks/README.md", "backends.json",
     lambda d: "that run lockstep ran at {:.2f}× `generate`".format(
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    ("xeon_bench", "benchmarks/README.md", "backends_xeon_prepack_on.json",
     lambda d: "({:.1f} ms for one row, {:.1f} ms for two), and lockstep ran at {:.2f}× `generate`".format(
         d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["2 sequences"],
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    ("xeon_bench_off", "benchmarks/README.md", "backends_xeon_prepack_off.json",
     lambda d: "with PyTorch's default kernels on both sides at {:.2f}×".format(
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    ("xeon_design", "docs/design.md", "backends_xeon_prepack_on.json",
     lambda d: "a one-position forward took {:.1f} ms and two rows {:.1f} ms with the packed weights, so lockstep ran "
               "at {:.2f}× `generate` there".format(
                   d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["2 sequences"],
                   tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    ("xeon_design_off", "docs/design.md", "backends_xeon_prepack_off.json",
     lambda d: "and at {:.2f}× with PyTorch's default kernels on both sides".format(
         tps(d, "transformers/lockstep") / tps(d, "transformers/generate"))),
    # -- backends --
    ("backends", "README.md", "backends.json",
     lambda d: "llama.cpp decodes the direct prompt at {:.0f} tokens/s (its own `Llama.generate`: {:.0f}), transformers "
               "at {:.0f}; Persona-judge (lockstep) runs at {:.0f} tokens/s on llama.cpp and {:.0f} on transformers "
               "({:.2f}×), i.e. {:.2f}× plain llama.cpp".format(
                   tps(d, "llamacpp/direct"), tps(d, "llamacpp/native"), tps(d, "transformers/direct"),
                   tps(d, "llamacpp/lockstep"), tps(d, "transformers/lockstep"),
                   tps(d, "llamacpp/lockstep") / tps(d, "transformers/lockstep"),
                   d["criteria"]["persona_judge_llamacpp_vs_native_direct"])),
    # -- serving (README "Scale it") --
    ("serve_replicas", "README.md", "serve.json",
     lambda d: "2 replicas decode Persona-judge at **{:.1f} tokens/s against {:.1f} for 1 ({:.2f}×)** with {} errors "
               "and {} mixed-up answers".format(
                   d["replicas"]["2"]["tokens_per_s"], d["replicas"]["1"]["tokens_per_s"], d["throughput_ratio"],
                   d["replicas"]["2"]["errors"] + d["replicas"]["1"]["errors"],
                   d["replicas"]["2"]["mixed_up"] + d["replicas"]["1"]["mixed_up"])),
    ("serve_fault", "README.md", "serve.json",
     lambda d: "killed under load took down **{} request ({} on the other replica)** and a new one answered "
               "**{:.1f} s** later".format(d["fault"]["affected"], d["fault"]["affected_elsewhere"],
                                           d["fault"]["recovery_s"])),
    ("serve_side_by_side", "README.md", "serve.json",
     lambda d: "(`llama_cpp.server`, {:.1f} tokens/s on the direct prompt), ours answers one preference at {:.1f} "
               "tokens/s (**{:.2f}×**".format(
                   d["side_by_side"]["llama_cpp_server"]["tokens_per_s"], d["side_by_side"]["plain"]["tokens_per_s"],
                   d["side_by_side"]["plain_vs_llama_cpp"])),
    ("serve_persona_judge", "README.md", "serve.json",
     lambda d: "Persona-judge (two preferences) at {:.1f} tokens/s (**{:.2f}×**".format(
         d["side_by_side"]["persona_judge"]["tokens_per_s"], d["side_by_side"]["persona_judge_vs_llama_cpp"])),
    # -- docs/design.md --
    ("design_row_costs", "docs/design.md", "backends.json",
     lambda d: "a one-position forward took {:.1f} ms and a 5-position one {:.1f} ms (two rows: {:.1f} ms)".format(
         d["decode_ms"]["transformers"]["1 tokens"], d["decode_ms"]["transformers"]["5 tokens"],
         d["decode_ms"]["transformers"]["2 sequences"])),
    ("design_reload", "docs/design.md", "speed.json",
     lambda d: "reading that checkpoint takes {:.1f} s; the first `load_model()` of a fresh process takes {:.1f}–{:.1f} s".format(
         d["cached_reload_s"]["load_model_again"], min(d["cached_reload_s"]["load_model_each"]),
         max(d["cached_reload_s"]["load_model_each"]))),
    ("design_process", "docs/design.md", "speed.json",
     lambda d: f"a whole new process with `import torch` {d['cached_reload_s']['process_with_imports']:.1f} s"),
    # -- the chat app under load --
    ("load_ttft", "examples/chat_app/README.md", "load.json",
     lambda d: f"p50 **{d['ttft_p50_s']:.1f} s**, p95 **{d['ttft_p95_s']:.1f} s**"),
    ("load_tps", "examples/chat_app/README.md", "load.json",
     lambda d: f"p50 **{d['tokens_per_s_p50']:.1f}**, p95 **{d['tokens_per_s_p95']:.1f}**"),
    ("load_aggregate", "examples/chat_app/README.md", "load.json",
     lambda d: f"| aggregate tokens/s | **{d['aggregate_tokens_per_s']:.1f}**"),
    ("load_memory", "examples/chat_app/README.md", "load.json", lambda d: f"**{d['server_peak_rss_mb']:.0f} MB** RSS"),
    ("load_counts", "examples/chat_app/README.md", "load.json",
     lambda d: f"{d['completed']} ({d['conversations']} conversations, {d['output_tokens']} tokens; {d['wall_s']} s wall"),
    # -- the chat app with its PostgreSQL restarted under load --
    ("db_restart", "examples/chat_app/README.md", "db_restart.json",
     lambda d: f"**{d['acknowledged_writes']} acknowledged writes, {d['lost_writes']} lost**; serving again "
               f"**{d['recovered_after_s']:.2f} s** after PostgreSQL was back; **{d['errors']} error(s)**, all among "
               f"the {d['in_flight_during_restart']} requests in flight during the restart ({d['errors_outside_restart']} "
               "outside it)"),
    ("db_restart_run", "examples/chat_app/README.md", "db_restart.json",
     lambda d: f"{d['requests']} requests; PostgreSQL stopped with `-m immediate` halfway and back "
               f"{d['postgres_down_s']:.1f} s later"),
    # -- continuous batching (README "Many users at once, and on a GPU"; issue 26) --
    ("batching_cpu", "README.md", "batching_cpu.json",
     lambda d: "batching decoded **{:.1f} tokens/s** in all against **{:.1f}** for the same 8 requests with one "
               "forward per request per step: **{:.2f}×**".format(
                   d["models"]["embedded"]["conditions"]["batched_8"]["tokens_per_s"],
                   d["models"]["embedded"]["conditions"]["unbatched_8"]["tokens_per_s"], d["batching_speedup_8"])),
    # -- chunked prefill: how long a newcomer's long prompts stall a running request (README, the table) --
    ("join_stall_cpu", "README.md", "join_stall_cpu.json", lambda d: stall_table(d["models"]["embedded"]["join_stall"])),
    ("join_stall_newcomers", "README.md", "join_stall_newcomers_cpu.json",
     lambda d: newcomers_sentence(d["models"]["embedded"]["join_stall"])),
    # -- llama.cpp's attention settings and the prompt cache's exactness (docs/design.md, "Prompt cache") --
    ("flash_attention", "docs/design.md", "llamacpp_flash_attention.json",
     lambda d: "decode steps keep flash attention's speed ({:.1f} ms a 2-row step against {:.1f} ms with it off), "
               "and chat-sized prompts read as fast ({:.2f} s); only long prompts read slower (2 × 500 tokens: "
               "{:.1f} s against {:.1f} s;".format(
                   d["cost"]["backend/chat"]["step_ms"], d["cost"]["no_flash_attention/chat"]["step_ms"],
                   d["cost"]["backend/chat"]["prompt_s"], d["cost"]["backend/long_prompt"]["prompt_s"],
                   d["cost"]["llama.cpp/long_prompt"]["prompt_s"])),
    ("flash_attention_exactness", "docs/design.md", "llamacpp_flash_attention.json",
     lambda d: "a position's logits up to {:.2f} apart on the embedded model".format(
         max(v["max_abs_difference"] for v in d["exactness"]["llama.cpp"]["batches"].values()))),
    ("load_learning", "examples/chat_app/README.md", "load_learning.json",
     lambda d: "**{} comparisons and {} picks**, {} errors, {} mixed-up answers, {} leaks, all {} disconnects "
               "cancelled; the server's peak memory **{:.0f} MB** RSS on llama.cpp".format(
                   d["comparisons"], d["picks"], d["errors"], d["mixed_up"], d["cross_user_leaks"],
                   d["disconnects"], d["server_peak_rss_mb"])),
    ("load_learning_latency", "examples/chat_app/README.md", "load_learning.json",
     lambda d: "A comparison took **{:.0f} s** at p50 ({:.0f} s p95)".format(d["comparison_p50_s"],
                                                                           d["comparison_p95_s"])),
    # -- decoding with a learned profile: the full run of the redesigned benchmark (README, issue 25) --
    ("learning_fresh_table", "README.md", "learning_fresh.json", learning_fresh_table),
    ("learning_fresh_selection", "README.md", "learning_fresh.json", learning_fresh_selection),
    ("learning_fresh_auc", "README.md", "learning_fresh.json",
     lambda d: "after 10 choices the profile predicts the user's held-out choices with ROC AUC **{:.2f}** [{:.2f}, "
               "{:.2f}] with PReF's questions and {:.2f} with random ones".format(
                   *d["learning"]["active"]["10"]["held_out_auc"], d["learning"]["random"]["10"]["held_out_auc"][0])),
    ("learning_fresh_cost", "README.md", "learning_fresh.json",
     lambda d: "took {:.1f} s on both cores in fp32 and {:.1f} s in bfloat16".format(
         d["cost_per_choice"]["threads_2"]["warm_seconds"], d["cost_per_choice"]["bfloat16"]["warm_seconds"])),
    ("learning_confirm", "README.md", "learning_confirm.json", learning_confirm),
    ("learning_cost_llamacpp", "README.md", "learning_cost.json",
     lambda d: ("takes **{:.1f} s** on llama.cpp against {:.1f} s on transformers in fp32 and {:.1f} s in "
                "bfloat16").format(
         d["cost_per_choice"]["llamacpp"]["warm_seconds"], d["cost_per_choice"]["threads_2"]["warm_seconds"],
         d["cost_per_choice"]["bfloat16"]["warm_seconds"])),
    ("llamacpp_builds", "README.md", "llamacpp_builds.json",
     lambda d: "one with AVX-512 and VNNI reads {:.0f} positions/s with logits against {:.0f} ({:.2f}×); one with "
               "llama.cpp's AMX kernels".format(
                   d["builds"]["avx512_vnni"]["tokens_per_second_with_logits"],
                   d["builds"]["installed"]["tokens_per_second_with_logits"],
                   d["builds"]["avx512_vnni"]["vs_installed"])
     + (" (this Xeon has AMX, which PyTorch's bfloat16 matmuls use) dies with an illegal instruction"
        if all(r.get("error") == "exit status -4" for r in d["builds"]["amx"]["runs"]) else " runs")),
    ("learning_cost_read_rate", "README.md", "learning_cost.json",
     lambda d: "llama.cpp reads {} positions/s with the Q4_1 kernels of the portable AVX2 build `make install` makes "
               "({} with every position's logits, which scoring needs), and a choice reads {:,} positions".format(
                   d["cost_per_choice"]["llamacpp"]["read_rates"]["tokens_per_second_without_logits"],
                   d["cost_per_choice"]["llamacpp"]["read_rates"]["tokens_per_second_with_logits"],
                   d["cost_per_choice"]["llamacpp"]["warm_positions"])),
    ("seeded_cache_load", "docs/design.md", "load_seeded_cache.json",
     lambda d: "0 of {} differ".format(d["completed"]) if d["mixed_up"] == 0 else "never"),
]


@pytest.mark.parametrize("document, source, quote", [pytest.param(*row[1:], id=row[0]) for row in FIGURES])
def test_quoted_figure_matches_its_results_file(document, source, quote):
    expected = quote(results(source))
    assert expected in doc(document), (
        f"{document} should quote {expected!r}, written from benchmarks/results/{source}; the text and the file "
        "disagree (update whichever is stale)")


def test_a_wrong_figure_fails():
    # The check itself: the planted text with one figure off by a hundredth is not in the README.
    right = FIGURES[0][3](results("learning.json"))
    wrong = re.sub(r"\d\.\d\d", lambda m: f"{float(m[0]) + 0.01:.2f}", right, count=1)
    assert right in doc("README.md") and wrong not in doc("README.md")


def test_marked_tables_render_from_their_results_files():
    from benchmarks.tables import MARKER, TABLES

    path = ROOT / "benchmarks" / "README.md"
    text = path.read_text(encoding="utf-8")
    found = list(MARKER.finditer(text))
    assert len(found) >= 5
    for m in found:
        source = json.loads((path.parent / m["source"]).read_text(encoding="utf-8"))
        assert TABLES[m["name"]](source) == m["body"], f"table {m['name']} ({m['source']}) is stale"


PENDING: set[str] = {"gpu.json"}
"""Results files the docs name as the output of a run not made yet: the GPU run of issue 26 (no GPU machine lent
yet)."""


def test_results_files_quoted_in_the_docs_exist():
    for name in {row[2] for row in FIGURES}:
        assert (RESULTS / name).is_file(), name
    for document in ("README.md", "benchmarks/README.md", "docs/design.md", "docs/usage.md",
                     "examples/chat_app/README.md"):
        for linked in re.findall(r"results/([\w.\-]+\.(?:json|png|md))", doc(document)):
            assert linked in PENDING or (RESULTS / linked).is_file(), f"{document} links benchmarks/results/{linked}, which is missing"
