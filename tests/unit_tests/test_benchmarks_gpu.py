"""benchmarks/gpu.py: its JSON contract on a quick CPU run of the tiny config, its ratios on planted figures, and
the shapes of the configs it builds (parameter counts of the real models, worked out from their model cards)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks import gpu

EVERY_CONDITION = {*gpu.SINGLE, "batched_1", "batched_8", "unbatched_8"}


def test_a_quick_cpu_run_prints_the_contract_as_its_last_line(capsys):
    gpu.main(["--device", "cpu", "--quick", "--json"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["device"] == "cpu" and report["device_type"] == "cpu"
    tiny = report["models"]["tiny"]
    assert set(tiny["conditions"]) == EVERY_CONDITION
    errors = {name: c["error"] for name, c in tiny["conditions"].items() if "error" in c}
    assert not errors
    # Every request emits exactly --max-new-tokens tokens (EOS ignored): 6 each, 8 requests in batched_8.
    assert tiny["conditions"]["lockstep_k2"]["tokens"] == 6
    assert tiny["conditions"]["batched_8"]["tokens"] == tiny["conditions"]["unbatched_8"]["tokens"] == 48
    rates = {name: c["tokens_per_s"] for name, c in tiny["conditions"].items()}
    assert report["batching_speedup_8"] == pytest.approx(rates["batched_8"] / rates["unbatched_8"], rel=1e-2)
    assert report["lockstep_vs_generate"] == {"tiny": pytest.approx(rates["lockstep_k2"] / rates["generate"],
                                                                    rel=1e-2)}
    # join_stall: the newcomer's prompts read whole and in the quick run's 16-column chunks, one run each.
    stall = tiny["join_stall"]
    assert set(stall) == {"long_prompt_tokens", "tokens", "whole", "chunk_16"} and stall["tokens"] == 32
    for setting in ("whole", "chunk_16"):
        figures = stall[setting]
        assert len(figures["runs"]) == 1 and figures["newcomer_ttft_s"] > 0
        assert figures["max_gap_ms"] >= figures["median_gap_ms"] > 0


def test_ratios_are_against_generate_and_the_unbatched_requests():
    planted = {"generate": {"tokens_per_s": 100.0}, "lockstep_k2": {"tokens_per_s": 92.0},
               "product_k2": {"error": "boom"}, "batched_1": {"tokens_per_s": 50.0},
               "batched_8": {"tokens_per_s": 300.0}, "unbatched_8": {"tokens_per_s": 120.0},
               "batched_32": {"tokens_per_s": 600.0}}
    out = gpu.ratios(planted)
    assert out["vs_generate"] == {"generate": 1.0, "lockstep_k2": 0.92}  # a failed condition has no ratio
    assert out["batching_speedup_8"] == 2.5
    assert out["batched_32_vs_1"] == 12.0


@pytest.mark.parametrize(("shape", "billions"), [("llama-3.2-1b", 1.236), ("llama-3.1-8b", 8.030),
                                                 ("smollm2-135m", 0.1345)])
def test_the_configs_have_the_real_models_sizes(shape, billions):
    config = LlamaConfig(**gpu.load_config(shape)["config"])
    with torch.device("meta"):  # no memory: only the parameters' shapes
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=2e-3)


def test_an_unknown_shape_names_the_known_ones():
    with pytest.raises(SystemExit, match=r"--shapes 'llama-70b'.*'llama-3.1-8b'.*'tiny'"):
        gpu.load_config("llama-70b")


def test_measure_takes_conditions_in_turns_and_keeps_going_past_a_failure():
    order: list[str] = []

    def run(name: str, tokens: int):
        def once() -> int:
            order.append(name)
            return tokens
        return once

    def broken() -> int:
        order.append("broken")
        raise RuntimeError("no kernel for this")

    out = gpu.measure("cpu", 3, {"a": run("a", 10), "b": run("b", 20), "broken": broken})
    # Warm-ups, then A B, B A, A B: a drift of the machine falls on both alike; the failed one is not retried.
    assert order == ["a", "b", "broken", "a", "b", "b", "a", "a", "b"]
    assert out["broken"] == {"error": "RuntimeError: no kernel for this"}
    assert out["a"]["tokens"] == 10 and out["b"]["tokens"] == 20 and len(out["a"]["seconds"]) == 3
