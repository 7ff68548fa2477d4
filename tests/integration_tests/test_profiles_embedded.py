"""The whole profile loop on the embedded model: ask, choose, learn, save, load, rank, decode with the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_persona_judge import ChatPersonaJudge, PreferenceLearner, PreferenceProfile, learn_from_texts

pytestmark = pytest.mark.embedded


def test_learn_a_profile_from_a_few_choices_and_decode_with_it(embedded: Any, tmp_path: Path) -> None:
    # Shares the embedded transformers weights (a llama.cpp chat model would score on llama.cpp: see below).
    llm = ChatPersonaJudge(backend="transformers", temperature=0, max_tokens=24, repetition_penalty=1.2)
    learner = PreferenceLearner(llm, prompts=["Why do cats purr?", "What is rain?", "How do I start running?"],
                                max_tokens=40, seed=0)
    assert learner.scorer.handle.model is embedded.model  # not loaded a second time

    # A user who prefers the shorter answer, three times.
    for number in range(3):
        question = learner.next_question()
        assert question.answers[0] != question.answers[1] and all(a.strip() for a in question.answers)
        assert question.personas[0] is not None and question.personas[1] is not None  # contrasting poles
        shorter = 1 if len(question.answers[0]) <= len(question.answers[1]) else 2
        profile = learner.record(question, shorter)
        if number == 0:  # one choice: the fit ranks the chosen answer above the other
            chosen, rejected = question.answers[shorter - 1], question.answers[2 - shorter]
            assert profile.reward(question.prompt, chosen) > profile.reward(question.prompt, rejected)
    assert profile.evidence["comparisons"] == 3 and len(profile.weights) == 20
    assert profile.top(1) and all(abs(w) > 0 for _, w in profile.top(3))

    # Saved and read back: the same profile, the same rewards.
    path = profile.save(tmp_path / "me.yaml")
    loaded = PreferenceProfile.load(path)
    answers = ["Rain is water falling from clouds.", "Rain forms when water vapour condenses into droplets that "
               "grow heavy enough to fall; it is part of the water cycle that moves water around the planet."]
    assert loaded.rewards("What is rain?", answers) == pytest.approx(profile.rewards("What is rain?", answers))

    # Decoding with it: its strongest poles become weighted personas, reported in the metadata.
    message = ChatPersonaJudge(profile=path, temperature=0, max_tokens=24).invoke("How do I boil an egg?")
    assert message.content.strip()
    report = message.response_metadata["profile"]
    assert [p["name"] for p in report["personas"]] == [n for n, _ in loaded.top(len(report["personas"]))]
    assert message.response_metadata["persona_judge"]["combine"] == "product"

    # Writing: a text in the user's voice gives weights over the same basis.
    written = learn_from_texts([("How was your weekend?", "Hey! It was awesome, we went hiking and I loved it!")],
                               model=llm)
    assert written.basis == loaded.basis and written.evidence["texts"] == 1


def test_a_profile_and_its_negation_move_the_answer_opposite_ways(embedded: Any) -> None:
    """Which way profile decoding steers, on the profile's own reward ``w · φ``: the answer decoded with the
    profile scores well above the answer decoded with the negated profile (greedy, so deterministic; a decoder
    that flipped the weights' signs fails on every prompt)."""
    from langchain_persona_judge import profile_from_description

    basis = ["concise", "informative", "formal", "casual"]
    weights = [1.0, -1.0, 0.0, 0.0]  # short answers rather than long ones: a dimension the model follows well
    profile = profile_from_description("x", model=embedded, basis=basis).with_weights(weights) \
        .with_description(None)
    negated = profile.with_weights([-w for w in weights])
    prompts = ["Why is the sky blue?", "What is rain?"]

    def answers(**params: Any) -> list[str]:
        llm = ChatPersonaJudge(hf_model=embedded, temperature=0, max_tokens=16, **params)
        return [llm.invoke(prompt).content for prompt in prompts]

    for prompt, up, down in zip(prompts, answers(profile=profile), answers(profile=negated)):
        rewards = profile.rewards(prompt, [up, down])
        assert rewards[0] > rewards[1] + 0.1, (prompt, rewards, (up, down))


def test_a_profile_that_prefers_short_answers_gets_shorter_answers(embedded_llamacpp: Any) -> None:
    """The learned length weight honoured in decoding: the same profile with ``length = −4`` (an answer half as
    long is preferred with odds e⁴ : 1) against ``length = 0``, greedy on the same prompts (on llama.cpp, for
    speed): the median answer is at least 25% shorter in words (the issue's bar; measured: about a third shorter),
    and the metadata names the end-of-turn bias that did it. At γ = 1, where the bias is the learned weight itself
    (a profile's default, γ = 4, would quadruple it)."""
    from langchain_persona_judge import profile_from_description

    base = profile_from_description("x", model=embedded_llamacpp, basis=["informative", "concise"],
                                    features=["length"]).with_description(None)
    neutral, short = base.with_weights([0.5, 0.0, 0.0]), base.with_weights([0.5, 0.0, -4.0])
    prompts = ["Why is the sky blue?", "How do I start running?", "What is inflation?", "How do plants grow?"]

    def words(profile: Any) -> tuple[list[int], list[Any]]:
        llm = ChatPersonaJudge(hf_model=embedded_llamacpp, profile=profile, temperature=0, max_tokens=128,
                               repetition_penalty=1.2, guidance=1.0)
        messages = [llm.invoke(prompt) for prompt in prompts]
        return [len(m.content.split()) for m in messages], messages

    plain_words, _ = words(neutral)
    short_words, messages = words(short)
    median = sorted(plain_words)[1:3]  # the two middle answers of four
    shorter = sorted(short_words)[1:3]
    assert sum(shorter) <= 0.75 * sum(median), (plain_words, short_words)
    assert messages[0].response_metadata["profile"]["length"] == {"learned_weight": -4.0, "eos_bias": 4.0}
    assert all(m.response_metadata["finish_reason"] == "stop" for m in messages)  # they ended, not cut


LLAMACPP_TOLERANCE = 0.05
"""The largest |φ_llama.cpp − φ_transformers| allowed for an answer of about 100 tokens on the embedded GGUF (Q4_1;
measured: at most 0.037, 0.006–0.016 on average over the 20 personas). llama.cpp quantises the activations to 8
bits on the fly where transformers multiplies the de-quantised weights in fp32, so a token's log-ratio can differ
by up to ~0.7; φ averages that noise over the answer, so a 6-token answer differs by up to ~0.17 (allowed: 0.25)."""

RAIN_ANSWERS = [
    "Rain is water that falls from clouds. When warm air rises, it cools, and the water vapour in it condenses "
    "into tiny droplets around specks of dust. The droplets bump into each other and merge; once they are too "
    "heavy for the air to hold up, they fall as rain. The water then runs into rivers, lakes and the sea, "
    "evaporates again in the sun, and the cycle starts over. That is why rain is part of the water cycle.",
    "Oh, great question! Rain happens when clouds get too full of water. Tiny droplets join together until "
    "they're heavy, and then, splash, down they come! It's nature's way of watering the plants and filling up "
    "rivers. Isn't that neat? Next time it rains, you can think of all those little droplets teaming up. Stay "
    "dry out there, and don't forget your umbrella!",
    "Water falling from clouds.",
]


def test_llamacpp_features_match_transformers_on_the_embedded_gguf(embedded: Any, embedded_llamacpp: Any) -> None:
    """φ of six personas of the built-in basis (and the plain row, as K + 1 sequences of one llama.cpp context;
    six spanning its axes, where all 20 only cost time) against transformers' batched forward on the same GGUF; a
    second question continues the same context (its personas' system turns kept, the first question's tokens cut
    away)."""
    import numpy as np

    from langchain_persona_judge.profiles import PersonaScorer

    basis = ["humor", "expert", "concise", "friendly", "formal", "structured"]
    on_torch, on_llama = PersonaScorer(embedded, basis=basis), PersonaScorer(embedded_llamacpp, basis=basis)
    assert on_llama.handle.is_llamacpp and on_llama.fingerprint == on_torch.fingerprint
    for prompt, answers in (("What is rain?", RAIN_ANSWERS[::2]), ("Why do we need rain?", RAIN_ANSWERS[:2])):
        expected = on_torch.features(prompt, answers)
        got = on_llama.features(prompt, answers)
        assert got.shape == expected.shape == (len(answers), len(basis))
        for answer, row, want in zip(answers, got, expected):
            bound = LLAMACPP_TOLERANCE if len(answer.split()) > 40 else 5 * LLAMACPP_TOLERANCE
            assert np.abs(row - want).max() < bound, (answer[:30], np.abs(row - want).max())
            assert np.corrcoef(row, want)[0, 1] > 0.95  # the personas ranked alike
        if prompt == "What is rain?":  # a long and a short answer: the tolerance is small against what tells them apart
            assert np.abs(expected[0] - expected[1]).max() > 4 * LLAMACPP_TOLERANCE
    # A cut-off answer (no end-of-turn scored) and the writing statistics agree too.
    np.testing.assert_allclose(on_llama.features("What is rain?", RAIN_ANSWERS[:1], complete=False),
                               on_torch.features("What is rain?", RAIN_ANSWERS[:1], complete=False),
                               atol=LLAMACPP_TOLERANCE)
    text = "It was great, we went hiking with friends and loved every minute!"
    torch_stats = on_torch.writing_statistics("How was your weekend?", text)
    llama_stats = on_llama.writing_statistics("How was your weekend?", text)
    assert llama_stats.tokens == torch_stats.tokens
    # Sums over the text's tokens (scale ~19 and ~10 here): measured correlations 0.99.
    assert np.corrcoef(llama_stats.score, torch_stats.score)[0, 1] > 0.95
    assert np.corrcoef(llama_stats.fisher.ravel(), torch_stats.fisher.ravel())[0, 1] > 0.95


def test_scoring_on_llamacpp_stops_when_cancelled_and_reads_afresh_after(embedded_llamacpp: Any) -> None:
    """A cancel event set while llama.cpp reads the rows stops it within a decode; the scorer's context is read
    afresh next time, so the same answer then scores exactly as on a new scorer."""
    import threading
    import time

    import numpy as np
    import pytest

    from langchain_persona_judge.errors import ProfileError
    from langchain_persona_judge.profiles import PersonaScorer

    basis = ["humor", "expert", "concise", "friendly", "formal", "structured"]
    scorer = PersonaScorer(embedded_llamacpp, basis=basis)
    long_answer = " ".join(RAIN_ANSWERS) * 3
    cancelled, outcome = threading.Event(), {}

    def score() -> None:
        try:
            outcome["features"] = scorer.features("What is rain?", [long_answer], cancelled=cancelled)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=score)
    thread.start()
    while scorer._llama.stats.forward_calls < 2 and thread.is_alive():  # the prompt, then the answer's blocks
        time.sleep(0.005)
    cancelled.set()
    stopped = time.monotonic()
    thread.join(timeout=60)
    assert time.monotonic() - stopped < 5.0  # one block of ~256 positions at most, not the whole answer
    assert isinstance(outcome.get("error"), ProfileError) and "cancelled" in str(outcome["error"]), outcome
    with pytest.raises(ProfileError, match="cancelled"):  # set before it starts: it does not read at all
        scorer.features("Why do we need rain?", RAIN_ANSWERS[:1], cancelled=cancelled)
    again = scorer.features("What is rain?", RAIN_ANSWERS[:1])
    np.testing.assert_array_equal(again, PersonaScorer(embedded_llamacpp, basis=basis).features(
        "What is rain?", RAIN_ANSWERS[:1]))


def test_a_profile_learns_and_decodes_on_llamacpp_alone(embedded_llamacpp: Any) -> None:
    """A chat model served by llama.cpp: the learner scores on its weights (no transformers copy), and the
    learned profile decodes there too, best-of-N included."""
    from langchain_persona_judge import learn_profile

    llm = ChatPersonaJudge(backend="llamacpp", temperature=0, max_tokens=12)
    profile = learn_profile([("What is rain?", RAIN_ANSWERS[2], RAIN_ANSWERS[0]),
                             ("What is rain?", RAIN_ANSWERS[2], RAIN_ANSWERS[1])],
                            model=llm, basis=["concise", "informative"], features=["length"])
    assert profile.scorer().handle.backend is llm.model_handle() and profile.scorer().handle.is_llamacpp
    assert profile.length_weight < 0
    message = ChatPersonaJudge(backend="llamacpp", profile=profile, profile_decoding="best_of_n", best_of=2,
                               temperature=0, max_tokens=12).invoke("Why is the sky blue?")
    report = message.response_metadata["profile"]
    assert report["rule"] == "best_of_n" and len(report["candidates"]) == 2
    assert message.response_metadata["backend"] == "llamacpp"
