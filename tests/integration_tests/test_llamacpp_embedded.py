"""The llama.cpp backend on the embedded SmolLM2 GGUF: what ``auto`` picks, the same model as transformers sees
it, the schedules' identity, streaming, tools, structured output and profiles through ChatPersonaJudge."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel

from langchain_persona_judge import ChatPersonaJudge, generate
from langchain_persona_judge.decoding.options import DecodingStats
from langchain_persona_judge.personas import persona_messages
from langchain_persona_judge.runtime import encode_chat
from tests.conftest import llama_cpp_or_skip

pytestmark = pytest.mark.embedded

QUESTION = "Why do leaves change colour in autumn?"
PREFS = ["Explain it so that a ten-year-old understands.", "Be brief."]


def _prompts(tokenizer) -> list[torch.Tensor]:
    conversation = [{"role": "user", "content": QUESTION}]
    return [encode_chat(tokenizer, persona_messages(conversation, [p])) for p in PREFS]


def test_auto_picks_llamacpp_for_the_embedded_gguf_on_cpu():
    llama_cpp_or_skip()
    answer = ChatPersonaJudge(preferences=PREFS, temperature=0, max_tokens=12, device="cpu").invoke(QUESTION)
    assert answer.response_metadata["backend"] == "llamacpp" and answer.content.strip()
    plain = ChatPersonaJudge(preferences=PREFS, temperature=0, max_tokens=12, device="cpu", backend="transformers")
    assert plain.invoke(QUESTION).response_metadata["backend"] == "transformers"


def test_same_model_as_transformers_within_quantisation(embedded, embedded_llamacpp):
    """llama.cpp multiplies Q4_1 weights by 8-bit-quantised activations; transformers by the de-quantised fp32
    weights. Same model: the same top token and a small divergence, not identical logits."""
    model, tokenizer = embedded.model, embedded.tokenizer
    llama = embedded_llamacpp
    prompt = _prompts(tokenizer)[0].tolist()
    sequences = llama.sequences([len(prompt)], 1, DecodingStats())
    ours = sequences.forward(0, prompt, 1)[-1]
    with torch.inference_mode():
        theirs = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    assert int(ours.argmax()) == int(theirs.argmax())
    kl = torch.nn.functional.kl_div(ours.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="sum")
    assert float(kl) < 0.1
    from langchain_persona_judge.profiles import model_fingerprint

    assert model_fingerprint(llama) == model_fingerprint(model)  # a profile learned on one decodes on the other


def test_schedules_agree_greedy_on_the_embedded_gguf(embedded_llamacpp):
    """Exactly equal on unquantised weights (tests/unit_tests/test_llamacpp.py). On Q4_1 weights llama.cpp's
    kernels depend on how many tokens a decode holds (the speculative judge reads λ + 1 at once, lockstep one
    per sequence), so a near-tie can flip after a while: the schedules agree on the answer's start."""
    llama, tokenizer = embedded_llamacpp, embedded_llamacpp.tokenizer
    common = {"max_new_tokens": 48, "do_sample": False, "lookahead": 4}
    speculative = generate(llama, _prompts(tokenizer), schedule="speculative", **common)
    lockstep = generate(llama, _prompts(tokenizer), schedule="lockstep", **common)
    assert speculative.token_ids[:16] == lockstep.token_ids[:16]
    assert "leav" in tokenizer.decode(speculative.token_ids).lower()


def test_streaming_tools_and_structured_output_on_llamacpp():
    llama_cpp_or_skip()
    llm = ChatPersonaJudge(preferences=PREFS, temperature=0, max_tokens=48, device="cpu", backend="llamacpp")
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) > 3 and chunks[-1].response_metadata["backend"] == "llamacpp"

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    call = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"].get("city"), str)

    class Answer(BaseModel):
        answer: str

    structured = llm.with_structured_output(Answer).invoke("Name a colour.")
    assert isinstance(structured, Answer) and structured.answer
