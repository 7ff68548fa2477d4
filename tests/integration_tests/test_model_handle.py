"""The embedded GGUF's handle on both backends: the same facts (vocabulary, context length, EOS ids), no fake
transformers config, and one ContextLengthError for a conversation that does not fit, before any forward."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_persona_judge import ChatPersonaJudge, ContextLengthError
from langchain_persona_judge.runtime import EMBEDDED_NAME, embedded_model_path
from tests.helpers import count_context_checks

pytestmark = pytest.mark.embedded


def _gguf_facts() -> dict[str, Any]:
    """What the GGUF file itself says, read with the gguf package (not through either backend)."""
    import gguf

    reader = gguf.GGUFReader(str(embedded_model_path()))

    def value(key: str) -> Any:
        field = reader.fields[key]
        return field.parts[field.data[0]]

    arch = bytes(value("general.architecture")).decode()
    return {
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "context_length": int(value(f"{arch}.context_length")[0]),
        "eos": int(value("tokenizer.ggml.eos_token_id")[0]),
    }


@pytest.fixture(scope="module")
def handles(embedded: Any, embedded_llamacpp: Any) -> dict[str, Any]:
    return {"transformers": embedded, "llamacpp": embedded_llamacpp}


def test_the_handle_reports_the_same_facts_on_both_backends(handles: dict[str, Any]) -> None:
    facts = _gguf_facts()
    for kind, handle in handles.items():
        assert handle.kind == kind and handle.name == EMBEDDED_NAME
        assert handle.vocab_size == facts["vocab_size"], kind
        assert handle.context_length == facts["context_length"], kind
        assert facts["eos"] in handle.eos_token_ids, kind
        assert handle.tokenizer.convert_ids_to_tokens(sorted(handle.eos_token_ids)) == ["<|im_end|>"], kind
        assert str(handle.device) == "cpu"
        assert handle.tokenizer.chat_template
    transformers, llamacpp = handles["transformers"], handles["llamacpp"]
    assert transformers.eos_token_ids == llamacpp.eos_token_ids
    assert not hasattr(llamacpp, "config")  # no transformers config faked on the llama.cpp side


@pytest.mark.parametrize("kind", ["transformers", "llamacpp"])
def test_an_over_long_conversation_is_one_context_length_error(
    handles: dict[str, Any], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = handles[kind]
    checks = count_context_checks(monkeypatch)
    llm = ChatPersonaJudge(hf_model=handle, preferences=["Be brief."], max_tokens=4)
    limit = handle.context_length
    with pytest.raises(ContextLengthError, match=f"context holds {limit}") as info:
        llm.invoke("word " * (limit + 100))
    assert checks == [limit]
    assert info.value.limit == limit and info.value.tokens > limit
