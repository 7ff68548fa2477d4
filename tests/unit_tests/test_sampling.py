"""The acceptance rule itself, on exact synthetic distributions with many draws."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from transformers import TopPLogitsWarper

from langchain_persona_judge.decoding import SCHEDULES, generate
from langchain_persona_judge.decoding.acceptance import (
    NucleusWarper,
    build_warpers,
    greedy_verdict,
    sample,
    sample_verdict,
    to_probs,
    verify_one,
)
from tests.helpers import chi_square_pvalue, tiny_llama

_NO_INPUT_IDS = torch.empty((0, 0), dtype=torch.long)


def _random_dist(gen: torch.Generator, vocab: int, sharp: float) -> torch.Tensor:
    return torch.softmax(torch.randn(vocab, generator=gen) * sharp, dim=-1)


def test_verdict_law_at_every_position():
    """With context-free p and q rows, position i of the output must follow p[i] whenever it is reached."""
    vocab, n = 8, 3
    g = torch.Generator().manual_seed(0)
    q = torch.stack([_random_dist(g, vocab, 1.5) for _ in range(n)])
    p = torch.stack([_random_dist(g, vocab, 1.5) for _ in range(n + 1)])
    rng = torch.Generator().manual_seed(1)
    draws = 30000
    at_position = [np.zeros(vocab) for _ in range(n + 1)]
    for _ in range(draws):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=rng)[0] for i in range(n)])
        v = sample_verdict(drafts, q, p, rng)
        out = drafts[: v.accepted].tolist() + [v.next_token]
        for i, token in enumerate(out):
            at_position[i][token] += 1
    for i in range(n + 1):
        counts = at_position[i]
        if counts.sum() < 2000:
            continue
        expected = p[i].double().numpy()
        expected = expected / expected.sum() * counts.sum()
        assert scipy_stats.chisquare(counts, expected).pvalue > 1e-3, f"position {i}"


def test_verify_one_law_and_acceptance_rate():
    """The lockstep schedule's single-draft rule: the emitted token follows p; accepted w.p. sum(min(p, q))."""
    vocab = 8
    g = torch.Generator().manual_seed(3)
    q, p = _random_dist(g, vocab, 1.5), _random_dist(g, vocab, 1.5)
    rng = torch.Generator().manual_seed(4)
    draws = 30000
    counts = np.zeros(vocab)
    accepted = 0
    for _ in range(draws):
        draft = int(torch.multinomial(q, 1, generator=rng))
        ok, token = verify_one(draft, q, p, rng)
        accepted += ok
        counts[token] += 1
        assert not ok or token == draft
    p64, q64 = p.double().numpy(), q.double().numpy()
    assert scipy_stats.chisquare(counts, p64 / p64.sum() * draws).pvalue > 1e-3
    assert scipy_stats.chisquare(counts, q64 / q64.sum() * draws).pvalue < 1e-6
    overlap = float(torch.minimum(p, q).sum())
    assert abs(accepted / draws - overlap) < 4 * (overlap * (1 - overlap) / draws) ** 0.5


def test_residual_never_reemits_a_token_the_judge_undervalues():
    """On rejection the token comes from max(0, p - q): tokens with p <= q are impossible (the paper's q - p bug)."""
    p = torch.tensor([0.1, 0.6, 0.3, 0.0])
    q = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    rng = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(3000):
        v = sample_verdict(torch.tensor([0]), q, torch.stack([p, p]), rng)
        if v.accepted == 0:
            seen.add(v.next_token)
    assert seen == {1, 2}


def test_identical_distributions_always_accept():
    p = torch.softmax(torch.randn(2, 50), dim=-1)
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):
        t = torch.multinomial(p[0], 1, generator=rng)
        assert sample_verdict(t, p[:1], p, rng).accepted == 1


def test_greedy_verdict():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    assert greedy_verdict(torch.tensor([1, 0]), logits).accepted == 2
    assert greedy_verdict(torch.tensor([1, 0]), logits).next_token == 2
    v = greedy_verdict(torch.tensor([1, 2]), logits)
    assert (v.accepted, v.next_token) == (1, 0)
    assert greedy_verdict(torch.tensor([], dtype=torch.long), logits[:1]).next_token == 1


def test_warpers_keep_probabilities_fp32_and_truncate():
    logits = torch.randn(2, 100, dtype=torch.bfloat16)
    probs = to_probs(logits, build_warpers(0.5, 10, 0.9))
    assert probs.dtype == torch.float32
    assert ((probs > 0).sum(dim=-1) <= 10).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))


# -- every finite temperature > 0: the limits, never NaN ----------------------------------------------

_NEG_INF = float("-inf")
# Row 0: one top score. Row 1: a tie for the top, a masked token. Row 2: a large spread (logits of +-1e4).
_LOGITS = torch.tensor([[1.0, 3.0, 2.5, -2.0, 0.0, 2.9],
                        [1.0, 3.0, 3.0, -2.0, _NEG_INF, 0.5],
                        [-1e4, 2.0, 1e4, 9999.0, 0.0, _NEG_INF]])


@pytest.mark.parametrize("top_k, top_p", [(None, None), (3, None), (None, 0.9), (4, 0.95)])
@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 3.1e-298, 1e-40])
def test_tiny_temperatures_put_all_mass_on_the_argmax(temperature, top_k, top_p):
    probs = to_probs(_LOGITS, build_warpers(temperature, top_k, top_p))
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))
    torch.testing.assert_close(probs[0], torch.eye(6)[1])
    torch.testing.assert_close(probs[1], torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0]))  # the tie is shared
    torch.testing.assert_close(probs[2], torch.eye(6)[2])
    assert int(torch.multinomial(probs[0], 1)) == 1


