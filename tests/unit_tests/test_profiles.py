"""Preference profiles on tiny random models: the features against a direct computation, the fits, PReF's rule,
files and versions, decoding with a profile, and every malformed input as a clear error."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from langchain_persona_judge import (
    ChatPersonaJudge,
    PersonaJudgeError,
    PreferenceLearner,
    PreferenceProfile,
    ProfileError,
    learn_from_texts,
    learn_profile,
    profile_from_description,
)
from langchain_persona_judge.personas import PersonaRegistry, persona_messages
from langchain_persona_judge.profiles import (
    Basis,
    PersonaScorer,
    builtin_basis_names,
    comparison_features,
    fit_bradley_terry,
    information,
    model_fingerprint,
    most_informative,
    parse_choice,
    resolve_basis,
    writing_weights,
)
from langchain_persona_judge.errors import DecodingError
from langchain_persona_judge.profiles.scoring import shared_ending
from langchain_persona_judge.runtime import encode_chat
from tests.helpers import full_logits, tiny_llama

BASIS = ["concise", "informative", "friendly"]
PROMPT = "Why is the sky blue?"
ANSWERS = [
    "Because air scatters blue light more than red light, so the sky looks blue to us.",
    "Blue light scatters.",
    "Oh, great question! Sunlight bounces off tiny bits of air and blue bounces the most. Neat, right?",
]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(seed=1, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, sharpness=3.0)


@pytest.fixture(scope="module")
def other_model(tokenizer: Any) -> Any:
    return tiny_llama(seed=7, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, sharpness=3.0)


@pytest.fixture(scope="module")
def scorer(model: Any, tokenizer: Any) -> PersonaScorer:
    return PersonaScorer((model, tokenizer), BASIS)


def direct_log_probs(model: Any, prefix: list[int], response: list[int]) -> np.ndarray:
    """log p(response_t | prefix, response_<t), one unbatched forward with no cache."""
    logp = torch.log_softmax(full_logits(model, prefix + response), dim=-1)
    return np.array([float(logp[len(prefix) - 1 + t, token]) for t, token in enumerate(response)])


def conversation_ids(tokenizer: Any, conversation: list[dict[str, str]], texts: list[str]) -> list[int]:
    return encode_chat(tokenizer, persona_messages(conversation, texts)).tolist()


# -- the features ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_features_match_a_direct_unbatched_computation(model: Any, tokenizer: Any, chunk: int) -> None:
    scorer = PersonaScorer((model, tokenizer), BASIS, chunk=chunk)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    features = scorer.features(conversation, ANSWERS)
    assert features.shape == (len(ANSWERS), len(BASIS))
    for row, answer in zip(features, ANSWERS):
        response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        plain = direct_log_probs(model, conversation_ids(tokenizer, conversation, []), response)
        expected = [
            (direct_log_probs(model, conversation_ids(tokenizer, conversation, [text]), response) - plain).mean()
            for text in scorer.basis.texts
        ]
        np.testing.assert_allclose(row, expected, atol=2e-5)


def test_one_batched_forward_per_chunk_and_the_prompt_read_once(model: Any, tokenizer: Any) -> None:
    scorer = PersonaScorer((model, tokenizer), BASIS, chunk=1000)
    scorer.features(PROMPT, ANSWERS)
    # Two forwards read the K+1 prompts (the personas' own heads, then the ending they share), then one per
    # response (each response fits one chunk).
    assert scorer.forwards == 2 + len(ANSWERS)
    rows = scorer.prompt_rows(PROMPT)
    assert len(rows) == len(BASIS) + 1
    width = max(map(len, rows))
    tokens = sum(len(scorer.response_ids(a)) - 1 for a in ANSWERS)  # a response's last token is never fed
    assert scorer.positions == (len(BASIS) + 1) * (width + tokens)
    scorer.features(PROMPT, ANSWERS[::-1])  # cached: no forward
    assert scorer.forwards == 2 + len(ANSWERS)


def test_a_new_question_reads_only_what_the_rows_share(model: Any, tokenizer: Any) -> None:
    """The personas' heads (their system turns) are read once per scorer: a second question costs its shared
    ending and the answers, and scores exactly as on a fresh scorer."""
    question = "How do plants make food from light, and why do leaves change colour in autumn?"
    warm = PersonaScorer((model, tokenizer), BASIS, chunk=1000)
    warm.features(PROMPT, ANSWERS[:1])
    forwards, positions = warm.forwards, warm.positions
    features = warm.features(question, ANSWERS)
    rows = warm.prompt_rows(question)
    shared = shared_ending(rows)
    assert 0 < shared < min(map(len, rows))
    assert all(row[-shared:] == rows[0][-shared:] for row in rows)
    assert len({tuple(row[:-shared]) for row in rows}) == len(rows)  # each head is the persona's own
    tokens = sum(len(warm.response_ids(a)) - 1 for a in ANSWERS)
    assert warm.forwards - forwards == 1 + len(ANSWERS)
    assert warm.positions - positions == len(rows) * (shared + tokens)
    fresh = PersonaScorer((model, tokenizer), BASIS, chunk=1000)
    np.testing.assert_allclose(features, fresh.features(question, ANSWERS), atol=1e-5)
    # Another system turn of the user's own changes every head: read afresh, and still exact.
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    before = warm.positions
    again = warm.features(conversation, ANSWERS)
    assert warm.positions - before == len(rows) * (max(map(len, warm.prompt_rows(conversation))) + tokens)
    np.testing.assert_allclose(again, fresh.features(conversation, ANSWERS), atol=1e-5)


def test_a_cache_that_cannot_be_cut_back_is_read_afresh_and_scores_the_same(
    model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import DynamicCache

    from langchain_persona_judge.profiles import scoring

    exact = PersonaScorer((model, tokenizer), BASIS).features(PROMPT, ANSWERS)

    class Uncroppable(DynamicCache):  # as a sliding-window cache says of itself
        is_croppable = False

    monkeypatch.setattr(scoring, "DynamicCache", Uncroppable)
    scorer = PersonaScorer((model, tokenizer), BASIS, chunk=1000)
    np.testing.assert_allclose(scorer.features(PROMPT, ANSWERS), exact, atol=1e-5)
    assert scorer._heads is None  # nothing kept: every response read its prompt again
    assert scorer.forwards == len(ANSWERS) * 3  # heads, shared ending, response


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_logits_raise_instead_of_a_silent_nan_feature(tokenizer: Any, poison: str) -> None:
    broken = tiny_llama(seed=3, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        broken.lm_head.weight[5].fill_(float(poison))  # one vocabulary row: every position's logits hold it
    scorer = PersonaScorer((broken, tokenizer), BASIS)
    with pytest.raises(DecodingError, match="NaN or all-infinite logits"):
        scorer.features(PROMPT, ANSWERS[:1])
    with pytest.raises(DecodingError, match="NaN or all-infinite logits"):
        scorer.writing_statistics(PROMPT, ANSWERS[0])


def test_shared_ending_leaves_every_row_a_token_of_its_own() -> None:
    assert shared_ending([[1, 2, 9, 9], [3, 9, 9], [4, 5, 6, 9, 9]]) == 2
    assert shared_ending([[9, 9], [9, 9, 9]]) == 1  # the shorter row keeps its first token
    assert shared_ending([[1, 2], [3, 4]]) == 0


def test_a_response_scored_alone_or_after_others_is_the_same(model: Any, tokenizer: Any) -> None:
    together = PersonaScorer((model, tokenizer), BASIS).features(PROMPT, ANSWERS)
    alone = PersonaScorer((model, tokenizer), BASIS).features(PROMPT, ANSWERS[2:])
    np.testing.assert_allclose(together[2], alone[0], atol=1e-6)


def test_token_log_ratios_average_to_the_features(scorer: PersonaScorer) -> None:
    ratios = scorer.token_log_ratios(PROMPT, ANSWERS[0])
    assert ratios.shape == (len(BASIS), len(scorer.response_ids(ANSWERS[0])))
    np.testing.assert_allclose(ratios.mean(axis=1), scorer.features(PROMPT, ANSWERS[:1])[0], atol=1e-6)


def test_an_answer_cut_at_its_token_limit_scores_no_end_token(scorer: PersonaScorer, tokenizer: Any) -> None:
    assert scorer.response_ids(ANSWERS[0]) == scorer.response_ids(ANSWERS[0], complete=False) + [
        tokenizer.eos_token_id]
    ratios = scorer.token_log_ratios(PROMPT, ANSWERS[0])
    cut = scorer.features(PROMPT, ANSWERS[:2], complete=[False, True])
    np.testing.assert_allclose(cut[0], ratios[:, :-1].mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(cut[1], scorer.features(PROMPT, ANSWERS[1:2])[0], atol=1e-9)
    with pytest.raises(ProfileError, match="one `complete` flag per response"):
        scorer.features(PROMPT, ANSWERS, complete=[True])


def test_writing_statistics_match_a_direct_computation(model: Any, tokenizer: Any, scorer: PersonaScorer) -> None:
    text = ANSWERS[2]
    stats = scorer.writing_statistics(PROMPT, text)
    conversation = [{"role": "user", "content": PROMPT}]
    response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prefixes = [conversation_ids(tokenizer, conversation, [t]) for t in scorer.basis.texts]
    plain_prefix = conversation_ids(tokenizer, conversation, [])

    def position_logps(prefix: list[int]) -> torch.Tensor:
        logits = full_logits(model, prefix + response)[len(prefix) - 1 : len(prefix) - 1 + len(response)]
        return torch.log_softmax(logits, dim=-1).double()

    plain = position_logps(plain_prefix)
    ratios = torch.stack([position_logps(p) - plain for p in prefixes])  # (K, T, V)
    p0 = plain.exp()
    observed = ratios[:, torch.arange(len(response)), torch.tensor(response)]
    mean = (ratios * p0).sum(-1)
    score = (observed - mean).sum(1).numpy()
    fisher = sum(
        np.cov(ratios[:, t].numpy(), aweights=p0[t].numpy(), bias=True) for t in range(len(response))
    )
    np.testing.assert_allclose(stats.score, score, atol=1e-4)
    np.testing.assert_allclose(stats.fisher, fisher, atol=1e-4)
    assert stats.tokens == len(response)


# -- the fits -------------------------------------------------------------------------------------------------


def test_bradley_terry_recovers_planted_weights() -> None:
    rng = np.random.default_rng(0)
    planted = np.array([2.0, -1.0, 0.0, 0.5])
    differences = rng.normal(size=(4000, 4))
    outcomes = (rng.random(4000) < 1 / (1 + np.exp(-differences @ planted))).astype(float)
    fit = fit_bradley_terry(differences, outcomes, l2=1e-3)
    assert fit.converged
    np.testing.assert_allclose(fit.weights, planted, atol=0.15)
    # The optimum: the gradient of the penalised log-likelihood vanishes.
    p = 1 / (1 + np.exp(-differences @ fit.weights))
    assert np.abs(differences.T @ (p - outcomes) + 1e-3 * fit.weights).max() < 1e-4


def test_bradley_terry_ties_and_prior() -> None:
    d = np.array([[1.0, 0.0], [0.0, 1.0]])
    tie = fit_bradley_terry(d, [0.5, 0.5], l2=1.0, prior=[0.3, -0.3])
    assert abs(tie.weights[0]) < 0.3 and abs(tie.weights[1]) < 0.3  # pulled from the prior towards w·d = 0
    far = fit_bradley_terry(np.zeros((1, 2)), [1.0], l2=1.0, prior=[0.3, -0.3])
    np.testing.assert_allclose(far.weights, [0.3, -0.3], atol=1e-6)  # no information: the prior
    np.testing.assert_allclose(far.hessian, np.eye(2))


def test_the_active_rule_picks_the_most_uncertain_pair() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    hessian = a @ a.T + np.eye(5)
    candidates = rng.normal(size=(12, 5))
    brute = [d @ np.linalg.inv(hessian) @ d for d in candidates]
    np.testing.assert_allclose(information(candidates, hessian), brute, rtol=1e-9)
    assert most_informative(candidates, hessian) == int(np.argmax(brute))


def test_the_learner_asks_the_pair_with_the_largest_variance_and_refits(scorer: PersonaScorer) -> None:
    learner = PreferenceLearner(scorer, prompts=[], l2=1.0)
    features = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    learner.add_candidates(PROMPT, ["a a a a a", "b b b b b", "c c c c c", "d d d d d"], features=features)
    first = learner.next_question()
    # H = I before any answer: the largest ‖d‖² is c against... the pair (c, d): 9 + 4 = 13.
    assert set(first.answers) == {"c c c c c", "d d d d d"} and first.information == pytest.approx(13.0)
    profile = learner.record(first, first.answers.index("c c c c c") + 1)  # the user picks c
    assert profile.weights["informative"] > 0 > profile.weights["friendly"]
    second = learner.next_question()
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4) if {i, j} != {2, 3}]
    variances = [information(features[i] - features[j], learner.hessian)[0] for i, j in pairs]
    assert second.pair == pairs[int(np.argmax(variances))]
    assert second.information == pytest.approx(max(variances))


def test_candidates_are_decoded_under_the_most_uncertain_dimensions_poles(model: Any, tokenizer: Any) -> None:
    two_dimensions = PersonaScorer((model, tokenizer), ["concise", "informative", "friendly", "unfriendly"])
    learner = PreferenceLearner(two_dimensions, prompts=[PROMPT, "What is rain?"], max_tokens=6, seed=1)
    question = learner.next_question()
    # Before any answer every dimension is as uncertain: the first pair of the basis, one answer per pole.
    assert question.personas == ("concise", "informative") and question.prompt == PROMPT
    assert all(a.strip() for a in question.answers) and question.answers[0] != question.answers[1]
    assert [c.complete for c in learner.candidates] == [False, False]  # both ran into max_tokens
    learner.record(question, 1)
    second = learner.next_question()  # the next prompt of the pool, fresh candidates
    assert second.prompt == "What is rain?"
    assert second.personas == ("friendly", "unfriendly")  # length was asked once already: the rotation moves on


def test_random_questions_are_reproducible_and_never_repeat(scorer: PersonaScorer) -> None:
    def ask(seed: int) -> list[tuple[int, int]]:
        learner = PreferenceLearner(scorer, prompts=[], strategy="random", seed=seed)
        learner.add_candidates(PROMPT, ANSWERS, features=np.eye(3))
        return [learner.next_question().pair for _ in range(3)]

    assert ask(3) == ask(3) and len(set(ask(3))) == 3
    learner = PreferenceLearner(scorer, prompts=[], strategy="random")
    learner.add_candidates(PROMPT, ANSWERS[:2], features=np.eye(3)[:2])
    learner.next_question()
    with pytest.raises(ProfileError, match="prompt pool is used up"):
        learner.next_question()


def test_writing_weights_are_one_newton_step() -> None:
    g, f = np.array([1.0, -2.0]), np.array([[2.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(writing_weights(g, f, l2=0.5), np.linalg.solve(f + 0.5 * np.eye(2), g))


# -- evidence → profile -------------------------------------------------------------------------------------------


def test_learn_profile_fits_the_comparisons_features(model: Any, tokenizer: Any, scorer: PersonaScorer) -> None:
    comparisons = [(PROMPT, ANSWERS[1], ANSWERS[0]), (PROMPT, ANSWERS[1], ANSWERS[2]), ("What is rain?",
                   "Water falling from clouds.", "Rain is water that falls from clouds when droplets grow heavy.")]
    profile = learn_profile(comparisons, model=(model, tokenizer), basis=BASIS)
    expected = fit_bradley_terry(comparison_features(scorer, comparisons), np.ones(3)).weights
    np.testing.assert_allclose(profile.vector, expected, atol=1e-6)
    assert list(profile.weights) == BASIS and profile.evidence["comparisons"] == 3
    assert profile.top(1)[0][0] == max(profile.weights, key=lambda n: abs(profile.weights[n]))
    # The reward is w · φ, usable on its own: rank candidates.
    rewards = profile.rewards(PROMPT, ANSWERS)
    np.testing.assert_allclose(rewards, scorer.features(PROMPT, ANSWERS) @ profile.vector, atol=1e-9)
    assert profile.reward(PROMPT, ANSWERS[0]) == pytest.approx(rewards[0])
    assert [a for a, _ in profile.rank(PROMPT, ANSWERS)] == [ANSWERS[i] for i in np.argsort(rewards)[::-1]]


def test_a_loaded_model_is_shared_not_loaded_again(model: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_persona_judge.profiles import scoring

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(scoring, "shared_model", refuse)
    llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer)
    for given in ((model, tokenizer), llm):
        profile = profile_from_description("Keep it short.", model=given, basis=BASIS)
        assert profile.model.fingerprint == model_fingerprint(model)
        assert profile.scorer().handle.model is model


def test_learn_from_texts_is_the_writing_step(model: Any, tokenizer: Any, scorer: PersonaScorer) -> None:
    texts = [(PROMPT, ANSWERS[2]), "Hey! Lovely day, isn't it?"]
    profile = learn_from_texts(texts, model=(model, tokenizer), basis=BASIS, l2=0.5)
    stats = [scorer.writing_statistics(PROMPT, ANSWERS[2]),
             scorer.writing_statistics("Write a short message in your own words.", texts[1])]
    expected = writing_weights(sum(s.score for s in stats), sum(s.fisher for s in stats), l2=0.5)
    np.testing.assert_allclose(profile.vector, expected, atol=1e-6)
    assert profile.evidence["texts"] == 2 and profile.evidence["tokens"] == sum(s.tokens for s in stats)


def test_a_description_is_kept_as_free_text(model: Any, tokenizer: Any) -> None:
    profile = profile_from_description("  I'm a nurse, keep it short.  ", model=(model, tokenizer), basis=BASIS)
    assert profile.description == "I'm a nurse, keep it short." and profile.top() == []
    plan = profile.decoding_plan()
    assert plan.preferences == ["I'm a nurse, keep it short."] and plan.weights == [1.0]


# -- the profile: reading, decoding plan, files, versions -------------------------------------------------------------


def make_profile(model: Any, tokenizer: Any, weights: list[float], **kwargs: Any) -> PreferenceProfile:
    return profile_from_description("x", model=(model, tokenizer), basis=BASIS).with_weights(weights) \
        .with_description(kwargs.get("description"))


def test_top_dimensions_and_the_decoding_plan(model: Any, tokenizer: Any) -> None:
    profile = make_profile(model, tokenizer, [0.6, -0.3, 0.01], description="Use metric units.")
    assert profile.top(2) == [("concise", 0.6), ("informative", -0.3)]
    assert profile.pole_of("informative", -0.3) == "concise" and profile.pole_of("friendly", 0.1) == "friendly"
    assert profile.dimensions()[0] == {"dimension": "length", "poles": ("concise", "informative"),
                                       "score": pytest.approx(0.9)}
    plan = profile.decoding_plan(["Answer in French."])
    # friendly (0.01) is under a tenth of the strongest: left out. Learned poles share half, stated ones the rest.
    assert [getattr(p, "name", p) for p in plan.preferences] == ["concise", "informative", "Answer in French.",
                                                                 "Use metric units."]
    np.testing.assert_allclose(plan.weights, [1 / 3, -1 / 6, 0.25, 0.25])
    assert plan.preferences[0].description == profile.basis.text("concise")
    assert plan.metadata["personas"][0] == {"name": "concise", "weight": 0.3333, "learned_weight": 0.6}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(model: Any, tokenizer: Any, tmp_path: Path, suffix: str) -> None:
    profile = make_profile(model, tokenizer, [0.5, -0.25, 0.125], description="Be kind.")
    path = profile.save(tmp_path / f"me{suffix}")
    if suffix == ".json":
        json.loads(path.read_text())
    loaded = PreferenceProfile.load(path)
    assert loaded.weights == profile.weights and loaded.description == "Be kind."
    assert loaded.basis == profile.basis and loaded.model == profile.model
    assert loaded.to_dict() == profile.to_dict()


def test_the_chat_model_decodes_with_a_profile(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    from langchain_persona_judge import decoding as engine

    path = make_profile(model, tokenizer, [0.6, -0.3, 0.1], description="Be kind.").save(tmp_path / "p.yaml")
    seen: list[dict[str, Any]] = []
    real = engine.stream

    def spy(m: Any, prompts: Any, **kwargs: Any) -> Any:
        seen.append({"prompts": [p.tolist() for p in prompts], **kwargs})
        return real(m, prompts, **kwargs)

    llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=str(path), temperature=0, max_tokens=5)
    engine_stream = engine.stream
    engine.stream = spy
    try:
        answer = llm.invoke(PROMPT)
    finally:
        engine.stream = engine_stream
    [run] = seen
    options = run["options"]
    assert options.combine == "product" and options.weights == pytest.approx((0.3, -0.15, 0.05, 0.5))
    assert run["reference"] is not None  # the weights do not sum to 1: the plain conversation is read too
    assert "Be kind." in tokenizer.decode(run["prompts"][3])
    meta = answer.response_metadata["profile"]
    assert [p["name"] for p in meta["personas"]] == ["concise", "informative", "friendly"]
    assert meta["description"] == "Be kind." and answer.response_metadata["persona_judge"]["combine"] == "product"
    # guidance unset: a learned profile decodes at γ = 4 (the measured default), said in the metadata.
    assert options.guidance == 4.0 and answer.response_metadata["persona_judge"]["guidance"] == 4.0
    # Per call, and refused beside explicit weights.
    assert ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, max_tokens=3).invoke(
        PROMPT, profile=str(path)).response_metadata["profile"]["description"] == "Be kind."
    with pytest.raises(ValueError, match="weights or a profile"):
        ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=str(path), combine="product",
                         weights=[1.0], max_tokens=3).invoke(PROMPT)


def test_guidance_left_unset_is_4_for_a_profiles_product_and_1_otherwise(model: Any, tokenizer: Any) -> None:
    """γ = 4 is what a learned profile's product decodes at unless the caller sets guidance; stated preferences
    and best-of-N's candidates keep 1 (the personas themselves), and an explicit value always wins."""
    profile = make_profile(model, tokenizer, [0.6, -0.3, 0.1])

    def gamma(**settings: Any) -> float:
        llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, temperature=0, max_tokens=2, **settings)
        return llm.invoke(PROMPT).response_metadata["persona_judge"]["guidance"]

    assert gamma(profile=profile) == 4.0
    assert gamma(profile=profile, guidance=1.0) == 1.0 and gamma(profile=profile, guidance=2.5) == 2.5
    assert gamma(preferences=["Be brief."]) == 1.0 and gamma(preferences=["Be brief."], guidance=2.0) == 2.0
    best = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, temperature=0, max_tokens=2, profile=profile,
                            profile_decoding="best_of_n", best_of=2).invoke(PROMPT)
    assert best.response_metadata["profile"]["rule"] == "best_of_n"
    assert best.response_metadata["persona_judge"]["guidance"] == 1.0


