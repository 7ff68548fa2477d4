"""The lockstep schedule: same decisions as the paper's schedule, one batched forward per emitted token.

The law of its output is checked with the rest of the engine's contract in ``test_engine.py`` (those tests run
under both schedules); here: equality with the speculative schedule, the batch's padding, and its cost.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from langchain_persona_judge.decoding import DecodingOptions, generate, make_decoder, stream
from langchain_persona_judge.decoding.lockstep import LockstepDecoder
from tests.helpers import full_logits, tiny_llama

# Prompt lengths far apart, so that the batch is padded (by up to 19 positions).
PROMPTS = [[9], list(range(1, 21)), [3, 3, 3, 8, 20]]


def _trace(gen):
    return [(e.token_id, e.drafter, e.judge, e.kind, e.iteration) for e in gen.stats.trace]


@pytest.mark.parametrize("lookahead", [1, 2, 4, 7])
@pytest.mark.parametrize("draft_confidence", [0.0, 0.4])
@pytest.mark.parametrize("n_personas", [2, 3])
def test_greedy_equals_the_speculative_schedule(lookahead, draft_confidence, n_personas):
    model = tiny_llama(seed=2, sharpness=3.0)
    prompts = [torch.tensor(p) for p in PROMPTS[:n_personas]]
    options = {"max_new_tokens": 50, "lookahead": lookahead, "do_sample": False, "draft_confidence": draft_confidence}
    speculative = generate(model, prompts, **options, eos_token_id=[], schedule="speculative")
    lockstep = generate(model, prompts, **options, eos_token_id=[], schedule="lockstep")
    assert lockstep.token_ids == speculative.token_ids
    assert _trace(lockstep) == _trace(speculative)
    assert lockstep.stats.iterations == speculative.stats.iterations
    assert lockstep.stats.accepted == speculative.stats.accepted
    assert "residual" in {e.kind for e in lockstep.stats.trace}
    # Nothing is drafted past a rejection: every draft is either accepted or the rejected one.
    residuals = sum(e.kind == "residual" for e in lockstep.stats.trace)
    assert lockstep.stats.drafted == lockstep.stats.accepted + residuals
    if lookahead > 1 and draft_confidence == 0:
        assert lockstep.stats.drafted < speculative.stats.drafted  # the drafts after each rejection are saved


def test_stops_at_an_eos_like_the_speculative_schedule():
    model = tiny_llama(seed=2, sharpness=3.0)
    prompts = [torch.tensor(p) for p in PROMPTS[:2]]
    free = generate(model, prompts, max_new_tokens=40, do_sample=False, eos_token_id=[]).token_ids
    for eos in (free[0], free[5], free[17]):
        runs = [generate(model, prompts, max_new_tokens=40, do_sample=False, eos_token_id=eos, schedule=s)
                for s in ("speculative", "lockstep")]
        assert runs[0].token_ids == runs[1].token_ids == free[: free.index(eos)]
        assert runs[0].finish_reason == runs[1].finish_reason == "stop"


def test_one_batched_forward_per_emitted_token():
    model = tiny_llama(seed=4)
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    prompts = [torch.tensor(p) for p in PROMPTS]
    gen = generate(model, prompts, max_new_tokens=40, lookahead=4, seed=1, schedule="lockstep")
    # The prompts once, padded to the longest; then the emitted token for every persona. No forward follows
    # the last token.
    assert shapes == [(3, 20)] + [(3, 1)] * 39
    assert gen.stats.forward_calls == len(gen.token_ids) == 40
    assert gen.stats.positions == 3 * 20 + 3 * 39


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: tiny_llama(seed=3, sharpness=2.0),
        # Learned absolute positions: a row whose position ids ignored its padding would drift at once.
        lambda: GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval(),
    ],
    ids=["llama-rope", "gpt2-absolute-positions"],
)
def test_every_padded_row_sees_exactly_its_own_sequence(make_model):
    torch.manual_seed(0)
    model = make_model()
    prompts = PROMPTS
    decoder = make_decoder(model, [torch.tensor(p) for p in prompts],
                           DecodingOptions(max_new_tokens=12, lookahead=3, seed=0, schedule="lockstep"))
    assert isinstance(decoder, LockstepDecoder)
    checked = 0
    while decoder.finish_reason is None:
        decoder._iterate()
        assert decoder._logits is not None
        if decoder.finish_reason is None:
            for row, prompt in enumerate(prompts):  # the logits each row's next token was decided from
                expected = full_logits(model, prompt + decoder.token_ids[:-1])[-1]
                torch.testing.assert_close(decoder._logits[row].float(), expected, atol=1e-4, rtol=1e-4)
                checked += 1
    assert checked == 3 * 11


def test_close_frees_the_batch_cache():
    model = tiny_llama(seed=8)
    tokens = stream(model, [torch.tensor([1, 2]), torch.tensor([3])], max_new_tokens=200, seed=0, schedule="lockstep")
    next(tokens)
    next(tokens)
    decoder = tokens.decoder
    assert isinstance(decoder, LockstepDecoder) and decoder.personas[0].cached > 0
    tokens.close()
    assert decoder.personas[0].cached == 0
    with pytest.raises(StopIteration):
        next(tokens)


def test_unknown_schedule_fails_clearly():
    with pytest.raises(ValueError, match="schedule='batched' is invalid: pass one of 'speculative', 'lockstep'"):
        generate(tiny_llama(), [torch.tensor([1]), torch.tensor([2])], schedule="batched")
