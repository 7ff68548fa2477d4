"""Fast checks of the benchmark code: metrics, guards, statistics, the naive paper path and the speed pipeline."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from benchmarks import metrics
from benchmarks.common import BenchModel, ForwardCounter
from benchmarks.metrics import DIMENSIONS, compare, guard_failures, outcome_matrix, win_rate
from langchain_persona_judge.decoding.reference import engine_history, forward_schedule, naive_generate, norm_logits
from langchain_persona_judge import generate
from tests.helpers import tiny_llama

# -- metrics ----------------------------------------------------------------------------------------------


def test_words_keep_contractions_and_normalise_apostrophes():
    assert metrics.words("It’s fine, isn't it? 42 cats!") == ["it's", "fine", "isn't", "it", "42", "cats"]
    assert metrics.word_count("") == 0
    assert metrics.word_count("one two  three\nfour") == 4


def test_contractions_exclude_possessives():
    assert metrics.is_contraction("don't") and metrics.is_contraction("it's") and metrics.is_contraction("gonna")
    assert not metrics.is_contraction("sky's") and not metrics.is_contraction("earth's")


def test_informality_rate_counts_each_feature():
    pytest.importorskip("emoji")
    # hey (interjection), i'm (contraction + pronoun), you (pronoun), "!" x2, one emoji: 7 features over 7 words.
    text = "Hey! I'm telling you, plants eat light 😀!"
    assert metrics.words(text) == ["hey", "i'm", "telling", "you", "plants", "eat", "light"]
    assert metrics.informality_rate(text) == pytest.approx(7 / 7)
    assert metrics.informality_rate("Photosynthesis converts light energy into chemical energy.") == 0.0
    assert metrics.informality_rate("") == 0.0
    assert metrics.informality_rate("Hahaha that is lol") == pytest.approx(2 / 4)


def test_distinct_content_words_ignore_stop_words_and_repeats():
    assert metrics.distinct_content_words("The cat and the dog. The cat!") == 2
    assert metrics.distinct_content_words("it is what it is") == 0


def test_readability_metrics_order_simple_and_expert_texts():
    pytest.importorskip("textstat_rs")
    simple = "The sun is hot. It gives us light. Plants use it to grow."
    expert = ("Photosynthetic carbon fixation proceeds via ribulose-1,5-bisphosphate carboxylase/oxygenase, "
              "whose catalytic inefficiency necessitates substantial enzymatic investment.")
    assert metrics.flesch_reading_ease(simple) > metrics.flesch_reading_ease(expert) + 30
    assert metrics.flesch_kincaid_grade(expert) > metrics.flesch_kincaid_grade(simple) + 5
    assert math.isnan(metrics.flesch_reading_ease(""))


def test_vader_compound_is_a_sentence_mean():
    pytest.importorskip("vaderSentiment")
    assert metrics.vader_compound("") == 0.0
    rude = "You are an idiot. Go away and stop wasting my time."
    kind = "What a lovely question. I am happy to help you!"
    assert metrics.vader_compound(rude) < 0 < metrics.vader_compound(kind)
    both = metrics.vader_compound(rude.split(". ")[0] + ". " + kind.split(". ")[0] + ".")
    assert both == pytest.approx(
        np.mean([metrics.vader_compound("You are an idiot."), metrics.vader_compound("What a lovely question.")])
    )


# -- guards and comparisons -----------------------------------------------------------------------------


def test_guards():
    question = "Why is the sky blue?"
    assert guard_failures("", question) == ["empty"]
    assert guard_failures("Blue because of air.", question) == ["empty"]  # 4 words
    assert "echo" in guard_failures("Why is the sky blue? The sky is blue.", question)
    assert "repetitive" in guard_failures("light bends here. " * 10, question)
    answer = "Sunlight scatters off air molecules, and shorter blue wavelengths scatter the most, so we see blue."
    assert guard_failures(answer, question) == []


def test_compare_uses_direction_margin_and_guards():
    concise, simple = DIMENSIONS["concise"], DIMENSIONS["simple"]  # lower word count wins, margin 5; higher ease, margin 5
    assert compare(50, 60, False, False, concise) == 1.0
    assert compare(60, 50, False, False, concise) == 0.0
    assert compare(50, 55, False, False, concise) == 0.5  # exactly the margin: a tie
    assert compare(70, 60, False, False, simple) == 1.0
    assert compare(62, 60, False, False, simple) == 0.5
    assert compare(90, 10, True, False, simple) == 0.0  # a guard failure loses whatever its metric
    assert compare(10, 90, False, True, simple) == 1.0
    assert compare(10, 90, True, True, simple) == 0.5
    assert compare(float("nan"), 50, False, False, simple) == 0.0


def test_outcome_and_aa_matrices():
    concise = DIMENSIONS["concise"]
    a = [(10.0, False), (100.0, False)]
    b = [(50.0, False), (50.0, True)]
    assert outcome_matrix(a, b, concise).tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert metrics.aa_matrix(a, concise).tolist() == [[1.0]]
    assert metrics.aa_matrix([(1.0, False)] * 4, concise).shape == (2, 1)


# -- statistics --------------------------------------------------------------------------------------------


def test_win_rate_extremes_and_ties():
    all_wins = win_rate([np.ones((2, 2))] * 10, n_boot=200)
    assert (all_wins.win_rate, all_wins.ci_low, all_wins.ci_high) == (1.0, 1.0, 1.0)
    ties = win_rate([np.full((2, 2), 0.5)] * 10, n_boot=200)
    assert ties.win_rate == 0.5 and ties.ties == 1.0 and ties.contains_half
    mixed = win_rate([np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])], n_boot=200)
    assert mixed.win_rate == 0.5 and mixed.wins == 0.25 and mixed.ties == 0.5 and mixed.losses == 0.25


def test_win_rate_counts_fractional_outcomes_as_neither_win_tie_nor_loss():
    # Planted: a two-dimension user's outcome is the mean of its per-dimension outcomes, so 0.75 and 0.25 occur.
    # Outcomes 1, 0.75, 0.5, 0.25, 0, 0: one strict win, one tie, two strict losses, two partial outcomes.
    rate = win_rate([np.array([[v]]) for v in (1.0, 0.75, 0.5, 0.25, 0.0, 0.0)], n_boot=100)
    assert rate.win_rate == pytest.approx(2.5 / 6)
    assert (rate.wins, rate.ties, rate.losses, rate.partial) == pytest.approx((1 / 6, 1 / 6, 2 / 6, 2 / 6))
    assert rate.to_dict()["loss"] == round(2 / 6, 4) and rate.to_dict()["partial"] == round(2 / 6, 4)
    assert "partial" not in win_rate([np.array([[1.0, 0.0]])], n_boot=10).to_dict()


def test_bootstrap_ci_is_reproducible_covers_the_truth_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    small = [rng.choice([0.0, 0.5, 1.0], size=(2, 2)) for _ in range(20)]
    large = [rng.choice([0.0, 0.5, 1.0], size=(2, 2)) for _ in range(200)]
    a, b = win_rate(small, n_boot=500, seed=3), win_rate(small, n_boot=500, seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.contains_half and win_rate(large, n_boot=500).contains_half
    assert win_rate(large, n_boot=500).half_width < a.half_width
    ragged = small[:5] + [np.ones((1, 2))]
    r = win_rate(ragged, n_boot=300)
    assert 0 <= r.ci_low <= r.win_rate <= r.ci_high <= 1


def test_bootstrap_ci_has_about_nominal_coverage_on_an_aa_null():
    # A/A: both seeds of one condition come from the same law, so the win rate's truth is 50%.
    rng = np.random.default_rng(1)
    concise = DIMENSIONS["concise"]
    covered = 0
    for _ in range(60):
        mats = [metrics.aa_matrix([(float(rng.normal(80, 15)), False), (float(rng.normal(80, 15)), False)], concise)
                for _ in range(40)]
        covered += win_rate(mats, n_boot=300, seed=int(rng.integers(1 << 30))).contains_half
    assert covered >= 51  # ~95% nominal; binomial slack for 60 trials


def _record(pid: str, seed: int, setting: str | None, condition: str, concise: float, friendly: float,
            guards: list[str] | None = None) -> dict:
    return {"prompt_id": pid, "question": "q", "seed": seed, "setting": setting, "condition": condition,
            "text": "", "tokens": 100, "metrics": {"concise": concise, "friendly": friendly}, "guards": guards or []}


def test_analysis_marks_measurable_dimensions_and_passes_the_aa_control():
    from benchmarks import quality

    rng = np.random.default_rng(2)
    records = []
    setting = "concise+friendly"
    for p in range(30):
        for seed in range(2):
            # direct and persona_judge are much shorter than none; friendliness is the same law everywhere.
            records.append(_record(f"q{p}", seed, None, "none", rng.normal(120, 10), rng.normal(0.05, 0.02)))
            records.append(_record(f"q{p}", seed, setting, "direct", rng.normal(60, 10), rng.normal(0.05, 0.02)))
            records.append(_record(f"q{p}", seed, setting, "persona_judge", rng.normal(60, 10),
                                   rng.normal(0.05, 0.02), guards=["echo"] if p == 0 else None))
    out = quality.analyse(records, [setting], n_boot=300)
    dims = out["settings"][setting]["dimensions"]
    assert dims["concise"]["measurable_on_this_model"]
    assert dims["concise"]["comparisons"]["direct vs none"]["ci95"][0] > 0.9
    assert not dims["friendly"]["measurable_on_this_model"]
    assert dims["friendly"]["comparisons"]["direct vs none"]["verdict"] == "no detectable difference"
    assert "paper vs none" not in dims["concise"]["comparisons"]  # the paper's condition was not run
    assert dims["concise"]["aa_control"]["pooled"]["contains_50"] and out["aa_control_ok"]
    guards = out["settings"][setting]["guards_and_lengths"]["persona_judge"]
    assert guards["echo"] == pytest.approx(2 / 60, abs=1e-4)


def test_quality_rescore_recomputes_from_saved_texts(tmp_path):
    for module in ("textstat_rs", "vaderSentiment", "emoji"):
        pytest.importorskip(module)
    from benchmarks import quality

    texts = {
        "none": "Photosynthesis is the process by which green plants convert light energy into chemical energy, "
                "storing it in glucose while releasing oxygen as a by-product of splitting water molecules.",
        "direct": "Plants eat light! They make food from the sun, and it's super fun to watch them grow, right?",
        "persona_judge": "Hey! Plants are like tiny chefs: they cook sugar with sunlight. Cool, isn't it? You bet!",
    }
    records = [
        {"prompt_id": f"q{p}", "question": "How do plants make food?", "seed": s, "setting": None if c == "none"
         else "simple+friendly", "condition": c, "text": t, "tokens": 30, "finish_reason": "stop"}
        for p in range(4) for s in range(2) for c, t in texts.items()
    ]
    saved = tmp_path / "quality.json"
    saved.write_text(json.dumps({"config": {"settings": ["simple+friendly"], "prompts": 4, "prompts_available": 100,
                                            "subset": True, "seeds": 2, "max_new_tokens": 128, "lookahead": 4,
                                            "model": "test"}, "records": records}))
    out = tmp_path / "rescored.json"
    report = quality.main(["--rescore", str(saved), "--out", str(out), "--bootstrap", "200"])
    assert json.loads(out.read_text())["results"] == report["results"]
    simple = report["results"]["settings"]["simple+friendly"]["dimensions"]["simple"]
    assert simple["comparisons"]["direct vs none"]["win_rate"] == 1.0 and simple["measurable_on_this_model"]
    assert report["results"]["settings"]["simple+friendly"]["dimensions"]["friendly"]["comparisons"][
        "persona_judge vs none"]["win_rate"] == 1.0


def test_quality_time_budget_runs_a_complete_prefix_of_the_prompts(monkeypatch):
    import time

    from benchmarks import quality

    def fake_run(job):
        time.sleep(0.1)
        return {**{k: v for k, v in job.items() if k != "preferences"}, "text": "x", "tokens": 1}

    monkeypatch.setattr(quality, "run_job", fake_run)
    monkeypatch.setattr(quality, "_init_worker", lambda *a: None)
    jobs = [{"prompt_id": f"q{p}", "seed": s, "setting": None, "condition": "none", "preferences": []}
            for p in range(5) for s in range(2)]
    records, stopped = quality.generate_all(jobs, None, workers=1, threads=1, max_seconds=0.5)
    ids = list(dict.fromkeys(r["prompt_id"] for r in records))
    assert stopped and 2 <= len(ids) < 5
    assert ids == [f"q{p}" for p in range(len(ids))] and len(records) == 2 * len(ids)
    records, stopped = quality.generate_all(jobs, None, workers=1, threads=1, max_seconds=None)
    assert not stopped and len(records) == 10


def test_shared_dir_fails_clearly(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setenv(common.SHARED_ENV, str(tmp_path))
    monkeypatch.setattr(common, "ROOT", tmp_path / "repo")
    with pytest.raises(SystemExit, match="--shared PATH"):
        common.shared_dir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "prompts.jsonl").write_text('{"id": "q0", "prompt": "hi"}\n')
    assert common.shared_dir() == tmp_path.resolve()


# -- the naive paper path ----------------------------------------------------------------------------------

PROMPTS = [([1, 2, 3, 4], [5, 6, 7]), ([9], [10, 11, 12, 13, 14, 15]), ([3, 4], [5], [6, 7, 8]), ([1, 2, 3],)]


@pytest.mark.parametrize("eos", [None, 3])
@pytest.mark.parametrize("lookahead", [1, 2, 4, 8])
def test_naive_paper_path_matches_the_engine_greedy(lookahead, eos):
    model = tiny_llama(seed=1, sharpness=4.0, eos_token_id=eos)
    for prompts in PROMPTS:
        tensors = [torch.tensor(p) for p in prompts]
        ours = generate(model, tensors, max_new_tokens=24, lookahead=lookahead, do_sample=False)
        naive = naive_generate(model, tensors, max_new_tokens=24, lookahead=lookahead)
        assert naive.token_ids == ours.token_ids
        assert naive.finish_reason == ours.finish_reason
        assert (naive.iterations, naive.drafted, naive.accepted, naive.forward_calls) == (
            ours.stats.iterations, ours.stats.drafted, ours.stats.accepted, ours.stats.forward_calls)


def test_naive_paper_path_rereads_the_whole_prefix_and_its_schedule_follows_from_the_engine():
    model = tiny_llama(seed=2, sharpness=4.0)
    prompts = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7])]
    counter = ForwardCounter(model)
    naive = naive_generate(model, prompts, max_new_tokens=30, lookahead=4, eos_token_id=[])
    assert (counter.calls, counter.positions) == (naive.forward_calls, naive.positions) == (
        len(naive.forward_lengths), sum(naive.forward_lengths))
    assert min(naive.forward_lengths) >= 3 and max(naive.forward_lengths) >= 30  # prompt + emitted, every time
    counter.remove()
    ours = generate(model, prompts, max_new_tokens=30, lookahead=4, do_sample=False, eos_token_id=[])
    emitted_before, drafted = engine_history(ours, 30, 4, 2)
    assert forward_schedule([4, 3], emitted_before, drafted) == naive.forward_lengths
    assert ours.stats.positions < naive.positions / 3


def test_naive_paper_path_samples_reproducibly_and_swaps_roles_once():
    model = tiny_llama(seed=3, sharpness=3.0)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([7, 8])]
    opts = dict(max_new_tokens=25, lookahead=3, do_sample=True, temperature=0.8, top_k=10, top_p=0.9, seed=5)
    a, b = naive_generate(model, prompts, **opts), naive_generate(model, prompts, **opts)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 25
    seen: list[int] = []
    swap = naive_generate(model, prompts, max_new_tokens=12, lookahead=2, roles="swap_once", eos_token_id=[],
                          on_iteration=seen.append)
    emitted_before = [0, *seen[:-1]]
    drafted = [min(2, 12 - e - 1) for e in emitted_before]
    assert forward_schedule([3, 2], emitted_before, drafted, roles="swap_once") == swap.forward_lengths
    assert swap.forward_lengths[:3] == [3, 4, 4]  # persona 0 drafts first, persona 1 judges; then persona 1 drafts
    probs = norm_logits(torch.tensor([3.0, 2.0, 1.0, 0.0]), 1.0, 2, None)
    assert probs[2:].sum() == 0 and probs.sum() == pytest.approx(1.0)
    nucleus = norm_logits(torch.tensor([5.0, 0.0, 0.0, 0.0]), 1.0, None, 0.5)
    assert nucleus.tolist() == [1.0, 0.0, 0.0, 0.0]


# -- the speed pipeline ------------------------------------------------------------------------------------


def test_latency_fit_recovers_a_quadratic():
    from benchmarks.speed import fit_latency, latency

    grid = [{"length": L, "seconds": 0.02 + 0.001 * L + 2e-7 * L * L} for L in (32, 128, 512, 2048)]
    coef = fit_latency(grid)
    assert coef == pytest.approx([0.02, 0.001, 2e-7], rel=1e-4)
    assert latency(coef, 4096) == pytest.approx(0.02 + 0.001 * 4096 + 2e-7 * 4096**2, rel=1e-4)


@pytest.fixture(scope="module")
def quick_speed(tmp_path_factory):
    """``python -m benchmarks.speed --quick`` on a tiny random Llama: (report, path of the JSON)."""
    from benchmarks import speed

    model = tiny_llama(seed=4, sharpness=2.0)
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "load_bench_model", lambda *a, **k: BenchModel(model, None, "tiny random Llama", True))
        report = speed.main(["--quick", "--random-init", "smollm2-135m", "--out", str(out)])
    return report, out


def test_speed_quick_runs_end_to_end_on_a_tiny_model(quick_speed):
    report, out = quick_speed
    saved = json.loads(out.read_text())
    assert saved["criteria"] == report["criteria"]
    settings = saved["main"]["settings"]
    assert {"generate", "direct", "persona_judge_greedy_l4", "persona_judge_sample_l2"} <= set(settings)
    assert settings["generate"]["speed_ratio_vs_generate"] == 1.0
    assert settings["generate"]["forward_calls_per_token"] == 1.0
    # The lockstep schedule: one batched forward per token, by the hook's count; each feeds both personas.
    lockstep = settings["persona_judge_greedy_l4_lockstep"]
    assert lockstep["forward_calls_per_token"] == 1.0
    assert lockstep["positions_per_token"] > 2.0  # the hook counts every row: two personas per forward
    assert {"persona_judge_sample_l4_lockstep", "persona_judge_greedy_l4_dc0.5"} <= set(settings)
    assert saved["criteria"]["greedy_l4_lockstep_forward_calls_per_token"]["met"]
    assert "persona_judge_lockstep" in saved["lengths"]["series"]
    lengths = saved["lengths"]
    assert [p["new_tokens"] for p in lengths["series"]["naive_paper"]] == [8, 16, 32]
    assert [p["measured"] for p in lengths["series"]["naive_paper"]] == [True, True, False]
    assert lengths["estimate_check"]["same_tokens_as_engine"]
    naive_pos = [p["positions_per_token"] for p in lengths["series"]["naive_paper"]]
    ours_pos = [p["positions_per_token"] for p in lengths["series"]["persona_judge"]]
    assert all(n > 5 * o for n, o in zip(naive_pos, ours_pos))
    assert len(saved["prompts"]["rows"]) == 2 and saved["naive_latency"]["fit_a_b_c"]


def test_plots_and_summary_from_speed_results(quick_speed, tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    _, out = quick_speed
    missing = str(tmp_path / "missing.json")
    images = plots.main(["--speed", str(out), "--quality", missing, "--quality-rules", missing,
                         "--speed-rules", missing, "--out", str(tmp_path)])
    assert {p.name for p in images} == {"speed_lambda.png", "speed_length.png", "speed_prompt.png"}
    assert all(p.stat().st_size > 10_000 for p in images)
    assert "tokens/s" in (tmp_path / "summary.md").read_text()


# -- fluency, loops, decoding rules and tables -------------------------------------------------------------


def test_answer_nll_matches_a_token_by_token_computation():
    from tests.helpers import full_logits

    model = tiny_llama(seed=5, sharpness=3.0)
    prompt, answer = [1, 2, 3, 4, 5], [7, 7, 2, 9, 30, 0]
    nll = metrics.answer_nll(model, prompt, answer)
    # Directly: re-read the growing sequence for every answer token and take its log-probability.
    expected = []
    for k, token in enumerate(answer):
        logits = full_logits(model, prompt + answer[:k])[-1]
        expected.append(-float(torch.log_softmax(logits, -1)[token]))
    assert nll == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert math.exp(nll) > 1.0
    assert math.isnan(metrics.answer_nll(model, prompt, []))


def test_loop_detector_flags_loops_and_not_ordinary_text():
    assert metrics.repeated_ngram_share([1, 2, 3]) == 0.0  # shorter than n
    assert metrics.repeated_ngram_share(list(range(50))) == 0.0
    loop = [1, 2, 3, 4, 5] * 20
    # After the first cycle (5 + 3 tokens) every 4-gram is a repeat.
    assert metrics.repeated_ngram_share(loop) == pytest.approx((len(loop) - 3 - 5) / (len(loop) - 3))
    text = list(range(100)) + [1, 2, 3, 4, 5, 6] * 10
    report = metrics.loop_report(text, window=60)
    assert report["looping"] and report["tail_repeated_ngram_share"] > 0.9 and report["tail_tokens"] == 60
    fresh = metrics.loop_report(list(range(200)), window=50)
    assert not fresh["looping"] and fresh["repeated_ngram_share"] == 0.0
    # A tail that repeats what came much earlier (not itself) still counts as a loop.
    assert metrics.loop_report(list(range(40)) + list(range(40)), window=40)["looping"]


def test_conditions_and_the_sweep_plan():
    from benchmarks import quality

    assert quality.condition_spec("persona_judge_g1.5") == {"prompts": "personas", "combine": "judge",
                                                             "guidance": 1.5, "rule": "persona_judge"}
    assert quality.condition_spec("product")["combine"] == "product"
    assert quality.condition_spec("direct_g2") == {"prompts": "direct", "combine": "judge", "guidance": 2.0,
                                                   "rule": "direct"}
    assert quality.condition_name("product", 1.0) == "product" and quality.condition_name("direct", 3) == "direct_g3"
    prompts = [{"id": f"q{i}", "prompt": "x"} for i in range(6)]
    texts = {d: d for d in DIMENSIONS}
    jobs = quality.plan_jobs(prompts, ["simple+friendly", "concise+friendly"], [], 2, 128, texts, [2.0], [1.5, 3], 3)
    groups = [g for g, _ in itertools.groupby(jobs, key=lambda j: j["group"])]
    # Sweep groups are spread among the main ones (one after every second prompt), so a budget keeps prefixes.
    assert groups == ["q0", "q1", "q0/sweep", "q2", "q3", "q1/sweep", "q4", "q5", "q2/sweep"]
    main = [j for j in jobs if j["group"] == "q0" and j["seed"] == 0]
    assert [j["condition"] for j in main if j["setting"] == "simple+friendly"] == [
        "direct", "persona_judge", "product", "persona_judge_g2", "product_g2", "direct_g2"]
    sweep = {j["condition"] for j in jobs if j["group"].endswith("/sweep")}
    assert sweep == {f"{r}_g{g}" for r in ("persona_judge", "product", "direct") for g in ("1.5", "3")}
    # Every condition of a prompt and seed shares its engine seed.
    assert len({j["engine_seed"] for j in jobs if j["prompt_id"] == "q1" and j["seed"] == 1}) == 1


def _rules_records(rng, prompts=24):
    """Synthetic scored records: direct and the rules; 'product_g2' is shorter and friendlier than direct but
    more perplexing; 'persona_judge' is the direct prompt's equal; 'direct_g2' is strong but often repetitive."""
    records = []
    setting = "concise+friendly"
    # (mean length, mean informality, mean plain-model NLL, one response in `fail_every` fails a guard)
    laws = {"none": (120, 0.02, 1.2, 0), "direct": (80, 0.05, 1.5, 12), "persona_judge": (80, 0.05, 1.5, 12),
            "product_g2": (40, 0.12, 1.8, 0), "direct_g2": (40, 0.12, 1.6, 2)}
    for p in range(prompts):
        for seed in range(2):
            for cond, (length, friendly, nll, fail_every) in laws.items():
                fails = bool(fail_every) and (2 * p + seed) % fail_every == 0
                r = _record(f"q{p}", seed, None if cond == "none" else setting, cond, rng.normal(length, 8),
                            rng.normal(friendly, 0.01), guards=["repetitive"] if fails else None)
                r["plain_nll"] = float(rng.normal(nll, 0.1))
                records.append(r)
    return records, setting