# -- malformed evidence and profiles: clear errors ------------------------------------------------------------------


def test_malformed_evidence_is_refused(model: Any, tokenizer: Any) -> None:
    given = (model, tokenizer)
    cases = [
        (lambda: learn_profile([], model=given, basis=BASIS), "No comparisons"),
        (lambda: learn_profile([(PROMPT, "", "b")], model=given, basis=BASIS), "chosen answer is empty"),
        (lambda: learn_profile([(PROMPT, "same", " same ")], model=given, basis=BASIS), "same text"),
        (lambda: learn_profile([(PROMPT, "a")], model=given, basis=BASIS), r"\(prompt, chosen, rejected\)"),
        (lambda: learn_profile([("  ", "a", "b")], model=given, basis=BASIS), "prompt is empty"),
        (lambda: learn_from_texts([], model=given, basis=BASIS), "No texts"),
        (lambda: learn_from_texts(["  "], model=given, basis=BASIS), "Text #1 is empty"),
        (lambda: profile_from_description(" ", model=given, basis=BASIS), "description is empty"),
        (lambda: learn_profile([(PROMPT, "a", "b")], model=given, basis=[]), "basis is empty"),
        (lambda: learn_profile([(PROMPT, "a", "b")], model=given, basis=["concise", "concise"]), "more than once"),
        (lambda: learn_profile([(PROMPT, "a", "b")], model=object(), basis=BASIS), "pass None"),
    ]
    for call, message in cases:
        with pytest.raises(ProfileError, match=message):
            call()
    with pytest.raises(PersonaJudgeError, match="Unknown persona 'concize'"):
        learn_profile([(PROMPT, "a", "b")], model=given, basis=["concize"])


