"""Personas through ChatPersonaJudge on the embedded model: names, pairs, objects, registries, strategies."""

from __future__ import annotations

import pytest

from langchain_persona_judge import ChatPersonaJudge, Persona, PersonaError, PersonaRegistry

pytestmark = pytest.mark.embedded


@pytest.fixture()
def my_registry(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(
        "personas:\n"
        "  - name: pirate\n    description: Answer in the voice of a cheerful pirate.\n"
        "  - name: humor\n    description: Tell it with a joke.\n"  # overrides the built-in on purpose
    )
    return path


def test_names_pairs_and_registry_file_work_on_the_embedded_model(my_registry):
    llm = ChatPersonaJudge(
        preferences=["elementary", "humor", ("expert", {"field": "biology"})],
        registry=str(my_registry),
        temperature=0,
        max_tokens=12,
    )
    result = llm.invoke("What is DNA?")
    assert result.content.strip()
    meta = result.response_metadata
    assert meta["composition"] == "split" and meta["persona_judge"]["personas"] == 3
    assert meta["persona_prompts"] == [
        ["Generate a response that can be easily understood by an elementary school student."],
        ["Tell it with a joke."],  # the registry file's persona, not the built-in
        ["Generate a response that only a PhD Student in biology could understand."],
    ]
    # Three personas rotate: every judge index appears in the trace.
    assert {entry["judge"] for entry in result.response_metadata["trace"]} <= {0, 1, 2}


@pytest.mark.parametrize(
    "composition, expected_personas, expected_sizes",
    [("split", 3, [1, 1, 1]), ("pair", 2, [2, 1]), ("all", 1, [3])],
)
def test_composition_strategies_decode_with_the_promised_prompts(composition, expected_personas, expected_sizes):
    llm = ChatPersonaJudge(preferences=["concise", "friendly", "Answer in English."], temperature=0, max_tokens=8)
    meta = llm.invoke("Name a fruit.", composition=composition).response_metadata
    assert meta["composition"] == composition
    assert [len(p) for p in meta["persona_prompts"]] == expected_sizes
    assert meta["persona_judge"]["personas"] == expected_personas
    if expected_personas == 1:
        assert meta["persona_judge"]["drafted"] == 0  # the direct prompt decodes plainly


def test_all_composition_equals_one_free_text_preference_listing_them():
    texts = ["Be concise.", "Be friendly."]
    combined = ChatPersonaJudge(preferences=texts, composition="all", temperature=0, max_tokens=16)
    listed = ChatPersonaJudge(preferences=["Be concise.\nBe friendly."], temperature=0, max_tokens=16)
    assert combined.invoke("Name a fruit.").content == listed.invoke("Name a fruit.").content


def test_persona_objects_and_registry_objects():
    registry = PersonaRegistry([Persona(name="shouty", description="Use CAPITAL letters.")])
    llm = ChatPersonaJudge(preferences=["shouty", Persona(name="calm", description="Stay calm.")], registry=registry,
                           temperature=0, max_tokens=8)
    meta = llm.invoke("Hi").response_metadata
    assert meta["persona_prompts"] == [["Use CAPITAL letters."], ["Stay calm."]]


def test_unknown_persona_fails_before_decoding():
    llm = ChatPersonaJudge(preferences=["elementry", "humor"])
    with pytest.raises(PersonaError, match="Did you mean 'elementary'"):
        llm.invoke("Hi")
