"""Behavioural tests of ChatPersonaJudge on the real embedded SmolLM2-135M-Instruct (greedy, short answers), on
the transformers backend (they compare with transformers' own `generate`; the standard suites and
test_llamacpp_embedded.py run the default, llama.cpp).

The weights are loaded once per process and shared by every ChatPersonaJudge here and in test_standard.py.
Nothing here hard-codes what the model says: answers are compared with each other, with the emitted token
ids, and with transformers' own greedy decoding.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk

import langchain_persona_judge.decoding as engine
from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge.runtime.loading import EMBEDDED_NAME
from langchain_persona_judge.personas import render_preferences

pytestmark = pytest.mark.embedded

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]
QUESTION = "Why is the sky blue?"


@pytest.fixture(scope="module")
def llm() -> ChatPersonaJudge:
    return ChatPersonaJudge(backend="transformers", preferences=PREFERENCES, temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def weights(llm: ChatPersonaJudge) -> SimpleNamespace:
    """The shared transformers model and tokenizer every default ChatPersonaJudge decodes with."""
    handle = llm.model_handle()
    return SimpleNamespace(model=handle.model, tokenizer=handle.tokenizer)


class EngineSpy:
    """Records every engine run: its persona prompts and its token stream."""

    def __init__(self) -> None:
        self.runs: list[SimpleNamespace] = []
        self._real = engine.stream

    def __call__(self, model: Any, prompts: Any, **options: Any) -> engine.TokenStream:
        tokens = self._real(model, prompts, **options)
        self.runs.append(SimpleNamespace(prompts=[p.tolist() for p in prompts], options=options, tokens=tokens))
        return tokens


@pytest.fixture(scope="module")
def answer(llm: ChatPersonaJudge) -> SimpleNamespace:
    """One greedy answer to QUESTION, with the engine run behind it."""
    spy = EngineSpy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "stream", spy)
        result = llm.invoke(QUESTION)
    [run] = spy.runs
    return SimpleNamespace(result=result, run=run)


@pytest.fixture
def engine_runs(monkeypatch: pytest.MonkeyPatch) -> list[SimpleNamespace]:
    spy = EngineSpy()
    monkeypatch.setattr(engine, "stream", spy)
    return spy.runs


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.chunks: list[Any] = []

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.chunks.append(chunk)


def trace_ids(message: AIMessage) -> list[int]:
    return [entry["token_id"] for entry in message.response_metadata["trace"]]


def hf_greedy(weights: SimpleNamespace, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding of the conversation (the reference)."""
    tokenizer = weights.tokenizer
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(weights.model.device)
    eos = tokenizer.eos_token_id
    out = weights.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=eos,
    )
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(eos)] if eos in new else new


def test_usage_metadata_and_trace_describe_the_answer(answer: SimpleNamespace, weights: SimpleNamespace) -> None:
    result, run = answer.result, answer.run
    assert result.content
    usage = result.usage_metadata
    # input_tokens: every persona's prompt, each with its own preference.
    assert len(run.prompts) == 2
    assert usage["input_tokens"] == sum(len(p) for p in run.prompts)
    for mine, prompt in zip(PREFERENCES, run.prompts):
        text = weights.tokenizer.decode(prompt)
        assert mine in text and QUESTION in text
        assert all(other not in text for other in PREFERENCES if other != mine)
    # output_tokens: the emitted ids, which decode to the answer.
    emitted = run.tokens.generation.token_ids
    assert usage["output_tokens"] == len(emitted) == len(trace_ids(result))
    assert trace_ids(result) == emitted
    assert weights.tokenizer.decode(emitted, skip_special_tokens=True) == result.content
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    meta = result.response_metadata
    assert meta["model_name"] == EMBEDDED_NAME
    assert meta["model_provider"] == "persona_judge"
    assert meta["finish_reason"] == run.tokens.generation.finish_reason
    stats = meta["persona_judge"]
    assert stats["iterations"] >= 1 and stats["drafted"] >= stats["accepted"] >= 0
    assert stats["acceptance_rate"] == round(stats["accepted"] / stats["drafted"], 4)
    assert sum(e["kind"] == "accepted" for e in meta["trace"]) == stats["accepted"]
    assert len({e["iteration"] for e in meta["trace"]}) == stats["iterations"]