def test_a_choice_of_an_unknown_answer_is_refused(scorer: PersonaScorer) -> None:
    learner = PreferenceLearner(scorer, prompts=[])
    learner.add_candidates(PROMPT, ANSWERS, features=np.eye(3))
    question = learner.next_question()
    for bad in (3, "left", "an answer nobody gave", -1):
        with pytest.raises(ProfileError, match="not one of the two answers"):
            learner.record(question, bad)
    other = PreferenceLearner(scorer, prompts=[])
    with pytest.raises(ProfileError, match="not asked by this learner"):
        other.record(question, 1)
    learner.record(question, "=")
    with pytest.raises(ProfileError, match="already answered"):
        learner.record(question, 1)
    assert learner.profile.evidence == {"comparisons": 1, "ties": 1, "l2": 0.1, "strategy": "active"}
    assert [parse_choice(c, ("x", "y")) for c in (1, "2", "=", 0, "y", "none")] == [1.0, 0.0, 0.5, 0.5, 0.0, 0.5]
    with pytest.raises(ProfileError, match="features must be finite"):
        learner.add_candidates(PROMPT, ["e e e e"], features=np.array([[np.nan, 0.0, 0.0]]))
    with pytest.raises(ProfileError, match="response is empty"):
        learner.add_candidates(PROMPT, [" "], features=np.zeros((1, 3)))


