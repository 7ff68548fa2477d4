"""The llama.cpp backend's prompt cache: a request whose rows begin with tokens a released context still holds
decodes only the rest, and gets bit-for-bit the logits of a fresh context; contexts that can't be trusted or don't
fit are never reused; and the one-persona law (with top-p) holds over thousands of cache hits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from langchain_persona_judge import generate
from langchain_persona_judge.decoding.options import DecodingStats
from langchain_persona_judge.errors import DecodingError, InvalidOptionError
from tests.conftest import llama_cpp_or_skip
from tests.helpers import chi_square_pvalue, tiny_gguf

SYSTEM = [1, 5, 9, 12, 3, 40, 41]  # a shared "system prompt"
FIRST = [SYSTEM + [7, 8, 9], SYSTEM + [30, 31]]
SECOND = [SYSTEM + [7, 8, 20, 21], SYSTEM + [33, 34, 35]]  # shares 9 and 7 leading tokens with FIRST
STEPS = [17, 23, 5, 60]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    llama_cpp_or_skip()
    return tiny_gguf(tmp_path_factory.mktemp("gguf"), seed=3, vocab_size=64, sharpness=6.0, eos_token_id=2)[1]


def _model(path, prompt_cache: int = 2):
    from langchain_persona_judge.decoding.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(path, n_threads=1)
    model.prompt_cache = prompt_cache
    return model


def _decode(model, rows, capacity: int = 8, stats: DecodingStats | None = None):
    """Prefill and step a lockstep batch; its logits, what it found cached, and the stats."""
    stats = stats or DecodingStats()
    batch = model.batch(rows, capacity, stats)
    held = list(batch.held)
    try:
        logits = [batch.prefill()] + [batch.step(t) for t in STEPS]
    finally:
        batch.release()
    return logits, held, stats


def test_a_shared_prefix_is_read_once_and_decodes_bit_for_bit_as_fresh(gguf):
    cached, fresh = _model(gguf), _model(gguf, prompt_cache=0)
    _decode(cached, FIRST)
    logits, held, stats = _decode(cached, SECOND)
    assert held == [9, 7]  # the common prefixes of SECOND with FIRST, counted by hand
    assert stats.prompt_cached == 16
    assert stats.positions == (11 - 9) + (10 - 7) + len(STEPS) * 2  # only the new prompt tokens, then the steps
    expected, fresh_held, fresh_stats = _decode(fresh, SECOND)
    assert fresh_held == [0, 0] and fresh_stats.prompt_cached == 0 and not fresh._idle
    for a, b in zip(logits, expected, strict=True):
        assert torch.equal(a, b)  # not close: equal


def test_a_repeated_prompt_still_decodes_its_last_token(gguf):
    """The logits of a row's last prompt token are what the first step samples from: never taken from a cache
    that has none, even when the whole row is cached."""
    model, fresh = _model(gguf), _model(gguf, prompt_cache=0)
    _decode(model, FIRST)
    logits, held, _ = _decode(model, FIRST)
    assert held == [len(FIRST[0]) - 1, len(FIRST[1]) - 1]
    for a, b in zip(logits, _decode(fresh, FIRST)[0], strict=True):
        assert torch.equal(a, b)


def test_generated_tokens_are_part_of_the_cache(gguf):
    """The next turn of a conversation: the earlier answer's tokens are in the cache too."""
    model = _model(gguf)
    _decode(model, FIRST[:1])
    follow_up = FIRST[0] + STEPS[:3] + [50, 51]
    _, held, _ = _decode(model, [follow_up])
    assert held == [len(FIRST[0]) + 3]


def test_contexts_that_do_not_fit_or_cannot_be_trusted_are_not_reused(gguf):
    model = _model(gguf)
    _decode(model, FIRST[:1])
    # More rows than the idle context has sequences: a fresh context.
    _, held, _ = _decode(model, FIRST + [SYSTEM])
    assert held == [0, 0, 0]
    # More positions than a kept context holds: a fresh context (512 is the tiny model's context length).
    _, held, _ = _decode(model, FIRST[:1], capacity=400)
    assert held == [0]
    # A context whose decode failed (here: a position llama.cpp refuses) may hold anything: it is freed.
    ctx, _ = model.lockstep_context([SYSTEM], 4)
    with pytest.raises(DecodingError):
        ctx.decode([(5, 3, 0, True)], DecodingStats())
    assert not ctx.reusable
    model.release_context(ctx)
    assert ctx not in model._idle and ctx.ctx is None