def test_stream_matches_invoke_and_feeds_callbacks(llm: ChatPersonaJudge, answer: SimpleNamespace) -> None:
    recorder = TokenRecorder()
    chunks = list(llm.stream(QUESTION, config={"callbacks": [recorder]}))
    pieces = [c.content for c in chunks[:-1]]
    assert "".join(pieces) == "".join(recorder.tokens) == answer.result.content
    assert len(pieces) > 3 and all(pieces) and not any("\ufffd" in p for p in pieces)
    assert all(isinstance(c, ChatGenerationChunk) and c.text == t for t, c in zip(recorder.tokens, recorder.chunks))
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata == answer.result.usage_metadata
    assert last.response_metadata["finish_reason"] == answer.result.response_metadata["finish_reason"]


def test_stop_string_cuts_the_answer(llm: ChatPersonaJudge, answer: SimpleNamespace) -> None:
    full = answer.result.content
    middle = len(full) // 2
    stop = full[middle : middle + 6]  # a piece of the greedy answer, most likely spanning several tokens
    assert stop.strip(), full
    expected = full[: full.index(stop)]

    result = llm.invoke(QUESTION, stop=[stop])
    assert result.content == expected and stop not in result.content
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.usage_metadata["output_tokens"] < answer.result.usage_metadata["output_tokens"]

    field_stop = ChatPersonaJudge(backend="transformers", preferences=PREFERENCES, temperature=0, max_tokens=24, stop=[stop])
    chunks = list(field_stop.stream(QUESTION))
    assert "".join(c.content for c in chunks) == expected
    assert chunks[-1].response_metadata["finish_reason"] == "stop"


def test_one_preference_and_none_are_plain_greedy_decoding(weights: SimpleNamespace) -> None:
    preference = "Answer like a pirate."
    single = ChatPersonaJudge(backend="transformers", preferences=[preference], temperature=0, max_tokens=12).invoke(QUESTION)
    system = render_preferences("system", [preference])
    assert preference in system
    expected = hf_greedy(weights, [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}], 12)
    assert trace_ids(single) == expected

    plain = ChatPersonaJudge(backend="transformers", temperature=0, max_tokens=12).invoke(QUESTION)
    assert trace_ids(plain) == hf_greedy(weights, [{"role": "user", "content": QUESTION}], 12)
    assert plain.content == weights.tokenizer.decode(trace_ids(plain), skip_special_tokens=True)


async def test_ainvoke_keeps_the_event_loop_free() -> None:
    llm = ChatPersonaJudge(backend="transformers", preferences=PREFERENCES, temperature=0, max_tokens=8)
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    result = await llm.ainvoke(QUESTION)
    elapsed = time.monotonic() - started
    running = False
    await task
    assert result.content
    # Each forward of the 135M model takes tens of milliseconds: a blocked loop would tick once at most.
    assert ticks >= max(5, int(elapsed / 0.005 * 0.1))


def test_threads_sharing_the_model_get_the_sequential_answers() -> None:
    llm = ChatPersonaJudge(backend="transformers", preferences=PREFERENCES, temperature=0, max_tokens=10)
    questions = ["Why is the sky blue?", "Name three fruits."]
    sequential = [llm.invoke(q).content for q in questions]
    assert sequential[0] != sequential[1]
    barrier = threading.Barrier(len(questions))

    def ask(question: str) -> str:
        barrier.wait()
        return llm.invoke(question).content

    with ThreadPoolExecutor(len(questions)) as pool:
        assert list(pool.map(ask, questions)) == sequential


def test_breaking_out_of_a_stream_stops_decoding(engine_runs: list[SimpleNamespace]) -> None:
    llm = ChatPersonaJudge(backend="transformers", preferences=PREFERENCES, temperature=0, max_tokens=200)
    for chunk in llm.stream(QUESTION):
        assert chunk.content
        break
    decoder = engine_runs[-1].tokens.decoder
    iterations = decoder.stats.iterations
    time.sleep(0.2)
    assert decoder.stats.iterations == iterations <= 3
    assert decoder.finish_reason is None and len(decoder.token_ids) < 20
    assert all(p.cached == 0 for p in decoder.personas)  # caches released


def test_message_names_and_conversations_are_accepted(llm: ChatPersonaJudge) -> None:
    result = llm.invoke(
        [HumanMessage("My name is Ada.", name="ada"), AIMessage("Nice to meet you, Ada!"), HumanMessage("Who am I?")],
        max_tokens=6,
    )
    assert result.content and result.usage_metadata["output_tokens"] <= 6