def test_a_profile_from_another_model_is_refused(model: Any, other_model: Any, tokenizer: Any) -> None:
    profile = make_profile(model, tokenizer, [0.5, -0.5, 0.0])
    assert model_fingerprint(model) != model_fingerprint(other_model)
    with pytest.raises(ProfileError, match="learned with the model .* another"):
        profile.bind((other_model, tokenizer))
    with pytest.raises(ProfileError, match="learned with the model"):
        ChatPersonaJudge(hf_model=other_model, tokenizer=tokenizer, profile=profile, max_tokens=2).invoke(PROMPT)
    with pytest.raises(ProfileError, match="learned with the model"):
        learn_profile([(PROMPT, "a", "b")], model=(other_model, tokenizer), basis=BASIS, prior=profile)
    with pytest.raises(ProfileError, match="another basis"):
        learn_profile([(PROMPT, "a", "b")], model=(model, tokenizer), basis=["concise", "friendly"], prior=profile)
    # The same weights in bfloat16 are the same model.
    assert model_fingerprint(tiny_llama(seed=1, vocab_size=len(tokenizer)).to(torch.bfloat16)) == \
        model_fingerprint(model)


def test_a_registry_that_renders_a_basis_persona_differently_is_another_basis(model: Any, tokenizer: Any) -> None:
    profile = make_profile(model, tokenizer, [0.5, -0.5, 0.0])
    edited = PersonaRegistry.from_yaml_text("personas:\n  - name: concise\n    description: Be terse.\n")
    with pytest.raises(ProfileError, match=r"the texts of \['concise'\] differ"):
        profile.check_basis(resolve_basis(BASIS, edited))