def test_rules_analysis_reports_no_guard_rates_joint_wins_fluency_and_the_bar():
    from benchmarks import quality

    records, setting = _rules_records(np.random.default_rng(7))
    res = quality.analyse(records, [setting], n_boot=300)["settings"][setting]
    concise = res["dimensions"]["concise"]["comparisons"]
    assert {"product_g2 vs direct", "product_g2 vs none", "direct_g2 vs direct",
            "persona_judge vs direct"} <= set(concise)
    # Without the guards, the repetitive guided direct prompt wins more than with them.
    assert concise["direct_g2 vs direct"]["no_guards"]["win_rate"] > concise["direct_g2 vs direct"]["win_rate"] + 0.1
    both = res["both"]["product_g2 vs direct"]
    assert both["wins_all"]["share"] > 0.8 and both["loses_all"]["share"] < 0.05
    assert res["both"]["persona_judge vs direct"]["wins_all"]["share"] < 0.3
    flu = res["fluency"]
    assert flu["product_g2"]["ratio_vs_direct"] == pytest.approx(math.exp(0.3), rel=0.05)
    lo, hi = flu["product_g2"]["ratio_vs_direct_ci95"]
    assert lo < flu["product_g2"]["ratio_vs_direct"] < hi
    crit = res["criteria"]
    assert crit["product_g2"]["wins_measurable_met"] and crit["product_g2"]["guards_met"]
    assert crit["product_g2"]["perplexity_met"] and crit["product_g2"]["met"]  # exp(0.3) = 1.35 <= 1.5
    assert not crit["direct_g2"]["guards_met"] and not crit["direct_g2"]["met"]
    assert not crit["persona_judge"]["wins_measurable_met"]


