"""The llama.cpp backend on tiny random Llamas exported to unquantised GGUF files: the same logits as
transformers, the same greedy tokens for every rule, each rule's law against the backend's own analytic
distribution, caches that stay consistent after crops, and clear errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from langchain_persona_judge import generate
from langchain_persona_judge.decoding.options import DecodingStats
from langchain_persona_judge.errors import ModelLoadError
from tests.conftest import llama_cpp_or_skip
from tests.helpers import chi_square_pvalue, full_logits, product_law, tiny_gguf

PROMPTS = [[1, 5, 9, 12, 3], [4, 7, 30, 11], [8, 8, 21]]
REFERENCE = [6, 13]
EOS = [2]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers tiny Llama, the same weights in llama.cpp)."""
    llama_cpp_or_skip()
    from langchain_persona_judge.decoding.backends.llamacpp import LlamaCppModel

    model, path = tiny_gguf(tmp_path_factory.mktemp("gguf"), seed=1, vocab_size=64, sharpness=10.0, eos_token_id=2)
    return model, LlamaCppModel(path, n_threads=1)


def _prompts(k: int = 2) -> list[torch.Tensor]:
    return [torch.tensor(p) for p in PROMPTS[:k]]


def test_logits_match_transformers(pair):
    model, llama = pair
    assert llama.vocab_size == 64 and llama.context_length == 512 and llama.eos_token_ids == frozenset(EOS)
    stats = DecodingStats()
    sequences = llama.sequences([len(p) for p in PROMPTS], 8, stats)
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(sequences.forward(i, prompt, len(prompt)), full_logits(model, prompt),
                                   atol=2e-3, rtol=1e-3)
    # a batch: every row's next-token logits, rows of different lengths and no padding
    batch = llama.batch(PROMPTS, 4, stats)
    first = batch.prefill()
    after = batch.step(17)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(first[row], full_logits(model, prompt)[-1], atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(after[row], full_logits(model, prompt + [17])[-1], atol=2e-3, rtol=1e-3)
    assert stats.forward_calls == len(PROMPTS) + 2


RULES = [
    {"schedule": "speculative"},
    {"schedule": "lockstep"},
    {"schedule": "speculative", "lookahead": 2, "draft_confidence": 0.3},
    {"combine": "product", "weights": (0.7, 0.3)},
    {"combine": "product", "guidance": 1.5},
    {"schedule": "lockstep", "guidance": 2.0},
    {"schedule": "lockstep", "repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()))
@pytest.mark.parametrize("k", [2, 3])
def test_greedy_tokens_match_transformers(pair, rule, k):
    """Unquantised weights: both backends pick the same tokens, rule by rule."""
    model, llama = pair
    options = {"max_new_tokens": 40, "do_sample": False, "eos_token_id": [], **rule}  # no EOS: 40 tokens to compare
    if options.get("guidance", 1.0) != 1.0 or (options.get("weights") and k != 2):
        options["reference"] = torch.tensor(REFERENCE)
    if "weights" in options and k != 2:
        options["weights"] = tuple([1.0 / k] * k)
    expected = generate(model, _prompts(k), **options)
    got = generate(llama, _prompts(k), **options)
    assert got.token_ids == expected.token_ids and len(got.token_ids) == 40
    assert got.finish_reason == expected.finish_reason
    assert [(e.drafter, e.judge, e.kind) for e in got.stats.trace] == [
        (e.drafter, e.judge, e.kind) for e in expected.stats.trace]


@pytest.mark.parametrize("lookahead", [1, 3, 5])
def test_greedy_speculative_equals_lockstep_on_llamacpp(pair, lookahead):
    _, llama = pair
    common = {"max_new_tokens": 48, "do_sample": False, "lookahead": lookahead, "eos_token_id": []}
    speculative = generate(llama, _prompts(3), schedule="speculative", **common)
    lockstep = generate(llama, _prompts(3), schedule="lockstep", **common)
    assert speculative.token_ids == lockstep.token_ids
    # the speculative schedule reads the judge's drafts in one decode: fewer decodes than tokens
    assert speculative.stats.forward_calls != lockstep.stats.forward_calls


def _llama_logits(llama, prompt: list[int]) -> torch.Tensor:
    sequences = llama.sequences([len(prompt)], 1, DecodingStats())
    try:
        return sequences.forward(0, prompt, 1)[-1]
    finally:
        sequences.release()


def _probs(scores: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / T), written out (not the engine's warpers)."""
    return product_law([scores.reshape(-1)], (1.0,), temperature=temperature)


def _first_tokens(model, runs: int, **options) -> Counter:
    counts: Counter = Counter()
    for seed in range(runs):
        counts[generate(model, _prompts(2), seed=seed, eos_token_id=[], **options).token_ids[0]] += 1
    return counts


@pytest.mark.parametrize("schedule", ["speculative", "lockstep"])
@pytest.mark.parametrize("max_new_tokens", [1, 2], ids=["bonus", "draft-accept-residual"])
def test_first_token_follows_the_judge_on_llamacpp(pair, schedule, max_new_tokens):
    """The law, computed from llama.cpp's own logits: the first token follows the judge (persona 1)."""
    _, llama = pair
    p = _probs(_llama_logits(llama, PROMPTS[1]), 0.9)
    q = _probs(_llama_logits(llama, PROMPTS[0]), 0.9)
    assert 0.5 * np.abs(p - q).sum() > 0.2, "the personas must disagree for this test to mean anything"
    counts = _first_tokens(llama, 2000, max_new_tokens=max_new_tokens, schedule=schedule, temperature=0.9)
    assert chi_square_pvalue(counts, p, 2000) > 1e-3
    assert chi_square_pvalue(counts, q, 2000) < 1e-6


def test_product_and_guidance_laws_on_llamacpp(pair):
    """The law written out in ``product_law`` (the reference weighted ``1 − γ Σ w``), from llama.cpp's logits."""
    _, llama = pair
    logits = [_llama_logits(llama, p) for p in PROMPTS[:2]]
    reference = _llama_logits(llama, REFERENCE)
    expected = product_law(logits, (0.6, 0.4), reference, 2.0)
    counts = _first_tokens(llama, 2000, max_new_tokens=1, combine="product", weights=(0.6, 0.4), guidance=2.0,
                           reference=torch.tensor(REFERENCE))
    assert chi_square_pvalue(counts, expected, 2000) > 1e-3
    assert chi_square_pvalue(counts, product_law(logits, (0.6, 0.4)), 2000) < 1e-6


def test_sequences_stay_consistent_after_crops(pair):
    """After every speculative iteration (rejections crop the caches), each persona's cache gives the logits a
    fresh context computes for its whole sequence."""
    _, llama = pair
    from langchain_persona_judge.decoding import DecodingOptions, SpeculativeDecoder

    rejections = 0
    for seed in range(3):
        options = DecodingOptions(max_new_tokens=30, lookahead=4, do_sample=True, temperature=1.0, seed=seed,
                                  eos_token_id=[])
        decoder = SpeculativeDecoder(llama, _prompts(2), options)
        while decoder.finish_reason is None:
            decoder._iterate()
            for persona in decoder.personas:
                assert persona.cached + len(persona.pending(decoder.token_ids)) == len(persona.prompt) + len(
                    decoder.token_ids)
        rejections += sum(e.kind == "residual" for e in decoder.stats.trace)
        for persona in decoder.personas:
            pending = persona.pending(decoder.token_ids)
            cached = persona.forward(pending, 1)[-1]
            # float noise (a whole-sequence decode sums in another order) is ~5e-4 here; a stale draft left
            # in a cache moves these logits by O(1)
            torch.testing.assert_close(cached, _llama_logits(llama, persona.prompt + decoder.token_ids),
                                       atol=5e-3, rtol=1e-3)
        decoder.release()
        assert all(p.cached == 0 for p in decoder.personas)
    assert rejections >= 3


def test_backend_choice_errors(pair, tmp_path):
    from langchain_persona_judge import load_model
    from langchain_persona_judge.runtime import resolve_backend

    with pytest.raises(ModelLoadError, match="runs a .gguf file"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct", backend="llamacpp")
    with pytest.raises(ModelLoadError, match="not one of"):
        load_model(None, backend="vllm")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf", backend="llamacpp")
    _, llama = pair
    assert resolve_backend("auto", llama.path, "cpu") == "llamacpp"
    assert resolve_backend("auto", llama.path, "cpu", "float32") == "transformers"  # a dtype asks for transformers
    assert resolve_backend("transformers", llama.path, "cpu") == "transformers"
    with pytest.raises(ModelLoadError, match="dtype= and prepack="):
        load_model(llama.path, backend="llamacpp", dtype="bfloat16")


def test_a_full_context_is_a_clear_error(pair):
    _, llama = pair
    from langchain_persona_judge.errors import DecodingError

    with pytest.raises((ValueError, DecodingError), match="context"):
        generate(llama, [torch.tensor([1] * 600), torch.tensor([3, 4])], max_new_tokens=4)