def test_nan_weights_are_refused(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    profile = make_profile(model, tokenizer, [0.5, -0.5, 0.0])
    with pytest.raises(ProfileError, match="not finite for \\['informative'\\]"):
        profile.with_weights([0.1, math.nan, 0.0])
    data = profile.to_dict()
    data["basis"]["personas"][0]["weight"] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"nan.json: the weights of \['concise'\] are not finite"):
        PreferenceProfile.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[: len(text) // 2] + "\n  - {[\n", "corrupted"),
        (lambda text: "just some words", "not a preference profile"),
        (lambda text: text.replace("version: 1", "version: 99"), "newer than this package"),
        (lambda text: text.replace("Generate a response that is concise", "Be verbose"), "digest does not match"),
        (lambda text: text.replace("fingerprint:", "fingerprnt:"), "`model` must hold"),
        (lambda text: text.replace("weight: 0.5", "weight: lots"), "must be a number"),
        (lambda text: text.replace("  personas:", "  persons:"), "basis.personas"),
    ],
)
def test_a_corrupted_file_is_a_clear_error(model: Any, tokenizer: Any, tmp_path: Path, edit: Any,
                                            message: str) -> None:
    path = make_profile(model, tokenizer, [0.5, -0.5, 0.0]).save(tmp_path / "p.yaml")
    path.write_text(edit(path.read_text()))
    with pytest.raises(ProfileError, match=message):
        PreferenceProfile.load(path)
    with pytest.raises(ValueError, match=message):  # and at construction of the chat model (a ValidationError)
        ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=path)


def test_a_missing_or_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        PreferenceProfile.load(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="UTF-8"):
        PreferenceProfile.load(tmp_path / "bin.yaml")


# -- the basis -------------------------------------------------------------------------------------------------------


def test_the_builtin_basis_is_bipolar() -> None:
    names = builtin_basis_names()
    basis = resolve_basis(None)
    assert len(names) == 20 and list(basis.names) == names
    pairs = basis.pairs()
    assert len(pairs) == 10 and {d for d, _, _ in pairs} == {
        "length", "expertise", "friendliness", "formality", "humour", "elicitation", "politeness", "enthusiasm",
        "confidence", "structure"}
    assert basis.opposite("concise") == "informative" and basis.opposite("elementary") == "expert"
    assert Basis(("a",), ("A text.",), (None,)).opposite("a") is None
    assert resolve_basis(["concise", "friendly"]).opposite("concise") is None  # its pole is not in this basis


def test_user_personas_join_a_basis_and_pair_by_tag() -> None:
    registry = PersonaRegistry.from_yaml_text(
        "personas:\n"
        "  - {name: metric, description: Use metric units., tags: ['dimension:units']}\n"
        "  - {name: imperial, description: Use imperial units., tags: ['dimension:units']}\n"
    )
    basis = resolve_basis(["concise", "metric", "imperial"], registry)
    assert basis.opposite("metric") == "imperial" and basis.pairs() == [("units", "metric", "imperial")]


# -- the CLI ---------------------------------------------------------------------------------------------------------


class FakeLearner:
    """What the learn loop needs of a PreferenceLearner, without a model."""

    def __init__(self, profile: PreferenceProfile) -> None:
        self._profile = profile
        self.recorded: list[Any] = []
        self.count = 0

    def next_question(self) -> Any:
        from langchain_persona_judge.profiles import Question

        self.count += 1
        return Question(self.count - 1, f"Question {self.count}?", ("Short answer.", "A much longer answer " * 5),
                        ("concise", "informative"), 1.0, (0, 1))

    def record(self, question: Any, choice: Any) -> PreferenceProfile:
        parse_choice(choice, question.answers)
        self.recorded.append(choice)
        return self._profile

    @property
    def profile(self) -> PreferenceProfile:
        return self._profile


