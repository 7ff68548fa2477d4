"""One model handle from load to forward: the backend is built once per model, the context limit is checked in
one place with one error type, and the handle's facts are what every layer reads (tiny random Llamas with the
embedded model's tokenizer; the embedded weights' version of these is tests/integration_tests/test_model_handle.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from langchain_persona_judge import ChatPersonaJudge, ContextLengthError, generate
from langchain_persona_judge.decoding import ModelBackend
from langchain_persona_judge.decoding.backends import TransformersBackend
from langchain_persona_judge.runtime import REGISTRY, admission_queue, load_model, shared_model
from tests.helpers import count_context_checks, tiny_llama

PREFS = ["Answer formally.", "Answer with a joke."]


@pytest.fixture
def constructions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every TransformersBackend built while the test runs (the wrapped models)."""
    built: list[Any] = []
    original = TransformersBackend.__init__

    def counting(self: TransformersBackend, model: Any, *args: Any, **kwargs: Any) -> None:
        built.append(model)
        original(self, model, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "__init__", counting)
    return built


def _model(tokenizer: Any, context: int = 512) -> Any:
    model = tiny_llama(seed=1, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model.config.max_position_embeddings = context
    return model


def test_an_hf_model_is_wrapped_once_per_chat_model_not_per_request(tokenizer: Any, constructions: list[Any]) -> None:
    model = _model(tokenizer)
    llm = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, preferences=PREFS, temperature=0, max_tokens=3)
    llm.invoke("Hi")
    llm.invoke("Hello", max_tokens=2)  # a per-call override copies the chat model: the same handle
    list(llm.stream("Hey"))
    llm.get_num_tokens("Hi")
    assert constructions == [model]
    assert llm.model_handle().model is model and llm.model_handle().tokenizer is tokenizer
    # A new hf_model on a copy is wrapped afresh; the handle is never stale.
    other = _model(tokenizer)
    copy = llm.model_copy(update={"hf_model": other})
    assert copy.model_handle().model is other and constructions == [model, other]


def test_a_loaded_model_is_built_once_and_never_again_per_request(
    tokenizer: Any, tmp_path: Path, constructions: list[Any]
) -> None:
    folder = tmp_path / "tiny"
    _model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    try:
        handle = shared_model(str(folder), device="cpu", backend="transformers")
        assert len(constructions) == 1 and constructions[0] is handle.model
        llm = ChatPersonaJudge(model=str(folder), device="cpu", backend="transformers", preferences=PREFS,
                               temperature=0, max_tokens=3)
        llm.invoke("Hi")
        llm.invoke("Hi again")
        assert llm.model_handle() is handle
        prompts = [torch.tensor(tokenizer("a b c")["input_ids"]), torch.tensor(tokenizer("d e")["input_ids"])]
        generate(handle, prompts, max_new_tokens=2, do_sample=False)  # the decoding rules take the handle as is
        assert len(constructions) == 1
    finally:
        REGISTRY.release(str(folder), "cpu", None, "transformers")


def test_a_handle_passed_as_hf_model_is_used_as_it_is(tokenizer: Any, tmp_path: Path, constructions: list[Any]) -> None:
    folder = tmp_path / "tiny"
    _model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    handle = load_model(folder, device="cpu", backend="transformers")
    assert isinstance(handle, ModelBackend) and handle.kind == "transformers" and handle.name == str(folder)
    llm = ChatPersonaJudge(hf_model=handle, preferences=PREFS, temperature=0, max_tokens=3)  # no tokenizer= needed
    answer = llm.invoke("Hi")
    assert answer.response_metadata["backend"] == "transformers"
    assert answer.response_metadata["model_name"] == str(folder)
    assert llm.model_handle() is handle and len(constructions) == 1
    # One admission queue for the weights, whichever handle (or the bare model) asks.
    assert admission_queue(handle) is admission_queue(handle.model)
    assert admission_queue(TransformersBackend(handle.model)) is admission_queue(handle)


def test_the_handle_reads_the_model_facts_once_for_every_layer(tokenizer: Any) -> None:
    model = _model(tokenizer, context=300)
    handle = TransformersBackend(model, tokenizer)
    assert handle.vocab_size == len(tokenizer)
    assert handle.context_length == 300
    assert handle.eos_token_ids == {tokenizer.eos_token_id}
    assert handle.device == torch.device("cpu")
    # No EOS in the model's configs: the tokenizer's, so the engine and a grammar stop at the same token.
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    assert handle.eos_token_ids == {tokenizer.eos_token_id}
    assert TransformersBackend(model).eos_token_ids == frozenset()


def test_an_over_long_conversation_is_one_context_length_error_before_any_forward(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_context_checks(monkeypatch)
    llm = ChatPersonaJudge(hf_model=_model(tokenizer, context=64), tokenizer=tokenizer, preferences=PREFS,
                           max_tokens=4)
    with pytest.raises(ContextLengthError, match="context holds 64") as info:
        llm.invoke("word " * 100)
    assert checks == [64]  # checked once, by the one check
    assert info.value.limit == 64 and info.value.tokens > 64


def test_the_decoding_api_raises_the_same_error(tokenizer: Any) -> None:
    handle = TransformersBackend(_model(tokenizer, context=64), tokenizer)
    with pytest.raises(ContextLengthError, match="context holds 64") as info:
        generate(handle, [torch.ones(70, dtype=torch.long), torch.ones(3, dtype=torch.long)], max_new_tokens=2)
    assert info.value.tokens == 70 and info.value.limit == 64


def test_options_are_resolved_once_per_request(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` and the default draft confidence are decided when the request is built; the decoder gets
    concrete options and resolves nothing again."""
    from langchain_persona_judge import decoding

    seen: list[Any] = []
    original = decoding.make_decoder

    def watching(model: Any, prompts: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(options)
        return original(model, prompts, options, *args, **kwargs)

    monkeypatch.setattr(decoding, "make_decoder", watching)
    llm = ChatPersonaJudge(hf_model=_model(tokenizer), tokenizer=tokenizer, preferences=PREFS, temperature=0,
                           max_tokens=3, schedule="auto", draft_confidence=None)
    llm.invoke("Hi")
    (options,) = seen
    assert options.schedule in ("speculative", "lockstep") and options.draft_confidence is not None
    assert decoding.resolve_options(options, llm.model_handle()) is options  # nothing left to resolve