def _rules_report(tmp_path):
    from benchmarks import quality

    records, setting = _rules_records(np.random.default_rng(8), prompts=12)
    analysis = quality.analyse(records, [setting], n_boot=200)
    config = {"prompts": 12, "prompts_available": 100, "seeds": 2, "max_new_tokens": 128, "sweep_gammas": [],
              "sweep_prompts": 0, "model": "test model", "machine": {"cpu": "cpu", "cpu_cores": 2}}
    report = {"config": config, "results": analysis, "records": records, "notes": []}
    path = tmp_path / "quality_rules.json"
    path.write_text(json.dumps(report))
    return report, path


def test_table_renderer_and_markdown_markers(tmp_path):
    from benchmarks import tables

    report, path = _rules_report(tmp_path)
    md = tables.quality_rules(report)
    assert "**concise+friendly**" in md and "| product, γ=2 | 12 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| product, γ=2 |"))
    dims = report["results"]["settings"]["concise+friendly"]["dimensions"]
    c = dims["concise"]["comparisons"]["product_g2 vs direct"]
    assert f"{c['win_rate']:.0%} [{c['ci95'][0]:.0%}, {c['ci95'][1]:.0%}]" in row and row.endswith("| **met** |")
    assert "no (wins, guards)" in next(line for line in md.splitlines() if line.startswith("| direct prompt, γ=2 |"))
    assert "| concise+friendly | concise |" in tables.quality_measurable(report)
    assert "| product | 2 | 12 |" in tables.quality_dose(report)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:quality_measurable quality_rules.json -->\nstale\n<!-- /table -->\nafter\n")
    assert tables.update_markdown(readme) == ["quality_measurable"]
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("<!-- /table -->\nafter\n")
    assert tables.quality_measurable(report) in text
    tables.update_markdown(readme)
    assert readme.read_text() == text  # idempotent