def test_the_learn_loop_asks_records_and_draws_the_profile(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    from langchain_persona_judge.cli.learn import interact

    learner = FakeLearner(make_profile(model, tokenizer, [0.6, -0.3, 0.1]))
    out = io.StringIO()
    profile = interact(learner, 3, io.StringIO("1\nx\n2\n=\n"), out, width=100)
    text = out.getvalue()
    assert learner.recorded == ["1", "2", "="]
    assert "Question 1 of 3" in text and "Question 3 of 3" in text and "[1]" in text and "[2]" in text
    assert "type 1, 2 or =" in text  # the bad answer was asked again
    assert "length" in text and "concise" in text and "█" in text  # the bar chart
    assert profile is learner.profile


def test_the_learn_loop_stops_early_on_q_and_eof(model: Any, tokenizer: Any) -> None:
    from langchain_persona_judge.cli.learn import interact

    learner = FakeLearner(make_profile(model, tokenizer, [0.6, -0.3, 0.1]))
    interact(learner, 5, io.StringIO("1\nq\n"), io.StringIO(), width=80)
    assert learner.recorded == ["1"]
    learner = FakeLearner(make_profile(model, tokenizer, [0.6, -0.3, 0.1]))
    interact(learner, 5, io.StringIO("2\n"), io.StringIO(), width=80)
    assert learner.recorded == ["2"]


def test_the_cli_reads_a_profile_flag(model: Any, tokenizer: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_persona_judge.cli import ask, main

    path = make_profile(model, tokenizer, [0.6, -0.3, 0.1]).save(tmp_path / "p.yaml")
    made: list[Any] = []
    real = ask._make_llm

    def spy(*args: Any, **kwargs: Any) -> Any:
        llm = real(*args, **kwargs)
        made.append(llm)
        return llm.model_copy(update={"hf_model": model, "tokenizer": tokenizer})

    monkeypatch.setattr(ask, "_make_llm", spy)
    assert main(["Why?", "--profile", str(path), "--max-tokens", "2", "-q"]) == 0
    assert made[0].profile.weights == PreferenceProfile.load(path).weights
    assert main(["Why?", "--profile", str(tmp_path / "missing.yaml")]) == 2
    assert "profile file not found" in capsys.readouterr().err
    assert main(["Why?", "--profile", str(path), "--combine", "product", "--weight", "1"]) == 2


# -- whole-answer features: the answer's length --------------------------------------------------------------------


def words_text(count: int) -> str:
    return " ".join(f"w{i % 7}" for i in range(count))


def test_the_length_feature_recovers_a_planted_weight_from_simulated_choices() -> None:
    """A simulated user picks by ``σ(w · Δpersona + w_len · log2(words_a / words_b))`` (its definition written
    here); fitted on the basis's own feature values, the length weight comes back."""
    basis = resolve_basis(["concise", "informative"], features=["length"])
    rng = np.random.default_rng(3)
    planted = np.array([0.8, -0.4, -1.5])  # prefers answers half as long with odds e^1.5 : 1
    n = 20000
    counts = np.exp(rng.uniform(np.log(5), np.log(400), size=(n, 2))).astype(int)
    personas = rng.normal(scale=0.5, size=(n, 2, 2))
    true_utility = personas @ planted[:2] + planted[2] * np.log2(counts)
    first_chosen = rng.random(n) < 1 / (1 + np.exp(-(true_utility[:, 0] - true_utility[:, 1])))
    length = {int(c): basis.feature_values(words_text(int(c))) for c in np.unique(counts)}  # what the basis scores
    rows = [[np.concatenate([personas[i, k], length[int(counts[i, k])]]) for k in (0, 1)] for i in range(n)]
    differences = np.stack([a - b if chosen else b - a for (a, b), chosen in zip(rows, first_chosen)])
    fit = fit_bradley_terry(differences, np.ones(n), l2=1e-3)
    assert fit.converged
    np.testing.assert_allclose(fit.weights, planted, atol=0.1)  # about 3 standard errors at 20,000 choices


def test_a_basis_with_features_scores_them_after_the_personas(model: Any, tokenizer: Any,
                                                              scorer: PersonaScorer) -> None:
    with_length = PersonaScorer((model, tokenizer), BASIS, features=["length"])
    assert len(with_length.basis) == len(BASIS) + 1 and with_length.basis.labels == (*BASIS, "length")
    assert with_length.basis.identity != scorer.basis.identity  # another basis: profiles are not interchangeable
    features = with_length.features(PROMPT, ANSWERS)
    np.testing.assert_allclose(features[:, :3], scorer.features(PROMPT, ANSWERS), rtol=1e-9)
    expected = [math.log2(len(a.split()) / 100) for a in ANSWERS]  # doublings from 100 words
    np.testing.assert_allclose(features[:, 3], expected, rtol=1e-12)


def test_learning_with_the_length_feature_shows_it_in_the_profile(model: Any, tokenizer: Any) -> None:
    short, long = "Blue light scatters.", words_text(60)
    comparisons = [(PROMPT, short, long), ("What is rain?", "Water falls.", words_text(45)),
                   ("Why do cats purr?", "Contentment.", words_text(80))]
    profile = learn_profile(comparisons, model=(model, tokenizer), basis=BASIS, features=["length"])
    assert list(profile.weights) == [*BASIS, "length"] and profile.length_weight < 0
    assert ("length", profile.length_weight) in profile.top(4)
    assert {"dimension": "length", "poles": ("length", None), "score": profile.length_weight,
            "feature": True} in profile.dimensions()
    # The length term of the reward: w_len times the doublings between the two answers (3 and 60 words).
    length_only = profile.with_weights([0.0, 0.0, 0.0, profile.length_weight])
    assert length_only.reward(PROMPT, short) - length_only.reward(PROMPT, long) == pytest.approx(
        profile.length_weight * math.log2(3 / 60))
    # Decoding: the personas as before, the length weight as an end-of-turn bias of −γ·w (capped).
    plan = profile.decoding_plan()
    assert all(getattr(p, "name", None) != "length" for p in plan.preferences)
    assert plan.eos_bias == pytest.approx(-profile.length_weight)
    assert profile.decoding_plan(strength=2.0).eos_bias == pytest.approx(min(8.0, -2 * profile.length_weight))
    assert plan.metadata["length"]["eos_bias"] == pytest.approx(round(plan.eos_bias, 4))
    # Writing evidence leaves the length weight at 0; the texts are the personas' only.
    written = learn_from_texts(["Short and sweet."], model=(model, tokenizer), basis=BASIS, features=["length"])
    assert written.weights["length"] == 0.0 and len(written.vector) == 4


def test_a_profile_with_features_round_trips_and_refuses_a_changed_basis(model: Any, tokenizer: Any,
                                                                           tmp_path: Path) -> None:
    profile = profile_from_description("x", model=(model, tokenizer), basis=BASIS, features=["length"]) \
        .with_weights([0.5, -0.25, 0.125, -1.5]).with_description("Keep it short.")
    for suffix in (".yaml", ".json"):
        loaded = PreferenceProfile.load(profile.save(tmp_path / f"p{suffix}"))
        assert loaded.weights == profile.weights and loaded.basis == profile.basis
        assert loaded.to_dict() == profile.to_dict()
    data = profile.to_dict()
    assert data["basis"]["features"][0]["name"] == "length" and data["basis"]["features"][0]["weight"] == -1.5
    assert resolve_basis(list(profile.weights)) == profile.basis  # what `learn --resume` and the chat app pass
    # Learning more over the basis without the feature is refused (its weights mean something else).
    with pytest.raises(ProfileError, match="another basis"):
        learn_profile([(PROMPT, "a", "b")], model=(model, tokenizer), basis=BASIS, prior=profile)
    # A feature with no weight, an unknown one, a non-finite or crafted weight, or one removed: each named.
    cases = [
        (lambda d: d["basis"]["features"][0].pop("weight"), "has no weight"),
        (lambda d: d["basis"]["features"][0].update(name="politeness"), "unknown feature 'politeness'"),
        (lambda d: d["basis"]["features"][0].update(weight=float("nan")), r"basis.features\[length\]"),
        (lambda d: d["basis"]["features"][0].update(weight=1e9), "out of range"),
        (lambda d: d["basis"]["features"][0].update(extra=1), "unknown keys"),
        (lambda d: d["basis"].update(features="length"), "must be a list"),
        (lambda d: d["basis"].pop("features"), "digest does not match"),
    ]
    for edit, message in cases:
        broken = json.loads(json.dumps(data))
        edit(broken)
        with pytest.raises(ProfileError, match=message):
            PreferenceProfile.from_dict(broken, source="p.json")


def test_unknown_or_clashing_features_are_refused() -> None:
    with pytest.raises(ProfileError, match=r"features \['politeness'\] are unknown"):
        resolve_basis(["concise"], features=["politeness"])
    with pytest.raises(ProfileError, match="pass a list of feature names"):
        resolve_basis(["concise"], features="length")
    with pytest.raises(ProfileError, match="repeat"):
        resolve_basis(["concise"], features=["length", "length"])
    with pytest.raises(ProfileError, match="whole-answer feature"):
        resolve_basis(["concise"], features=["length"]).text("length")


def test_the_eos_bias_shifts_every_rules_log_odds_of_stopping_by_exactly_itself() -> None:
    """The bias goes on every row alike; whatever the rule combines them into (judge row, guidance, product with
    or without a reference row), the combined distribution's log-odds of stopping move by exactly the bias."""
    from langchain_persona_judge.decoding import combine
    from langchain_persona_judge.decoding.acceptance import build_processors, process

    torch.manual_seed(0)
    vocab, eos, bias = 50, frozenset({3, 7}), 2.5
    logits = torch.randn(4, vocab) * 3  # three personas, then the reference row
    processed = process(logits, build_processors(None, None, bias, eos), [[1, 2]] * 4)

    def stop_log_odds(scores: torch.Tensor) -> float:
        logp = torch.log_softmax(scores.float(), dim=-1)
        stop = torch.logsumexp(logp[[3, 7]], dim=0)
        go = torch.log1p(-stop.exp())
        return float(stop - go)

    rules = [
        lambda x: x[1],  # a judge's own distribution
        lambda x: combine.guided(x[:1], x[3], 2.0)[0],
        lambda x: combine.product(x[:3], torch.tensor([0.5, 0.3, 0.2])),
        lambda x: combine.product(x[:3], torch.tensor([0.6, -0.3, 0.1]), x[3], 1.5),
    ]
    for rule in rules:
        shift = stop_log_odds(rule(processed)) - stop_log_odds(rule(logits))
        # the bias multiplies the odds of every stop token by e^bias; the odds of stopping at all follow
        assert shift == pytest.approx(bias, abs=1e-4)


# -- best-of-N: candidates ranked by the profile's reward --------------------------------------------------------


def direct_reward(model: Any, tokenizer: Any, profile: PreferenceProfile, text: str, complete: bool) -> float:
    """``w · φ`` of one answer to PROMPT written out: unbatched forwards with no cache, the mean log-ratio of each
    persona's copy of the conversation against the plain one, then log2(words / 100) for the length."""
    conversation = [{"role": "user", "content": PROMPT}]
    response = tokenizer(text.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    response += [tokenizer.eos_token_id] if complete else []
    plain = direct_log_probs(model, conversation_ids(tokenizer, conversation, []), response)
    reward = 0.0
    for name, weight in profile.weights.items():
        if name == "length":
            reward += weight * math.log2(max(1, len(text.split())) / 100)
        else:
            persona = direct_log_probs(model, conversation_ids(tokenizer, conversation, [profile.basis.text(name)]),
                                       response)
            reward += weight * float((persona - plain).mean())
    return reward


def test_best_of_n_answers_with_the_rewards_argmax_among_its_candidates(model: Any, tokenizer: Any) -> None:
    profile = profile_from_description("x", model=(model, tokenizer), basis=BASIS, features=["length"]) \
        .with_weights([0.6, -0.3, 0.2, -0.5]).with_description(None)
    llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=profile, profile_decoding="best_of_n",
                           best_of=5, temperature=1.0, top_p=None, seed=3, max_tokens=8)
    answer = llm.invoke(PROMPT)
    report = answer.response_metadata["profile"]
    assert report["rule"] == "best_of_n"
    candidates = report["candidates"]
    # The profile's own product decode, the plain answer, then the poles it leans to (concise: +0.6 on concise,
    # and −0.3 on informative leans there too; friendly); sampling starts the list over for the fifth.
    assert [c["decoded_under"] for c in candidates] == ["profile", "plain", "concise", "friendly", "profile"]
    texts = [c["text"] for c in candidates]
    assert len({t.strip() for t in texts}) >= 3  # the candidates differ: the ranking has something to choose
    expected = [direct_reward(model, tokenizer, profile, t, c["finish_reason"] == "stop") if t.strip()
                else -math.inf for t, c in zip(texts, candidates)]
    best = int(np.argmax(expected))
    assert sorted(expected)[-1] - sorted(expected)[-2] > 1e-4  # a clear winner
    assert report["chosen"] == best and answer.content == texts[best]
    np.testing.assert_allclose([c["reward"] for c in candidates if c["reward"] is not None],
                               [e for e in expected if e != -math.inf], atol=2e-4)
    # Each candidate carried the profile's end-of-turn bias (length −0.5: +0.5).
    assert report["length"] == {"learned_weight": -0.5, "eos_bias": 0.5}


def test_best_of_n_greedy_stops_at_the_list_and_needs_a_profile(model: Any, tokenizer: Any) -> None:
    profile = make_profile(model, tokenizer, [0.6, -0.3, 0.2])
    answer = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=profile, profile_decoding="best_of_n",
                              best_of=16, temperature=0, max_tokens=4).invoke(PROMPT)
    assert [c["decoded_under"] for c in answer.response_metadata["profile"]["candidates"]] == [
        "profile", "plain", "concise", "friendly"]  # greedy would only repeat these
    product = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=profile, temperature=0, max_tokens=4)
    assert product.invoke(PROMPT).response_metadata["profile"]["rule"] == "product"
    with pytest.raises(ProfileError, match="best_of_n.*pass a profile"):
        ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile_decoding="best_of_n", max_tokens=3) \
            .invoke(PROMPT)


