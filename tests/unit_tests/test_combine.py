"""The weighted product, guidance and repetition controls: their laws against the analytic distributions, and
identities against existing paths (tiny random Llamas)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from langchain_persona_judge import DecodingOptions, generate
from langchain_persona_judge.decoding.acceptance import build_processors, process
from tests.helpers import chi_square_pvalue, full_logits, guided_law, product_law, tiny_llama

PROMPTS = [[1, 2, 3, 4], [5, 6, 7]]
REFERENCE = [9, 10]


def _pvalue(counts: Counter, probs: np.ndarray) -> float:
    return chi_square_pvalue(counts, probs, sum(counts.values()))


def _first_tokens(model, runs: int, **options) -> Counter:
    counts: Counter = Counter()
    for seed in range(runs):
        gen = generate(model, [torch.tensor(p) for p in PROMPTS], seed=seed, **options)
        counts[gen.token_ids[0]] += 1
    return counts


def _probs(scores: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / T), written out (not the engine's warpers)."""
    return product_law([scores.reshape(-1)], (1.0,), temperature=temperature)


# -- laws ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "guidance"),
    [((0.7, 0.3), 1.0), ((0.5, 0.5), 2.5), ((1.2, -0.7), 1.0), ((0.6, 0.4), -0.5), ((0.2, 0.3, 0.1), 1.7)],
)
def test_combine_functions_equal_the_written_out_laws(weights: tuple[float, ...], guidance: float) -> None:
    """``combine.product`` and ``combine.guided`` against their formulas, row by row, on random logits."""
    from langchain_persona_judge.decoding import combine

    generator = torch.Generator().manual_seed(len(weights) + int(10 * guidance))
    personas = 3 * torch.randn(len(weights), 50, generator=generator)
    reference = 3 * torch.randn(50, generator=generator)
    got = torch.softmax(combine.product(personas, torch.tensor(weights), reference, guidance).double(), -1)
    np.testing.assert_allclose(got.numpy(), product_law(list(personas), weights, reference, guidance), atol=1e-5)
    no_reference = torch.softmax(combine.product(personas, torch.tensor(weights)).double(), -1)
    np.testing.assert_allclose(no_reference.numpy(), product_law(list(personas), weights), atol=1e-5)
    guided = torch.softmax(combine.guided(personas, reference, guidance).double(), -1)
    for row, persona in zip(guided, personas):
        np.testing.assert_allclose(row.numpy(), guided_law(persona, reference, guidance), atol=1e-5)


# runs, sized by power (noncentral chi-square against the exact laws; a failure is a p-value <= 1e-3): with 1800 runs
# the reference weighted 1 - sum(w) instead of 1 - guidance sum(w) fails (0.5, 0.5, 2.5) and (0.6, 0.4, -0.5) with
# power 1, the reference left out fails the three cases that read it with power > 0.9999, the weights swapped
# between the personas fails (1.2, -0.7) with power 1. (0.7, 0.3) keeps 3000: its law is close to persona 0's, and
# the test's own check that it is far from it (p < 1e-6) has power 0.985 at 3000 runs, 0.58 at 1800.
@pytest.mark.parametrize(
    ("weights", "guidance", "runs"),
    [((0.7, 0.3), 1.0, 3000), ((0.5, 0.5), 2.5, 1800), ((1.2, -0.7), 1.0, 1800), ((0.6, 0.4), -0.5, 1800)],
)
def test_product_first_token_follows_the_combined_law(weights: tuple[float, float], guidance: float, runs: int
                                                      ) -> None:
    """The expected law is written out in ``product_law`` (numpy, not ``combine.product``): the reference row
    carries the weight ``1 − γ Σ w``, so a mis-weighted reference fails here."""
    model = tiny_llama(seed=1, sharpness=4.0)
    logits = [full_logits(model, p)[-1] for p in PROMPTS]
    reference = full_logits(model, REFERENCE)[-1]
    expected = product_law(logits, weights, reference, guidance, temperature=0.9)
    needs_reference = guidance != 1.0 or abs(sum(weights) - 1) > 1e-9
    counts = _first_tokens(model, runs, max_new_tokens=1, combine="product", weights=weights, guidance=guidance,
                           temperature=0.9, reference=torch.tensor(REFERENCE) if needs_reference else None)
    # Against the analytic law, and far from each persona's own law (so the test can fail).
    assert _pvalue(counts, expected) > 1e-3
    for persona in logits:
        assert _pvalue(counts, product_law([persona], (1.0,), temperature=0.9)) < 1e-6
    if needs_reference:  # and far from the law that leaves the reference out (Σ w_i log p_i)
        assert _pvalue(counts, product_law(logits, weights, temperature=0.9)) < 1e-6


