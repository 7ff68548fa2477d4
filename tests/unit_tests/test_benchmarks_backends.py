"""benchmarks/backends.py: its plan, summary (rates, ratios, criteria), tables and runs, on planted data and a tiny
random model (no llama.cpp decode). Expected values are worked out by hand in the tests."""

from __future__ import annotations

import pytest
import torch

from benchmarks import backends, tables
from langchain_persona_judge.decoding.backends import TransformersBackend
from tests.helpers import tiny_llama


def _run(backend: str, condition: str, seconds: float, tokens: int = 128, forwards: int = 128, positions: int = 160,
         looping: bool = False) -> dict:
    return {"backend": backend, "condition": condition, "seconds": seconds, "tokens": tokens,
            "token_ids": list(range(tokens)), "forward_calls": forwards, "positions": positions,
            "loop": {"looping": looping}}


PLANTED = [
    _run("transformers", "generate", 4.0), _run("transformers", "generate", 4.0, looping=True),
    _run("transformers", "direct", 4.0), _run("transformers", "direct", 4.0),          # 256 / 8 s = 32 tok/s
    _run("transformers", "lockstep", 6.0, positions=300), _run("transformers", "lockstep", 10.0, positions=300),
    _run("transformers", "speculative", 16.0, forwards=200),                             # 8 tok/s
    _run("llamacpp", "native", 1.0), _run("llamacpp", "direct", 2.0),                     # 128 and 64 tok/s
    _run("llamacpp", "lockstep", 4.0), _run("llamacpp", "speculative", 8.0),              # 32 and 16 tok/s
]


def test_summary_rates_are_total_tokens_over_total_seconds():
    table = backends.summarise(PLANTED)["table"]
    lockstep = table["transformers/lockstep"]
    assert lockstep["tokens_per_s"] == 16.0  # 256 tokens in 16 s, not the mean of 21.33 and 12.8
    assert lockstep["tokens_per_s_runs"] == [21.33, 12.8]
    assert lockstep["runs"] == 2
    assert lockstep["rows_per_token"] == round(600 / 256, 3)
    assert table["transformers/speculative"]["forwards_per_token"] == round(200 / 128, 3)
    assert table["transformers/generate"]["looping_share"] == 0.5


def test_summary_ratios_are_against_each_reference():
    table = backends.summarise(PLANTED)["table"]
    lockstep = table["transformers/lockstep"]
    assert lockstep["vs_transformers_direct"] == 0.5        # 16 / 32
    assert lockstep["vs_llamacpp_native"] == 0.125          # 16 / 128
    assert lockstep["vs_transformers_speculative"] == 2.0   # 16 / 8
    assert table["transformers/generate"]["vs_transformers_lockstep"] == 2.0  # 32 / 16: generate is faster
    assert table["llamacpp/lockstep"]["vs_llamacpp_direct"] == 0.5   # 32 / 64, its own backend's direct prompt
    assert table["llamacpp/native"]["vs_llamacpp_native"] == 1.0


def test_criteria_take_the_faster_persona_judge_schedule_of_each_backend():
    criteria = backends.summarise(PLANTED)["criteria"]
    assert criteria == {"persona_judge_llamacpp_vs_transformers": 2.0,  # 32 (lockstep) / 16 (lockstep)
                        "persona_judge_llamacpp_vs_native_direct": 0.25,  # 32 / 128
                        "persona_judge_llamacpp_vs_engine_direct": 0.5}   # 32 / 64
    only_tf = backends.summarise([r for r in PLANTED if r["backend"] == "transformers"])["criteria"]
    assert only_tf == {}


def test_plan_runs_each_backends_baseline_then_every_condition():
    steps = backends.plan(["transformers", "llamacpp"])
    assert steps[0] == ("transformers", "generate") and steps[len(backends.CONDITIONS) + 1] == ("llamacpp", "native")
    assert [c for b, c in steps if b == "llamacpp"][1:] == backends.CONDITIONS
    assert backends.engine_options("judge_g2") == {"schedule": "lockstep", "guidance": 2.0}
    assert backends.engine_options("product_g1.5") == {"combine": "product", "guidance": 1.5}
    with pytest.raises(KeyError):
        backends.engine_options("nonsense")


def test_tables_render_the_summary_and_the_forward_costs():
    summary = backends.summarise(PLANTED)
    report = {"config": {"max_new_tokens": 128, "questions": ["q"], "repeats": 2, "threads": 1,
                         "machine": {"cpu": "Test CPU", "load_average": [0.5]}},
              **summary, "decode_ms": {"transformers": {"1 tokens": 40.0, "1 sequences": 40.0, "2 tokens": 30.0,
                                                        "2 sequences": 20.0}}}
    text = tables.backends(report)
    assert "| Persona-judge, lockstep | transformers | 16.0 | 0.50× | 0.12× |" in text
    assert "**2.00×** Persona-judge on transformers, **0.25×**" in text
    costs = tables.backend_costs(report)
    assert "| transformers | n tokens of one sequence | 40.0 ms (1.0×) | 30.0 ms (0.8×) |" in costs
    assert "| transformers | 1 token in each of n sequences | 40.0 ms (1.0×) | 20.0 ms (0.5×) |" in costs


def test_runs_on_a_tiny_model_emit_exactly_n_tokens_and_the_direct_prompt_matches_generate():
    model = tiny_llama(seed=3, sharpness=4.0)
    prompts = {"direct": [torch.tensor([1, 5, 7, 2])], "personas": [torch.tensor([1, 5, 9]), torch.tensor([1, 6, 9])],
               "reference": torch.tensor([1, 9])}
    models = {"transformers": TransformersBackend(model)}  # what load_model returns
    plain = backends.run_once("transformers", "generate", models, prompts, 6)
    direct = backends.run_once("transformers", "direct", models, prompts, 6)
    assert plain["tokens"] == direct["tokens"] == 6
    assert direct["token_ids"] == plain["token_ids"]  # greedy: the engine's direct prompt is transformers' own
    assert plain["forward_calls"] == 6 and plain["positions"] == 4 + 6 - 1
    for condition in ("lockstep", "judge_g2"):
        run = backends.run_once("transformers", condition, models, prompts, 6)
        assert run["tokens"] == 6 and run["forward_calls"] >= 6 and "looping" in run["loop"]


def test_decode_costs_measure_every_size_and_layout_on_transformers():
    model = tiny_llama(seed=1, vocab_size=512)  # the cost probe feeds token 500
    costs = backends.decode_costs({"transformers": TransformersBackend(model)}, [1, 2, 3, 4], sizes=(1, 2), reps=2)
    assert set(costs) == {"transformers"}
    assert set(costs["transformers"]) == {"1 tokens", "1 sequences", "2 tokens", "2 sequences"}
    assert all(v > 0 for v in costs["transformers"].values())