# -- concurrent candidates: under continuous batching they share forwards, and decode what they would alone --------


def test_best_of_n_candidates_decode_at_once_under_batching_exactly_as_alone(model: Any, tokenizer: Any,
                                                                             monkeypatch: Any) -> None:
    from langchain_persona_judge.decoding.backends import TransformersBackend
    from langchain_persona_judge.runtime import batch_scheduler

    profile = make_profile(model, tokenizer, [0.6, -0.3, 0.2])
    scheduler = batch_scheduler(TransformersBackend(model, tokenizer))  # the one scheduler of these weights

    def candidates(mode: str, rule: str = "best_of_n") -> list[dict[str, Any]]:
        monkeypatch.setenv("PERSONA_JUDGE_BATCHING", mode)
        llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, profile=profile, profile_decoding=rule,
                               best_of=4, temperature=1.0, top_p=None, seed=11, max_tokens=12)
        return llm.invoke(PROMPT).response_metadata["profile"].get("candidates", [])

    steps = scheduler.steps
    alone = candidates("off")
    assert scheduler.steps == steps  # one after another, no shared batch
    scheduler.widest = 0
    together = candidates("on")
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    assert [c["reward"] for c in together] == [c["reward"] for c in alone]
    assert len({c["text"] for c in alone}) >= 3
    # The widest candidate is the product (a row per pole); a step wider than it held several candidates.
    widest = scheduler.widest
    scheduler.widest = 0
    candidates("on", rule="product")  # the product candidate alone
    assert widest > scheduler.widest > 1


