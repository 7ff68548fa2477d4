"""The acceptance rule itself, on exact synthetic distributions with many draws."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as scipy_stats

from langchain_persona_judge.decoding.acceptance import build_warpers, greedy_verdict, sample_verdict, to_probs, verify_one


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