def test_dose_plot_from_a_rules_report(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    _, path = _rules_report(tmp_path)
    images = plots.main(["--speed", str(tmp_path / "none.json"), "--quality", str(tmp_path / "none.json"),
                         "--quality-rules", str(path), "--speed-rules", str(tmp_path / "none.json"),
                         "--out", str(tmp_path)])
    assert {p.name for p in images} == {"quality_rules_winrates.png", "quality_dose.png"}
    assert "Decoding rules against the direct prompt" in (tmp_path / "summary.md").read_text()


def test_speed_reports_the_rules_rows_and_loops(quick_speed):
    report, out = quick_speed
    settings = json.loads(out.read_text())["main"]["settings"]
    rows = {name: settings[name]["rows_per_forward"] for name in (
        "generate", "persona_judge_greedy_l4_lockstep", "product_greedy", "persona_judge_greedy_l4_lockstep_g2",
        "product_greedy_g2", "direct_g2")}
    # One row per persona, plus the reference prompt's under guidance; one batched forward per token.
    assert rows == {"generate": 1.0, "persona_judge_greedy_l4_lockstep": 2.0, "product_greedy": 2.0,
                    "persona_judge_greedy_l4_lockstep_g2": 3.0, "product_greedy_g2": 3.0, "direct_g2": 2.0}
    assert all(settings[name]["forward_calls_per_token"] == 1.0 for name in rows)
    assert settings["product_greedy"]["acceptance_rate"] is None
    assert all(0 <= s["repeated_ngram_share"] <= 1 for s in settings.values())
    saved = json.loads(out.read_text())
    assert all(len(r["token_ids"]) == saved["main"]["max_new_tokens"] for r in saved["main"]["runs"])
    lengths = saved["lengths"]
    assert {"product", "persona_judge_lockstep_g2"} <= set(lengths["series"])
    for key, ids in lengths["token_ids"].items():
        last = lengths["series"][key][-1]
        assert len(ids) == 32 and last["repeated_ngram_share"] == metrics.loop_report(ids)["repeated_ngram_share"]
        assert isinstance(last["looping"], bool)
    from benchmarks import tables

    assert "| product_greedy_g2 |" in tables.speed_rules(saved)
    assert "| persona_judge_lockstep_g2 |" in tables.speed_lengths(saved)


def test_quality_resume_decodes_only_what_is_missing(tmp_path, monkeypatch):
    for module in ("textstat_rs", "vaderSentiment", "emoji"):
        pytest.importorskip(module)
    from benchmarks import quality

    shared = tmp_path / "shared"
    (shared / "bench").mkdir(parents=True)
    (shared / "reference").mkdir()
    (shared / "bench" / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Why is thing {i} so?"}) + "\n" for i in range(4)))
    (shared / "reference" / "preferences.json").write_text(json.dumps(
        {"psoups": {d.psoups: f"Be {name}." for name, d in DIMENSIONS.items()}}))
    decoded: list[tuple] = []

    def fake_run(job):
        decoded.append((job["prompt_id"], job["seed"], job["setting"], job["condition"]))
        return {**{k: v for k, v in job.items() if k not in ("preferences", "max_new_tokens")},
                "text": f"An answer about thing {job['prompt_id']} with some words in it, seed {job['seed']}.",
                "tokens": 12, "token_ids": list(range(12)), "plain_nll": 1.0 + 0.1 * job["seed"]}

    monkeypatch.setattr(quality, "run_job", fake_run)
    monkeypatch.setattr(quality, "_init_worker", lambda *a: None)
    out = tmp_path / "q.json"
    common = ["--shared", str(shared), "--settings", "concise+friendly", "--paper-settings", "--gammas", "2",
              "--workers", "1", "--max-minutes", "0", "--bootstrap", "100", "--out", str(out)]
    quality.main(["--prompts", "2", *common])
    first = len(decoded)
    assert first == 2 * 2 * (1 + 6)  # prompts x seeds x (none + the six conditions)
    report = quality.main(["--prompts", "3", "--resume", str(out), *common])
    assert {d[0] for d in decoded[first:]} == {"q2"} and len(decoded) - first == first // 2
    assert report["config"]["prompts"] == 3 and len(report["records"]) == len(decoded)
    assert report["config"]["resumed_from"] == str(out)
    assert [r["prompt_id"] for r in report["records"]][:2] == ["q0", "q0"]  # in plan order


def test_best_of_n_takes_the_rewards_pick_against_the_plain_answer() -> None:
    from benchmarks.learning import best_of_n, metric_table

    question = "How do I keep a plant alive?"
    plain = ("Water it when the top of the soil feels dry, give it bright indirect light, and feed it once a "
             "month in spring and summer.")
    longest = (plain + " Check the leaves each week for pests, wipe off any dust, turn the pot so every side gets "
               "light, and move it to a bigger pot when roots grow out of the holes at the bottom.")
    texts = [plain, "Water it when the soil is dry.", longest]
    sets = [(np.eye(3), metric_table(texts, question), 0, 0)]  # feature j marks answer j; prompt 0
    assert best_of_n(np.array([0.0, 1.0, 0.0]), ("concise",), sets) == 1.0  # the short answer: a win
    assert best_of_n(np.array([0.0, 0.0, 1.0]), ("concise",), sets) == 0.0  # the longest one: a loss
    assert best_of_n(np.array([1.0, 0.0, 0.0]), ("concise",), sets) == 0.5  # the plain answer itself: a draw
    # two prompts average; no prompt with a plain answer: undefined, not a silent 0
    assert best_of_n(np.array([0.0, 1.0, 0.0]), ("concise",), sets * 2) == 1.0
    assert math.isnan(best_of_n(np.zeros(3), ("concise",), []))