def test_learner_answers_decode_at_once_under_batching_exactly_as_alone(model: Any, tokenizer: Any,
                                                                         monkeypatch: Any) -> None:
    from langchain_persona_judge.decoding.backends import TransformersBackend
    from langchain_persona_judge.runtime import batch_scheduler

    scheduler = batch_scheduler(TransformersBackend(model, tokenizer))
    personas = [None, "concise", "informative", "friendly"]

    def answers(mode: str, **kwargs: Any) -> list[tuple[str, bool]]:
        monkeypatch.setenv("PERSONA_JUDGE_BATCHING", mode)
        learner = PreferenceLearner((model, tokenizer), basis=BASIS, seed=5, max_tokens=10, top_p=None,
                                    temperature=1.0)
        return learner.generate(PROMPT, personas, **kwargs)

    alone = answers("off")
    scheduler.widest = 0
    together = answers("on")
    assert together == alone and len({t for t, _ in alone}) >= 3
    assert scheduler.widest >= 2  # one row each: a step of two or more held several answers
    # An explicit seed: answer i with seed + i, whatever the learner decoded before.
    monkeypatch.setenv("PERSONA_JUDGE_BATCHING", "off")
    learner = PreferenceLearner((model, tokenizer), basis=BASIS, seed=0, max_tokens=10, top_p=None, temperature=1.0)
    learner.generate(PROMPT, [None])  # moves the learner's own counter; an explicit seed ignores it
    assert learner.generate(PROMPT, ["informative", "friendly"], seed=7) == alone[2:]


def _cancel_midway(model: Any, learner: PreferenceLearner, call: Any) -> tuple[dict[str, Any], int]:
    """Run ``call()`` in a thread with every forward of ``model`` slowed to 10 ms, cancel ``learner`` after its
    fifth forward; (``{"result": ...}`` or ``{"error": ...}``, forwards begun after the cancel)."""
    import threading
    import time

    forwards: list[float] = []

    def slow(*args: Any) -> None:
        forwards.append(time.monotonic())
        time.sleep(0.01)

    hook = model.register_forward_pre_hook(slow)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    try:
        thread = threading.Thread(target=run)
        thread.start()
        while len(forwards) < 5 and thread.is_alive():
            time.sleep(0.005)
        assert thread.is_alive(), outcome
        assert learner.cancel() is True
        stopped = time.monotonic()
        thread.join(timeout=30)
    finally:
        hook.remove()
    return outcome, len([t for t in forwards if t > stopped])


def test_cancel_stops_the_answers_being_scored(model: Any, tokenizer: Any) -> None:
    """PreferenceLearner.cancel() stops scoring too: add_candidates raises within a forward, adds nothing, and a
    later call scores as a fresh scorer does (nothing half-read was kept)."""
    learner = PreferenceLearner(PersonaScorer((model, tokenizer), BASIS, chunk=2), seed=5)  # 2 positions a forward
    long_answers = [" ".join(["rain falls from clouds"] * 30), " ".join(["water comes down"] * 30)]
    outcome, after = _cancel_midway(model, learner, lambda: learner.add_candidates(PROMPT, long_answers))
    assert "result" not in outcome and "cancelled" in str(outcome["error"]), outcome
    assert after <= 1  # at most the forward under way
    assert not learner.candidates and not learner._running
    fresh = PersonaScorer((model, tokenizer), BASIS, chunk=2).features(PROMPT, long_answers)
    learner.add_candidates(PROMPT, long_answers)
    np.testing.assert_allclose(np.stack([c.features for c in learner.candidates]), fresh, atol=1e-5)


def test_cancel_stops_the_answers_being_decoded(model: Any, tokenizer: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PERSONA_JUDGE_BATCHING", "off")
    learner = PreferenceLearner((model, tokenizer), basis=BASIS, seed=5, max_tokens=400, top_p=None,
                                temperature=1.0)
    assert learner.cancel() is False  # nothing to stop
    outcome, after = _cancel_midway(model, learner, lambda: learner.generate(PROMPT, [None, "concise"]))
    assert "result" not in outcome and "cancelled" in str(outcome["error"])
    assert after <= 2  # at most the forward under way, and its neighbour's
    assert not learner._running
    # The learner goes on: a later call decodes as usual.
    assert len(learner.generate(PROMPT, [None], seed=5)) == 1
