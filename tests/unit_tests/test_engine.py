"""Exactness of the decoding engine on tiny random Llama models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from langchain_persona_judge.decoding import SCHEDULES, DecodingOptions, SpeculativeDecoder, generate, stream
from langchain_persona_judge.decoding.acceptance import build_warpers, to_probs
from tests.helpers import chi_square_pvalue, full_logits, naive_greedy, tiny_llama

PROMPT_PAIRS = [
    ([1, 2, 3, 4], [5, 6, 7]),
    ([9], [10, 11, 12, 13, 14, 15]),
    ([3, 3, 3, 8, 20], [21, 4]),
]


_chi_square_pvalue = chi_square_pvalue


def _tv(counts: Counter, probs: np.ndarray, total: int) -> float:
    emp = np.array([counts.get(i, 0) / total for i in range(len(probs))])
    return 0.5 * float(np.abs(emp - probs).sum())


# -- (a) the emitted tokens follow the judge's tempered, truncated distribution ------------------------


# runs, sized by power (noncentral chi-square against the planted bug's exact law on this tiny model; a failure is
# a p-value <= 1e-3 against the judge's law). plain: the second-token check needs n2 = 0.8 runs min(p, q)(anchor)
# > 150 draws and min(p, q)(anchor) = 0.066, hence 3000 runs; then a residual drawn from p instead of
# norm(max(0, p - q)) fails the first token with power > 0.9999 (1350 runs would give 0.999), and the judge's
# position-0 law used at position 1 (an off-by-one) fails the second with power > 0.9999.
# tempered: min(p, q)(anchor) = 0.127, so 1500 runs give n2 ~ 152; power > 0.9999 against a residual drawn from
# p, an untempered judge, the drafter's law, and the off-by-one at the second token. (The acceptance ratio
# inverted, min(1, q/p), is 0.62 here and 0.99 at 3000: test_sampling's 30 000 exact draws catch it for sure.)
@pytest.mark.parametrize(
    "temperature, top_k, top_p, draft_confidence, runs",
    [(1.0, None, None, 0.0, 3000), (0.7, 12, 0.95, 0.3, 1500)],
    ids=["plain", "tempered-truncated-early-stop"],
)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_first_token_follows_judge_distribution(temperature, top_k, top_p, draft_confidence, runs, schedule):
    model = tiny_llama(seed=1, sharpness=6.0)
    drafter_prompt, judge_prompt = [1, 2, 3, 4], [5, 6, 7]
    warpers = build_warpers(temperature, top_k, top_p)
    p = to_probs(full_logits(model, judge_prompt)[-1:], warpers)[0].numpy().astype(float)
    q = to_probs(full_logits(model, drafter_prompt)[-1:], warpers)[0].numpy().astype(float)
    assert 0.5 * np.abs(p - q).sum() > 0.2, "the two personas must disagree for this test to mean anything"

    first: Counter = Counter()
    kinds: Counter = Counter()
    second_after: Counter = Counter()
    anchor = int(np.argmax(np.minimum(p, q)))  # P(first draft = anchor and accepted) = min(p, q)(anchor)
    for seed in range(runs):
        gen = generate(
            model,
            [torch.tensor(drafter_prompt), torch.tensor(judge_prompt)],
            max_new_tokens=4,  # a first iteration of 3 drafts
            lookahead=4,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            draft_confidence=draft_confidence,
            schedule=schedule,
        )
        first[gen.token_ids[0]] += 1
        kinds[gen.stats.trace[0].kind] += 1
        if gen.token_ids[0] == anchor and gen.stats.trace[0].kind == "accepted":
            second_after[gen.token_ids[1]] += 1

    # Both branches of the rule were exercised.
    assert kinds["accepted"] > 100 and kinds["residual"] > 100
    # Never outside the judge's truncated support.
    assert all(p[t] > 0 for t in first)
    assert _chi_square_pvalue(first, p, runs) > 1e-3
    assert _chi_square_pvalue(first, q, runs) < 1e-6
    assert _tv(first, p, runs) < 0.05 < _tv(first, q, runs)

    # Within an iteration: after an accepted draft, the next token follows the same judge at the next position.
    p2 = to_probs(full_logits(model, judge_prompt + [anchor])[-1:], warpers)[0].numpy().astype(float)
    n2 = sum(second_after.values())
    assert n2 > 0.8 * runs * np.minimum(p, q)[anchor] > 150
    assert _chi_square_pvalue(second_after, p2, n2) > 1e-3


# -- (b) greedy mode equals a naive no-cache implementation ---------------------------------------------


@pytest.mark.parametrize("lookahead", [1, 2, 4, 7])
@pytest.mark.parametrize("pair", range(len(PROMPT_PAIRS)))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_greedy_matches_naive_reference(lookahead, pair, schedule):
    model = tiny_llama(seed=2, sharpness=3.0)
    a, b = PROMPT_PAIRS[pair]
    expected, expected_trace, expected_reason = naive_greedy(model, [a, b], lookahead, 40, eos=set())
    gen = generate(model, [torch.tensor(a), torch.tensor(b)], max_new_tokens=40, lookahead=lookahead, do_sample=False,
                   schedule=schedule)
    assert gen.token_ids == expected
    assert [(e.drafter, e.judge, e.kind) for e in gen.stats.trace] == expected_trace
    assert gen.finish_reason == expected_reason == "length"
    kinds = {e.kind for e in gen.stats.trace}
    assert "residual" in kinds  # the prompts disagree somewhere
    # Roles alternate every iteration.
    judges = [e.judge for e in gen.stats.trace]
    iterations = [e.iteration for e in gen.stats.trace]
    assert all(j == (it + 1) % 2 for j, it in zip(judges, iterations))


def test_greedy_bonus_tokens_when_personas_agree():
    model = tiny_llama(seed=2, sharpness=3.0)
    same = torch.tensor([1, 2, 3])
    gen = generate(model, [same, same.clone()], max_new_tokens=20, lookahead=4, do_sample=False)
    assert gen.stats.acceptance_rate == 1.0
    assert [e.kind for e in gen.stats.trace[:5]] == ["accepted"] * 4 + ["bonus"]
    # One drafter pass per draft plus one judge pass per iteration: 5 forwards per 5 tokens.
    assert gen.stats.forward_calls == gen.stats.iterations * 5
    expected, _, _ = naive_greedy(model, [[1, 2, 3], [1, 2, 3]], 4, 20, eos=set())
    assert gen.token_ids == expected


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_greedy_stops_at_eos_like_reference(schedule):
    model = tiny_llama(seed=2, sharpness=3.0)
    a, b = PROMPT_PAIRS[0]
    free = generate(model, [torch.tensor(a), torch.tensor(b)], max_new_tokens=30, do_sample=False).token_ids
    eos = free[6]
    cut = free.index(eos)
    for lookahead in (1, 3, 4):
        gen = generate(
            model, [torch.tensor(a), torch.tensor(b)], max_new_tokens=30, lookahead=lookahead,
            do_sample=False, eos_token_id=eos, schedule=schedule,
        )
        expected, _, reason = naive_greedy(model, [a, b], lookahead, 30, eos={eos})
        assert gen.token_ids == expected == free[:cut]
        assert gen.finish_reason == reason == "stop"
        assert eos not in gen.token_ids


def test_eos_defaults_to_generation_config():
    model = tiny_llama(seed=2, sharpness=3.0)
    a, b = PROMPT_PAIRS[0]
    free = generate(model, [torch.tensor(a), torch.tensor(b)], max_new_tokens=30, do_sample=False).token_ids
    model.generation_config.eos_token_id = [999, free[3]]
    gen = generate(model, [torch.tensor(a), torch.tensor(b)], max_new_tokens=30, do_sample=False)
    assert gen.finish_reason == "stop" and gen.token_ids == free[: free.index(free[3])]


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 6, 11])
@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exactly_max_new_tokens(max_new_tokens, do_sample, schedule):
    model = tiny_llama(seed=3)
    same = torch.tensor([4, 5, 6])  # identical personas accept everything, so iterations emit λ + 1 tokens
    gen = generate(model, [same, same.clone()], max_new_tokens=max_new_tokens, lookahead=4, do_sample=do_sample, seed=0,
                   schedule=schedule)
    assert len(gen.token_ids) == max_new_tokens
    assert len(gen.stats.trace) == max_new_tokens
    assert gen.finish_reason == "length"


# -- (c) KV-cache rollback never corrupts later steps -------------------------------------------------


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("n_personas", [2, 3])
def test_caches_stay_consistent_after_every_iteration(do_sample, n_personas):
    model = tiny_llama(seed=1, sharpness=6.0)
    prompts = [torch.tensor(p) for p in ([1, 2, 3, 4], [10, 11, 12, 13, 14, 15], [21, 4])[:n_personas]]
    rejections = 0
    for seed in range(6):
        options = DecodingOptions(max_new_tokens=40, lookahead=4, do_sample=do_sample, temperature=1.5, seed=seed)
        decoder = SpeculativeDecoder(model, prompts, options)
        while decoder.finish_reason is None:
            decoder._iterate()
            for persona in decoder.personas:
                sequence = persona.prompt + decoder.token_ids
                pending = persona.pending(decoder.token_ids)
                # The cache holds exactly a prefix of this persona's sequence: nothing speculative is left over.
                assert persona.cached + len(pending) == len(sequence)
                assert len(pending) >= 1
        rejections += sum(e.kind == "residual" for e in decoder.stats.trace)
        # After all the crops, each cache still yields the same next-token logits as a fresh full forward.
        for persona in decoder.personas:
            pending = persona.pending(decoder.token_ids)
            cache_kwarg = {decoder.forward_signature.cache_argument: persona.cache}  # the name the engine probed
            with torch.inference_mode():
                cached = model(input_ids=torch.tensor([pending]), **cache_kwarg).logits[0, -1].float()
            fresh = full_logits(model, persona.prompt + decoder.token_ids)[-1]
            torch.testing.assert_close(cached, fresh, atol=1e-4, rtol=1e-4)
    assert rejections >= 5  # the crops were really exercised


def test_no_forward_rereads_the_prompt():
    model = tiny_llama(seed=4)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    long_a, long_b = list(range(1, 31)), list(range(2, 27))
    gen = generate(model, [torch.tensor(long_a), torch.tensor(long_b)], max_new_tokens=40, lookahead=4, seed=1)
    # The first drafter pass reads prompt a, then 3 one-token draft passes; the first judge pass reads
    # prompt b plus the 4 drafts. After that every forward is at most pending tokens + λ drafts.
    assert calls[:5] == [30, 1, 1, 1, 25 + 4]
    assert max(calls[5:]) <= 2 + 4
    assert gen.stats.forward_calls == len(calls)
    assert gen.stats.positions == sum(calls)


# -- (d) three personas rotate round-robin -----------------------------------------------------------


@pytest.mark.parametrize("lookahead", [2, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_three_persona_rotation_matches_reference(lookahead, schedule):
    model = tiny_llama(seed=5, sharpness=3.0)
    prompts = [[1, 2, 3], [7, 8], [12, 13, 14, 15]]
    expected, expected_trace, _ = naive_greedy(model, prompts, lookahead, 45, eos=set())
    gen = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=45, lookahead=lookahead, do_sample=False,
                   schedule=schedule)
    assert gen.token_ids == expected
    assert [(e.drafter, e.judge, e.kind) for e in gen.stats.trace] == expected_trace
    pairs = {(e.iteration % 3, e.drafter, e.judge) for e in gen.stats.trace}
    assert pairs <= {(0, 0, 1), (1, 1, 2), (2, 2, 0)}
    assert {d for _, d, _ in pairs} == {0, 1, 2}


# -- the rest of the contract ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_single_persona_is_plain_decoding(schedule):
    model = tiny_llama(seed=6, sharpness=3.0)
    prompt = [3, 1, 4, 1, 5]
    gen = generate(model, [torch.tensor(prompt)], max_new_tokens=15, do_sample=False, schedule=schedule)
    with torch.inference_mode():
        plain = model.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False, min_new_tokens=15)
    assert gen.token_ids == plain[0, len(prompt):].tolist()
    assert gen.stats.drafted == 0 and gen.stats.forward_calls == 15


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_seed_reproducible_and_seeds_differ(schedule):
    model = tiny_llama(seed=7, sharpness=2.0)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    runs = [generate(model, prompts, max_new_tokens=30, seed=s, schedule=schedule).token_ids for s in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_stream_yields_the_same_tokens_as_generate(schedule):
    model = tiny_llama(seed=8, sharpness=2.0)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    tokens = stream(model, prompts, max_new_tokens=25, seed=3, schedule=schedule)
    streamed = list(tokens)
    assert streamed == generate(model, prompts, max_new_tokens=25, seed=3, schedule=schedule).token_ids
    assert tokens.generation.finish_reason == "length"
    assert tokens.generation.stats.iterations >= 1


def test_stream_close_stops_and_frees_caches():
    model = tiny_llama(seed=8)
    tokens = stream(model, [torch.tensor([1, 2]), torch.tensor([3])], max_new_tokens=200, seed=0)
    next(tokens)
    tokens.close()
    assert all(p.cached == 0 for p in tokens.decoder.personas)
    with pytest.raises(StopIteration):
        next(tokens)


def test_stats_are_consistent():
    model = tiny_llama(seed=9, sharpness=3.0)
    gen = generate(model, [torch.tensor([1, 2]), torch.tensor([3, 4])], max_new_tokens=50, seed=0)
    s = gen.stats
    assert s.accepted == sum(e.kind == "accepted" for e in s.trace)
    assert s.iterations == len({e.iteration for e in s.trace})
    assert s.forward_calls == s.drafted + s.iterations
    assert 0 <= s.acceptance_rate <= 1
    assert s.to_dict()["emitted"] == 50


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lookahead": 0}, "lookahead"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0}, "do_sample=False"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"lookahed": 3}, "Unknown decoding option"),
    ],
)
def test_bad_options_fail_clearly(options, message):
    model = tiny_llama()
    with pytest.raises((ValueError, TypeError), match=message):
        generate(model, [torch.tensor([1]), torch.tensor([2])], **options)


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([], "prompts is empty"),
        ([torch.tensor([], dtype=torch.long), torch.tensor([1])], "empty"),
        ([[1, 2], [3]], "LongTensor"),
        ([torch.ones(2, 3, dtype=torch.long), torch.tensor([1])], "1-D"),
    ],
)
def test_bad_prompts_fail_clearly(prompts, message):
    model = tiny_llama()
    with pytest.raises((ValueError, TypeError), match=message):
        generate(model, prompts)


def test_prompt_longer_than_context_fails_clearly():
    model = tiny_llama()
    with pytest.raises(ValueError, match="context holds 512"):
        generate(model, [torch.ones(600, dtype=torch.long), torch.tensor([1])])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_context_limit_ends_with_length(schedule):
    model = tiny_llama()
    gen = generate(model, [torch.ones(505, dtype=torch.long), torch.tensor([1])], max_new_tokens=50, seed=0,
                   schedule=schedule)
    assert len(gen.token_ids) == 7 and gen.finish_reason == "length"


# -- token constraints (grammars) keep exactness --------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_constrained_first_token_follows_masked_judge_distribution(schedule):
    from tests.helpers import ToyConstraint

    model = tiny_llama(seed=1, sharpness=6.0)
    drafter_prompt, judge_prompt = [1, 2, 3, 4], [5, 6, 7]
    warpers = build_warpers(1.0, None, None)
    mask = ToyConstraint.mask_for([], 32, 20)

    def masked(prompt):
        logits = full_logits(model, prompt)[-1:].clone()
        logits[0, ~mask] = float("-inf")
        return to_probs(logits, warpers)[0].numpy().astype(float)

    p, q = masked(judge_prompt), masked(drafter_prompt)
    # TV(p, q) = 0.32: at 1200 runs a residual drawn from p instead of norm(max(0, p - q)) fails with power 0.99994
    # (noncentral chi-square, p-value <= 1e-3), the drafter's law q with power 1.
    runs = 1200
    first: Counter = Counter()
    for seed in range(runs):
        constraint = ToyConstraint(32)
        gen = generate(model, [torch.tensor(drafter_prompt), torch.tensor(judge_prompt)], max_new_tokens=4,
                       seed=seed, constraint=constraint, schedule=schedule)
        first[gen.token_ids[0]] += 1
        assert constraint.history == gen.token_ids  # the constraint followed exactly what was emitted
    assert all(t < 20 for t in first)
    assert _chi_square_pvalue(first, p, runs) > 1e-3
    assert _chi_square_pvalue(first, q, runs) < 1e-6


@pytest.mark.parametrize("lookahead", [1, 4])
@pytest.mark.parametrize("n_personas", [1, 2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_constrained_greedy_matches_masked_reference(lookahead, n_personas, schedule):
    from tests.helpers import ToyConstraint, naive_greedy_masked

    model = tiny_llama(seed=2, sharpness=3.0)
    prompts = [[1, 2, 3, 4], [10, 11, 12, 13, 14, 15], [21, 4]][:n_personas]
    constraint = ToyConstraint(32)
    gen = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=30, lookahead=lookahead,
                   do_sample=False, constraint=constraint, eos_token_id=[], schedule=schedule)
    expected = naive_greedy_masked(model, prompts, lookahead, 30, lambda h: ToyConstraint.mask_for(h, 32, 20))
    assert gen.token_ids == expected
    assert constraint.history == gen.token_ids
    assert all(a != b for a, b in zip(gen.token_ids, gen.token_ids[1:]))
    assert all(t < 20 for t in gen.token_ids[::2])
    if schedule == "lockstep":
        assert constraint.max_rollback == 0  # lockstep never drafts past a rejection: nothing to roll back
    elif n_personas > 1 and lookahead > 1:
        assert constraint.max_rollback >= 1  # rejected drafts were really rolled back


def test_constraint_that_allows_nothing_fails_clearly():
    class Nothing:
        def allowed(self):
            return torch.zeros(32, dtype=torch.bool)

        def advance(self, token_id):
            pass

        def rollback(self, count):
            pass

    from langchain_persona_judge.decoding import DecodingError

    with pytest.raises(DecodingError, match="allows no token"):
        generate(tiny_llama(), [torch.tensor([1]), torch.tensor([2])], constraint=Nothing())
    with pytest.raises(TypeError, match="allowed\\(\\), advance"):
        generate(tiny_llama(), [torch.tensor([1]), torch.tensor([2])], constraint=object())


@pytest.mark.parametrize("n_personas", [2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_draft_confidence_stops_early_and_every_token_is_its_judges_argmax(n_personas, schedule):
    model = tiny_llama(seed=1, sharpness=2.0)
    prompts = [[1, 2, 3, 4], [10, 11, 12, 13, 14, 15], [21, 4]][:n_personas]
    full = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=40, do_sample=False)
    early = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=40, do_sample=False,
                     draft_confidence=0.5, schedule=schedule)
    s = early.stats
    assert s.iterations > full.stats.iterations  # some iterations stopped drafting early, so there are more
    if schedule == "speculative":
        assert s.drafted < s.iterations * 4
        assert s.forward_calls == s.drafted + s.iterations
        assert s.forward_calls_per_token < full.stats.forward_calls_per_token
    else:
        assert s.forward_calls == len(early.token_ids)
    for i, entry in enumerate(s.trace):  # greedy Persona-judge: each token is its judge's argmax there
        assert entry.token_id == int(full_logits(model, prompts[entry.judge] + early.token_ids[:i])[-1].argmax())


def test_draft_confidence_is_validated():
    with pytest.raises(ValueError, match="draft_confidence"):
        generate(tiny_llama(), [torch.tensor([1]), torch.tensor([2])], draft_confidence=1.0)
