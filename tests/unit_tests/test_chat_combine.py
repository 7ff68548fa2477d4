"""The decoding rules through ChatPersonaJudge: fields, per-call overrides, the reference prompt, metadata."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge import decoding as engine
from tests.helpers import tiny_llama

PREFERENCES = ["Answer formally.", "Answer with a joke."]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(seed=2, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, sharpness=3.0)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    real = engine.stream

    def spy(model: Any, prompts: Any, **kwargs: Any) -> Any:
        seen.append({"prompts": [p.tolist() for p in prompts], **kwargs})
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(engine, "stream", spy)
    return seen


def make(model: Any, tokenizer: Any, **params: Any) -> ChatPersonaJudge:
    return ChatPersonaJudge(hf_model=model, tokenizer=tokenizer,
                            **{"preferences": PREFERENCES, "temperature": 0, "max_tokens": 12, **params})


def test_product_runs_one_batched_forward_per_token_and_says_so(model: Any, tokenizer: Any) -> None:
    answer = make(model, tokenizer, combine="product", weights=[0.7, 0.3]).invoke("What is rain?")
    stats = answer.response_metadata["persona_judge"]
    assert stats["combine"] == "product" and stats["weights"] == [0.7, 0.3] and stats["guidance"] == 1.0
    assert stats["schedule"] == "lockstep" and stats["forward_calls"] == stats["emitted"] > 0
    assert {entry["kind"] for entry in answer.response_metadata["trace"]} == {"combined"}


def test_guidance_reads_the_conversation_without_preferences(
    model: Any, tokenizer: Any, runs: list[dict[str, Any]]
) -> None:
    answer = make(model, tokenizer, guidance=2.0).invoke([SystemMessage("Be kind."), HumanMessage("What is rain?")])
    [run] = runs
    reference = tokenizer.decode(run["reference"])
    assert "Be kind." in reference and "What is rain?" in reference
    assert not any(p in reference for p in PREFERENCES)
    assert all(p in tokenizer.decode(prompt) for p, prompt in zip(PREFERENCES, run["prompts"]))
    assert answer.response_metadata["persona_judge"]["guidance"] == 2.0
    # The reference is read too, and counted.
    assert answer.usage_metadata["input_tokens"] == sum(map(len, run["prompts"])) + len(run["reference"])


def test_a_negative_preference_is_what_the_reference_says(
    model: Any, tokenizer: Any, runs: list[dict[str, Any]]
) -> None:
    make(model, tokenizer, guidance=1.5, negative_preference="Answer rudely.").invoke("What is rain?")
    assert "Answer rudely." in tokenizer.decode(runs[-1]["reference"])


def test_no_reference_is_built_when_the_rule_reads_none(
    model: Any, tokenizer: Any, runs: list[dict[str, Any]]
) -> None:
    make(model, tokenizer, combine="product").invoke("What is rain?")
    make(model, tokenizer).invoke("What is rain?")
    assert [run["reference"] for run in runs] == [None, None]


def test_per_call_overrides_of_the_rule(model: Any, tokenizer: Any) -> None:
    llm = make(model, tokenizer)
    base = llm.invoke("What is rain?")
    strong = llm.invoke("What is rain?", guidance=3.0)
    product = llm.invoke("What is rain?", combine="product")
    assert base.response_metadata["persona_judge"]["combine"] == "judge"
    assert strong.response_metadata["persona_judge"]["guidance"] == 3.0
    assert product.response_metadata["persona_judge"]["combine"] == "product"
    assert llm.guidance is None and llm.combine == "judge"  # the overrides were for those calls only


def test_guidance_one_is_the_plain_chat_model(model: Any, tokenizer: Any) -> None:
    plain = make(model, tokenizer, max_tokens=20).invoke("What is rain?")
    same = make(model, tokenizer, max_tokens=20, guidance=1.0, negative_preference="Answer rudely.").invoke(
        "What is rain?")
    assert same.content == plain.content


def test_repetition_penalty_changes_a_looping_answer_and_is_reported(model: Any, tokenizer: Any) -> None:
    plain = make(model, tokenizer, max_tokens=150, preferences=[]).invoke("What is rain?")
    ids = [entry["token_id"] for entry in plain.response_metadata["trace"]]
    assert len(set(ids)) < len(ids), "the random model must repeat itself for this test to mean anything"
    controlled = make(model, tokenizer, max_tokens=150, preferences=[], no_repeat_ngram_size=1).invoke(
        "What is rain?")
    trace_ids = [entry["token_id"] for entry in controlled.response_metadata["trace"]]
    assert len(set(trace_ids)) == len(trace_ids)  # no token twice: every 1-gram is banned once used
    assert controlled.response_metadata["persona_judge"]["no_repeat_ngram_size"] == 1
    penalised = make(model, tokenizer, repetition_penalty=1.3).invoke("What is rain?")
    assert penalised.response_metadata["persona_judge"]["repetition_penalty"] == 1.3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"combine": "product", "weights": [1.0, 2.0, 3.0]}, "weights has 3 value"),
        ({"weights": [0.5, 0.5]}, "weights apply to combine='product'"),
        ({"guidance": float("nan")}, "guidance"),
        ({"combine": "mean"}, "combine"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ],
)
def test_bad_rule_settings_are_clear_errors(model: Any, tokenizer: Any, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(model, tokenizer, **params).invoke("What is rain?")


def test_the_cli_builds_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_persona_judge.cli import ask

    args = ask.build_parser().parse_args(
        ["q", "-p", "concise", "-p", "friendly", "--combine", "product", "--weight", "0.6", "--weight", "0.4",
         "--guidance", "2", "--negative", "Be rude.", "--repetition-penalty", "1.2", "--no-repeat-ngram", "3"])
    llm = ask._make_llm(args, args.preferences)
    assert (llm.combine, llm.weights, llm.guidance, llm.negative_preference) == ("product", [0.6, 0.4], 2.0, "Be rude.")
    assert (llm.repetition_penalty, llm.no_repeat_ngram_size) == (1.2, 3)
    assert torch.is_tensor(torch.tensor(llm.weights))


def test_compare_shows_the_rule_beside_the_others(
    model: Any, tokenizer: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_persona_judge import cli
    from langchain_persona_judge.runtime import REGISTRY

    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    capsys.readouterr()
    try:
        code = cli.main(["What is rain?", "-p", "concise", "-p", "friendly", "--model", str(folder), "-q", "-n", "4",
                         "-t", "0", "--compare", "--combine", "product", "--guidance", "2"])
    finally:
        REGISTRY.release(str(folder), "cpu", None)
    out = capsys.readouterr().out
    assert code == 0
    headings = [line for line in out.splitlines() if line.startswith("=== ")]
    assert len(headings) == 4 and "product, γ=2, weights uniform" in headings[-1]


def test_the_reference_keeps_the_personas_frame(model: Any, tokenizer: Any, runs: list[dict[str, Any]]) -> None:
    """With no system message the personas' turn opens with the preference template's default; the reference
    must too (not with the chat template's own default system prompt), so that only the preference differs."""
    make(model, tokenizer, guidance=2.0).invoke("What is rain?")
    [run] = runs
    reference = tokenizer.decode(run["reference"])
    personas = [tokenizer.decode(p) for p in run["prompts"]]
    assert "You are a helpful AI assistant." in reference
    assert all(p.replace(preference + "\n", "") == reference or p.replace("\n" + preference, "") == reference
               for p, preference in zip(personas, PREFERENCES))