@pytest.mark.parametrize("guidance", [2.0, -1.5])
@pytest.mark.parametrize("max_new_tokens", [1, 2], ids=["bonus", "draft-accept-residual"])
def test_guided_judge_first_token_follows_the_guided_judge(guidance: float, max_new_tokens: int) -> None:
    """``log p_0 + γ (log p_i − log p_0)`` written out in ``guided_law``, not read from ``combine.guided``."""
    model = tiny_llama(seed=1, sharpness=4.0)
    reference = full_logits(model, REFERENCE)[-1]
    p = guided_law(full_logits(model, PROMPTS[1])[-1], reference, guidance)
    q = guided_law(full_logits(model, PROMPTS[0])[-1], reference, guidance)
    assert 0.5 * np.abs(p - q).sum() > 0.2, "the guided personas must disagree for this test to mean anything"
    # 1800 runs, sized by power (noncentral chi-square, a failure is a p-value <= 1e-3): in the draft-accept-residual
    # case a residual drawn from p instead of norm(max(0, p - q)) fails with power 0.99995 at guidance -1.5
    # (TV(p, q) = 0.21) and 1 at 2.0; in both cases the drafter's row as the reference fails with power 1.
    counts = _first_tokens(model, 1800, max_new_tokens=max_new_tokens, guidance=guidance,
                           reference=torch.tensor(REFERENCE))
    assert _pvalue(counts, p) > 1e-3
    assert _pvalue(counts, q) < 1e-6
    assert _pvalue(counts, _probs(full_logits(model, PROMPTS[1])[-1])) < 1e-6  # not the unguided judge


def test_repetition_penalty_law_at_the_second_token() -> None:
    """Force the first token (a mask allows only it), then the second follows the judge's penalised law."""
    model = tiny_llama(seed=1, sharpness=8.0)
    # The token most likely to follow itself: penalising it then moves a lot of mass.
    first = max(range(32), key=lambda t: float(torch.softmax(full_logits(model, PROMPTS[1] + [t])[-1], -1)[t]))

    class ForceFirst:
        def __init__(self) -> None:
            self.count = 0

        def allowed(self) -> torch.Tensor:
            mask = torch.ones(32, dtype=torch.bool)
            if self.count == 0:
                mask[:] = False
                mask[first] = True
            return mask

        def advance(self, token_id: int) -> None:
            self.count += 1

        def rollback(self, count: int) -> None:
            self.count -= count

    second = full_logits(model, PROMPTS[1] + [first])[-1:]
    penalised = process(second, build_processors(3.0, None), [[first]])[0]
    p = _probs(penalised)
    counts: Counter = Counter()
    for seed in range(3000):
        gen = generate(model, [torch.tensor(x) for x in PROMPTS], seed=seed, max_new_tokens=2,
                       repetition_penalty=3.0, constraint=ForceFirst())
        assert gen.token_ids[0] == first
        counts[gen.token_ids[1]] += 1
    assert _pvalue(counts, p) > 1e-3
    assert _pvalue(counts, _probs(second[0])) < 1e-6  # the unpenalised law is rejected


# -- identities ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["speculative", "lockstep"])
@pytest.mark.parametrize("do_sample", [False, True])
def test_guidance_one_is_persona_judge_token_for_token(schedule: str, do_sample: bool) -> None:
    model = tiny_llama(seed=3, sharpness=3.0)
    prompts = [torch.tensor(p) for p in PROMPTS]
    plain = generate(model, prompts, max_new_tokens=30, do_sample=do_sample, seed=5, schedule=schedule)
    with_reference = generate(model, prompts, max_new_tokens=30, do_sample=do_sample, seed=5, schedule=schedule,
                              guidance=1.0, reference=torch.tensor(REFERENCE))
    assert with_reference.token_ids == plain.token_ids
    assert with_reference.stats.trace == plain.stats.trace