def test_at_most_prompt_cache_contexts_are_kept_and_open_batches_never_share_one(gguf):
    model = _model(gguf, prompt_cache=1)
    stats = DecodingStats()
    one, two = model.batch(FIRST, 8, stats), model.batch(FIRST, 8, stats)
    assert one.context is not two.context
    kept_one, kept_two = one.context, two.context
    one.release()
    two.release()
    assert model._idle == [kept_two] and kept_one.ctx is None  # the older one was freed
    model.close()
    assert model._idle == [] and kept_two.ctx is None


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> np.ndarray:
    """softmax(logits / T) cut to the smallest set of best tokens holding top_p of the mass, written out."""
    probs = torch.softmax(logits.double() / temperature, dim=-1).numpy()
    out = np.zeros_like(probs)
    mass = 0.0
    for token in np.argsort(-probs, kind="stable"):
        if mass >= top_p:
            break
        out[token] = probs[token]
        mass += probs[token]
    return out / out.sum()


def test_one_persona_law_with_top_p_over_cache_hits(gguf):
    """Plain decoding (one persona) on the lockstep schedule samples the nucleus of the persona's distribution;
    every run after the first reuses the cached prompt."""
    model = _model(gguf)
    prompt = FIRST[0]
    stats = DecodingStats()
    batch = model.batch([prompt], 1, stats)
    logits = batch.prefill()[0]
    batch.release()
    law = _nucleus(logits, 0.8, 0.9)
    assert 3 <= (law > 0).sum() < len(law), "the nucleus must cut some tokens and keep several"
    counts: Counter = Counter()
    cached = 0
    for seed in range(3000):
        gen = generate(model, [torch.tensor(prompt)], seed=seed, eos_token_id=[], max_new_tokens=1,
                       schedule="lockstep", temperature=0.8, top_p=0.9)
        counts[gen.token_ids[0]] += 1
        cached += gen.stats.prompt_cached
    assert cached == 3000 * (len(prompt) - 1)
    assert sum(n for t, n in counts.items() if law[t] == 0) == 0  # nothing outside the nucleus, ever
    assert chi_square_pvalue(counts, law, 3000) > 1e-3


def test_the_environment_sets_it_and_a_bad_value_is_named(gguf, monkeypatch):
    from langchain_persona_judge.decoding.backends.llamacpp import LlamaCppModel

    monkeypatch.setenv("PERSONA_JUDGE_PROMPT_CACHE", "0")
    model = LlamaCppModel(gguf, n_threads=1)
    assert model.prompt_cache == 0
    _decode(model, FIRST)
    assert model._idle == [] and _decode(model, FIRST)[1] == [0, 0]
    assert LlamaCppModel(gguf, n_threads=1, prompt_cache=3).prompt_cache == 3  # the argument wins
    monkeypatch.setenv("PERSONA_JUDGE_PROMPT_CACHE", "lots")
    with pytest.raises(InvalidOptionError, match="PERSONA_JUDGE_PROMPT_CACHE='lots'"):
        LlamaCppModel(gguf, n_threads=1)


def test_a_prefix_read_in_a_long_batch_decodes_as_fresh(gguf):
    """The earlier request's prompts were long (llama.cpp's flash attention switches kernels from 64 tokens a
    batch, and a position's logits then depended on how long its batch was): the next request, a prefix of it,
    still gets bit-for-bit a fresh context's logits. With flash attention on, this fails on the first logits."""
    long_rows = [SYSTEM + [(7 * i) % 60 + 3 for i in range(90)], SYSTEM + [(11 * i) % 60 + 3 for i in range(80)]]
    short_rows = [row[:30] for row in long_rows]
    model, fresh = _model(gguf), _model(gguf, prompt_cache=0)
    _decode(model, long_rows)
    logits, held, _ = _decode(model, short_rows)
    assert held == [29, 29]
    for a, b in zip(logits, _decode(fresh, short_rows)[0], strict=True):
        assert torch.equal(a, b)


def test_a_positions_logits_do_not_depend_on_its_batchs_length(gguf):
    """The property the prompt cache rests on, checked on llama.cpp itself with the lockstep contexts'
    micro-batches: position 29's logits from a batch of 30 tokens, and from one of 97."""
    from langchain_persona_judge.decoding.backends.llamacpp import UBATCH

    model = _model(gguf, prompt_cache=0)
    row = SYSTEM + [(7 * i) % 60 + 3 for i in range(90)]
    seen = []
    for length in (30, 97):
        ctx = model.context(1, 256, unified=False, ubatch=UBATCH)
        try:
            seen.append(ctx.decode([(t, i, 0, i == 29) for i, t in enumerate(row[:length])], DecodingStats())[0])
        finally:
            ctx.close()
    assert torch.equal(seen[0], seen[1])