@pytest.mark.parametrize("temperature", [1e300, 1.7e308, 1e39])
def test_huge_temperatures_are_uniform_over_the_support(temperature):
    probs = to_probs(_LOGITS, build_warpers(temperature, None, None))
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))
    torch.testing.assert_close(probs[0], torch.full((6,), 1 / 6))
    torch.testing.assert_close(probs[1], torch.tensor([0.2, 0.2, 0.2, 0.2, 0.0, 0.2]))  # the masked token stays out
    torch.testing.assert_close(probs[2], torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2, 0.0]))
    # Truncation still follows the scores' order: top-k keeps the k best, top-p the best ones first.
    top3 = to_probs(_LOGITS, build_warpers(temperature, 3, None))
    torch.testing.assert_close(top3[0], torch.tensor([0.0, 1 / 3, 1 / 3, 0.0, 0.0, 1 / 3]))
    torch.testing.assert_close(top3[2], torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]))
    half = to_probs(_LOGITS, build_warpers(temperature, None, 0.5))
    torch.testing.assert_close(half[0], torch.tensor([0.0, 1 / 3, 1 / 3, 0.0, 0.0, 1 / 3]))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, None), (1.3, 4, None), (0.5, None, 0.9),
                                                       (2.0, 3, 0.8), (1.0, None, None)])
def test_shifting_rows_changes_no_ordinary_distribution(temperature, top_k, top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 5 + 100
    unshifted = build_warpers(temperature, top_k, top_p)(_NO_INPUT_IDS, logits.clone())
    torch.testing.assert_close(to_probs(logits, build_warpers(temperature, top_k, top_p)),
                               torch.softmax(unshifted, dim=-1))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_tiny_temperature_samples_the_greedy_tokens(schedule):
    """The temperature a property test found (logits / T overflowed to NaN): sampling at it is greedy decoding."""
    model = tiny_llama(seed=3, sharpness=3.0)
    prompts = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([9, 8, 7]), torch.tensor([20, 21])]
    options = {"max_new_tokens": 30, "lookahead": 4, "eos_token_id": [], "schedule": schedule}
    greedy = generate(model, prompts, do_sample=False, **options)
    assert len(set(greedy.token_ids)) >= 5 and any(e.kind == "residual" for e in greedy.stats.trace)
    for seed in (0, 1):
        sampled = generate(model, prompts, do_sample=True, temperature=3.1e-298, seed=seed, **options)
        assert sampled.token_ids == greedy.token_ids
        assert [(e.drafter, e.judge, e.kind) for e in sampled.stats.trace] == [
            (e.drafter, e.judge, e.kind) for e in greedy.stats.trace]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_huge_temperature_samples_without_error(schedule):
    model = tiny_llama(seed=3, sharpness=3.0)
    gen = generate(model, [torch.tensor([1, 2, 3]), torch.tensor([9, 8])], do_sample=True, temperature=1e300, seed=0,
                   max_new_tokens=30, eos_token_id=[], schedule=schedule)
    assert len(gen.token_ids) == 30 and all(0 <= t < 32 for t in gen.token_ids)
    assert len(set(gen.token_ids)) >= 10  # about uniform over 32 tokens


# -- the fast nucleus and the inversion sampler, against transformers' and the analytic law -----------------


@pytest.mark.parametrize("vocab, scale", [(50, 1.0), (5000, 0.3), (5000, 3.0), (49152, 2.0), (49152, 0.05)])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
def test_nucleus_keeps_what_transformers_keeps(vocab, scale, top_p):
    """Sharp rows take the top-k path, flat ones (scale 0.05 on 49k tokens) the fallback; masked tokens too."""
    g = torch.Generator().manual_seed(vocab + int(100 * scale))
    scores = torch.randn(6, vocab, generator=g) * scale
    scores[1, : vocab // 2] = float("-inf")
    scores[2, :3] = 50.0  # a three-way tie at the top
    ours = NucleusWarper(top_p)(_NO_INPUT_IDS, scores.clone())
    theirs = TopPLogitsWarper(top_p)(_NO_INPUT_IDS, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[torch.isfinite(ours)], scores[torch.isfinite(theirs)])


def test_inversion_sampler_law_and_support():
    probs = torch.tensor([0.1, 0.0, 0.25, 0.0, 0.65, 0.0]) * 3  # any positive total
    g = torch.Generator().manual_seed(0)
    counts = Counter(sample(probs, g) for _ in range(60_000))
    assert set(counts) <= {0, 2, 4}
    assert chi_square_pvalue(counts, (probs / probs.sum()).numpy(), 60_000) > 1e-3


def test_inversion_sampler_edges(monkeypatch):
    """u = 0 takes the first token with mass, u just below 1 (rounding u × total up to the total) the last."""
    probs = torch.tensor([0.0, 0.3, 0.0, 0.7, 0.0])
    for u, token in ((0.0, 1), (1 - 2**-53, 3)):
        monkeypatch.setattr(torch, "rand", lambda *a, u=u, **k: torch.tensor(u, dtype=torch.float64))
        assert sample(probs, None) == token
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(1.0, dtype=torch.float64))
    assert sample(probs, None) == 3  # even a u of 1 (impossible from torch.rand) stays in the support