def test_product_of_one_persona_is_plain_decoding() -> None:
    model = tiny_llama(seed=4, sharpness=3.0)
    prompt = [torch.tensor(PROMPTS[0])]
    plain = generate(model, prompt, max_new_tokens=30, do_sample=False)
    product = generate(model, prompt, max_new_tokens=30, do_sample=False, combine="product")
    assert product.token_ids == plain.token_ids
    assert {entry.kind for entry in product.stats.trace} == {"combined"}
    assert product.stats.forward_calls == 30  # one batched forward per token


@pytest.mark.parametrize("guidance", [1.5, 3.0, -1.0])
@pytest.mark.parametrize("combine_rule", ["judge", "product"])
def test_one_persona_guidance_equals_transformers_cfg(guidance: float, combine_rule: str) -> None:
    """transformers' classifier-free guidance with a negative prompt is the same rule with one persona."""
    model = tiny_llama(seed=6, sharpness=3.0)
    prompt, negative = torch.tensor([PROMPTS[0]]), torch.tensor([REFERENCE])
    expected = model.generate(prompt, max_new_tokens=20, do_sample=False, guidance_scale=guidance,
                              negative_prompt_ids=negative, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    ours = generate(model, [prompt[0]], max_new_tokens=20, do_sample=False, combine=combine_rule,
                    guidance=guidance, reference=negative[0])
    assert ours.token_ids == expected


def test_the_product_of_two_personas_differs_from_persona_judge() -> None:
    model = tiny_llama(seed=3, sharpness=3.0)
    prompts = [torch.tensor(p) for p in PROMPTS]
    judge = generate(model, prompts, max_new_tokens=30, do_sample=False)
    product = generate(model, prompts, max_new_tokens=30, do_sample=False, combine="product")
    assert judge.token_ids != product.token_ids
    assert product.stats.forward_calls == 30 and product.stats.drafted == 0


# -- errors before any forward -----------------------------------------------------------------------------


class NoForward(torch.nn.Module):
    """A model stand-in whose forward must never run."""

    def __init__(self) -> None:
        super().__init__()
        inner = tiny_llama()
        self.config, self.generation_config, self.device = inner.config, inner.generation_config, inner.device

    def forward(self, **kwargs):  # pragma: no cover - reaching it fails the test
        raise AssertionError("a forward ran before the options were checked")


@pytest.mark.parametrize(
    ("options", "reference", "message"),
    [
        ({"combine": "product", "weights": [1.0]}, None, "weights has 1 value"),
        ({"combine": "product", "weights": [0.5, 0.5, 0.0]}, None, "weights has 3 value"),
        ({"guidance": 2.0}, None, "pass reference="),
        ({"combine": "product", "weights": [1.0, 1.0]}, None, "pass reference="),
        ({"guidance": float("nan")}, REFERENCE, "guidance=nan"),
        ({"guidance": float("inf")}, REFERENCE, "guidance=inf"),
        ({"combine": "product", "weights": [0.5, float("nan")]}, None, "weights="),
        ({"combine": "judge", "weights": [0.5, 0.5]}, None, "weights apply to combine='product'"),
        ({"combine": "mean"}, None, "combine='mean'"),
        ({"combine": "product", "schedule": "speculative"}, None, "schedule='lockstep'"),
        ({"guidance": 2.0, "schedule": "speculative"}, REFERENCE, "schedule='lockstep'"),
        ({"repetition_penalty": 0.0}, None, "repetition_penalty=0.0"),
        ({"no_repeat_ngram_size": -1}, None, "no_repeat_ngram_size=-1"),
    ],
)
def test_bad_rule_options_fail_before_any_forward(options: dict, reference: list[int] | None, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace("[", r"\[")):
        generate(NoForward(), [torch.tensor(p) for p in PROMPTS], max_new_tokens=3,
                 reference=None if reference is None else torch.tensor(reference), **options)


def test_options_keep_weights_as_a_tuple_and_say_when_a_reference_is_read() -> None:
    options = DecodingOptions(combine="product", weights=[0.25, 0.75])
    assert options.weights == (0.25, 0.75) and not options.needs_reference
    assert DecodingOptions(combine="product", weights=[1, 1]).needs_reference
    assert DecodingOptions(guidance=1.5).needs_reference and not DecodingOptions().needs_reference
