"""Fast behavioural tests of ChatPersonaJudge on tiny Llama models with the embedded model's real tokenizer.

Two kinds of model stand in for the real one:

* a *scripted* model, built so that it writes a known text (multi-byte characters included) and then EOS,
  whatever the preferences: the text is known, so stop strings, streaming and token counts can be checked
  exactly;
* a tiny *random* Llama, whose personas really disagree, for everything about Persona-judge itself.
"""

from __future__ import annotations

import dataclasses

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

import langchain_persona_judge.decoding as engine
from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge.chat_models import MODEL_ENV
from langchain_persona_judge.personas import render_preferences
from langchain_persona_judge.runtime import encode_chat
from tests.helpers import tiny_llama

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]
QUESTION = "What is rain?"
# Distinct tokens (the scripted model is a bigram model), with multi-byte characters split over tokens (the
# emoji and the check mark: four and three byte tokens of the tiny tokenizer, tests/helpers/tokenizer.py).
SCRIPT = "Hi😊 über café✓ done; STOP now please and more text"


def scripted_llama(tokenizer: Any, text: str) -> tuple[LlamaForCausalLM, list[int]]:
    """A one-layer Llama that, after a chat prompt (which ends with ``\\n``), greedily writes ``text`` then EOS.

    The attention and MLP output projections are zero, so the last hidden state is the current token's
    embedding; embeddings are one-hot on the script's tokens and the head maps each to its successor.
    The distributions are all but one-hot, so sampling writes the same text.
    """
    start = int(encode_chat(tokenizer, [{"role": "user", "content": "?"}])[-1])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chain = [start, *ids]
    eos = tokenizer.eos_token_id
    assert len(set(chain)) == len(chain) and eos not in chain, "a bigram script needs distinct tokens"
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=None, pad_token_id=None, eos_token_id=eos, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, token in enumerate(chain):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[chain[i + 1] if i + 1 < len(chain) else eos, i] = 10.0
    model.generation_config.eos_token_id = eos
    return model, ids


@pytest.fixture(scope="module")
def scripted(tokenizer: Any) -> SimpleNamespace:
    model, ids = scripted_llama(tokenizer, SCRIPT)
    return SimpleNamespace(model=model, ids=ids)


@pytest.fixture(scope="module")
def random_model(tokenizer: Any) -> LlamaForCausalLM:
    # Seed 10: on the tiny tokenizer its two personas disagree on QUESTION and four questions get four different
    # answers, the premises of test_stream_astream_and_invoke_agree and test_threads_sharing_one_model_... .
    return tiny_llama(seed=10, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)


@pytest.fixture
def slow_model(tokenizer: Any) -> Iterator[SimpleNamespace]:
    """A tiny random Llama whose every forward pass takes at least 10 ms, and counts itself."""
    model = tiny_llama(seed=3, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    state = SimpleNamespace(model=model, forwards=0)

    def hook(module: Any, args: Any) -> None:
        state.forwards += 1
        time.sleep(0.01)

    handle = model.register_forward_pre_hook(hook)
    yield state
    handle.remove()


def make(model: Any, tokenizer: Any, **params: Any) -> ChatPersonaJudge:
    return ChatPersonaJudge(
        hf_model=model,
        tokenizer=tokenizer,
        **{"preferences": PREFERENCES, "temperature": 0, "max_tokens": 24, **params},
    )


@pytest.fixture
def chat(random_model: Any, tokenizer: Any) -> ChatPersonaJudge:
    return make(random_model, tokenizer)


@pytest.fixture
def engine_runs(monkeypatch: pytest.MonkeyPatch) -> list[SimpleNamespace]:
    """Every engine run the chat model starts: its persona prompts, options and token stream."""
    runs: list[SimpleNamespace] = []
    real = engine.stream

    def spy(model: Any, prompts: Any, **kwargs: Any) -> engine.TokenStream:
        tokens = real(model, prompts, **kwargs)
        options = dataclasses.asdict(kwargs["options"])
        if kwargs.get("constraint") is not None:  # what the call passed besides its options
            options["constraint"] = kwargs["constraint"]
        runs.append(SimpleNamespace(prompts=[p.tolist() for p in prompts], options=options, tokens=tokens))
        return tokens

    monkeypatch.setattr(engine, "stream", spy)
    return runs


def collect(stream: Any) -> tuple[str, list[AIMessageChunk]]:
    chunks = list(stream)
    return "".join(c.content for c in chunks), chunks


def trace_ids(message: AIMessage) -> list[int]:
    return [entry["token_id"] for entry in message.response_metadata["trace"]]


def hf_greedy(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
    """Plain greedy decoding with transformers' own ``generate`` (the reference)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    eos = tokenizer.eos_token_id
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=eos,
    )
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(eos)] if eos in new else new


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.chunks: list[Any] = []

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.chunks.append(chunk)


class AsyncTokenRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.chunks: list[Any] = []

    async def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.chunks.append(chunk)


# -- the scripted model: known text ---------------------------------------------------------------------


def test_scripted_model_writes_its_script(scripted: SimpleNamespace, tokenizer: Any) -> None:
    # The premise of the tests below: the text is SCRIPT, and some of its characters span several tokens.
    assert any("\ufffd" in tokenizer.decode([t]) for t in scripted.ids)
    for lookahead in (1, 4):
        result = make(scripted.model, tokenizer, lookahead=lookahead, max_tokens=64).invoke(QUESTION)
        assert result.content == SCRIPT
        assert trace_ids(result) == scripted.ids
        assert result.usage_metadata["output_tokens"] == len(scripted.ids)
        assert result.response_metadata["finish_reason"] == "stop"  # EOS


@pytest.mark.parametrize("lookahead", [1, 3])
def test_stream_never_splits_multibyte_characters(scripted: SimpleNamespace, tokenizer: Any, lookahead: int) -> None:
    llm = make(scripted.model, tokenizer, lookahead=lookahead, max_tokens=64)
    text, chunks = collect(llm.stream(QUESTION))
    pieces = [c.content for c in chunks[:-1]]
    assert text == SCRIPT
    assert len(pieces) > 5 and all(pieces)
    assert not any("\ufffd" in piece for piece in pieces)
    assert chunks[-1].content == "" and chunks[-1].chunk_position == "last"


# Stop strings: one token, several tokens, inside multi-byte characters, at the very end.
STOPS = ["STOP", "STOP now", "über", "😊 ü", "✓", " more text", "Hi"]


def _first_count_containing(tokenizer: Any, ids: list[int], stop: str) -> int:
    return next(n for n in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:n]))


@pytest.mark.parametrize("where", ["call", "field"])
@pytest.mark.parametrize("stop", STOPS)
def test_stop_string_cuts_invoke_and_stream(
    scripted: SimpleNamespace, tokenizer: Any, stop: str, where: str
) -> None:
    expected = SCRIPT[: SCRIPT.index(stop)]
    used = _first_count_containing(tokenizer, scripted.ids, stop)
    llm = make(scripted.model, tokenizer, max_tokens=64, **({"stop": [stop]} if where == "field" else {}))
    call_stop = [stop] if where == "call" else None

    result = llm.invoke(QUESTION, stop=call_stop)
    assert result.content == expected
    assert stop not in result.content
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.usage_metadata["output_tokens"] == used == len(result.response_metadata["trace"])

    text, chunks = collect(llm.stream(QUESTION, stop=call_stop))
    assert text == expected
    assert chunks[-1].response_metadata["finish_reason"] == "stop"
    assert chunks[-1].usage_metadata["output_tokens"] == used

    # The stop string completes on the last token the budget allows: it still ends with "stop".
    last = llm.invoke(QUESTION, stop=call_stop, max_tokens=used)
    assert last.content == expected
    assert last.response_metadata["finish_reason"] == "stop"


def test_earliest_of_call_and_field_stops_wins(scripted: SimpleNamespace, tokenizer: Any) -> None:
    llm = make(scripted.model, tokenizer, max_tokens=64, stop=["more"])
    assert llm.invoke(QUESTION).content == SCRIPT[: SCRIPT.index("more")]
    assert llm.invoke(QUESTION, stop=["café"]).content == SCRIPT[: SCRIPT.index("café")]
    assert collect(llm.stream(QUESTION, stop=["done"]))[0] == SCRIPT[: SCRIPT.index("done")]


def test_text_held_back_for_an_unfinished_stop_string_is_released(scripted: SimpleNamespace, tokenizer: Any) -> None:
    # "STOP now please" and "text" both start to match and never complete: nothing may be lost.
    llm = make(scripted.model, tokenizer, max_tokens=64, stop=["STOP now pleased", "text!"])
    result = llm.invoke(QUESTION)
    assert result.content == SCRIPT
    assert result.usage_metadata["output_tokens"] == len(scripted.ids)
    assert collect(llm.stream(QUESTION))[0] == SCRIPT


@pytest.mark.parametrize("max_tokens", [4, 5, 9])
def test_max_tokens_ends_with_length(scripted: SimpleNamespace, tokenizer: Any, max_tokens: int) -> None:
    llm = make(scripted.model, tokenizer, max_tokens=64)
    result = llm.invoke(QUESTION, max_tokens=max_tokens)
    assert result.content == tokenizer.decode(scripted.ids[:max_tokens])
    assert result.usage_metadata["output_tokens"] == max_tokens
    assert result.response_metadata["finish_reason"] == "length"
    assert collect(llm.stream(QUESTION, max_tokens=max_tokens))[0] == result.content


def test_callbacks_get_every_piece_with_its_chunk(scripted: SimpleNamespace, tokenizer: Any) -> None:
    llm = make(scripted.model, tokenizer, max_tokens=64)
    recorder = TokenRecorder()
    text, chunks = collect(llm.stream(QUESTION, config={"callbacks": [recorder]}))
    assert "".join(recorder.tokens) == text == SCRIPT
    assert [t for t in recorder.tokens if t] == [c.content for c in chunks if c.content]
    for token, chunk in zip(recorder.tokens, recorder.chunks):
        assert isinstance(chunk, ChatGenerationChunk)
        assert chunk.text == token

    # streaming=True makes invoke stream internally, with the same callbacks.
    recorder = TokenRecorder()
    result = make(scripted.model, tokenizer, max_tokens=64, streaming=True).invoke(
        QUESTION, config={"callbacks": [recorder]}
    )
    assert result.content == "".join(recorder.tokens) == SCRIPT
    assert len([t for t in recorder.tokens if t]) > 5
    assert all(isinstance(c, ChatGenerationChunk) and c.text == t for t, c in zip(recorder.tokens, recorder.chunks))


async def test_async_callbacks_get_every_piece(scripted: SimpleNamespace, tokenizer: Any) -> None:
    llm = make(scripted.model, tokenizer, max_tokens=64)
    recorder = AsyncTokenRecorder()
    chunks = [c async for c in llm.astream(QUESTION, config={"callbacks": [recorder]})]
    assert "".join(c.content for c in chunks) == "".join(recorder.tokens) == SCRIPT
    assert all(isinstance(c, ChatGenerationChunk) and c.text == t for t, c in zip(recorder.tokens, recorder.chunks))


def test_callbacks_in_v3_event_streams(scripted: SimpleNamespace, tokenizer: Any) -> None:
    # stream_events(version="v3") hands the run manager to _stream/_astream: the model fires the tokens itself.
    llm = make(scripted.model, tokenizer, max_tokens=64)
    recorder = TokenRecorder()
    stream = llm.stream_events(QUESTION, version="v3", config={"callbacks": [recorder]})
    assert len(list(stream)) > 5
    assert stream.output.text == "".join(recorder.tokens) == SCRIPT
    assert all(isinstance(c, ChatGenerationChunk) and c.text == t for t, c in zip(recorder.tokens, recorder.chunks))

    async def astream() -> str:
        arecorder = AsyncTokenRecorder()
        events = await llm.astream_events(QUESTION, version="v3", config={"callbacks": [arecorder]})
        assert len([e async for e in events]) > 5
        assert (await events.output).text == SCRIPT
        return "".join(arecorder.tokens)

    assert asyncio.run(astream()) == SCRIPT


# -- Persona-judge on a random model ------------------------------------------------------------------


def test_stream_astream_and_invoke_agree(chat: ChatPersonaJudge, random_model: Any, tokenizer: Any) -> None:
    result = chat.invoke(QUESTION)
    stats = result.response_metadata["persona_judge"]
    assert 0 < stats["accepted"] < stats["drafted"], "the personas must disagree for this test to mean anything"

    text, chunks = collect(chat.stream(QUESTION))
    assert text == result.content
    assert chunks[-1].usage_metadata == result.usage_metadata
    assert [c.usage_metadata for c in chunks[:-1]] == [None] * (len(chunks) - 1)

    async def astream() -> str:
        return "".join([c.content async for c in chat.astream(QUESTION)])

    assert asyncio.run(astream()) == result.content
    assert asyncio.run(chat.ainvoke(QUESTION)).content == result.content

    streamed_invoke = make(random_model, tokenizer, streaming=True).invoke(QUESTION)
    assert streamed_invoke.content == result.content
    assert streamed_invoke.usage_metadata == result.usage_metadata
    assert trace_ids(streamed_invoke) == trace_ids(result)


def test_usage_counts_the_real_tokens(
    chat: ChatPersonaJudge, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    result = chat.invoke([SystemMessage("You are terse."), HumanMessage(QUESTION)])
    [run] = engine_runs
    usage = result.usage_metadata
    assert len(run.prompts) == 2
    assert usage["input_tokens"] == sum(len(p) for p in run.prompts)
    emitted = run.tokens.generation.token_ids
    assert usage["output_tokens"] == len(emitted) == len(trace_ids(result))
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert trace_ids(result) == emitted
    assert tokenizer.decode(emitted, skip_special_tokens=True) == result.content
    # Each persona reads the conversation with its own preference (and not the other's).
    for mine, prompt in zip(PREFERENCES, run.prompts):
        text = tokenizer.decode(prompt)
        assert mine in text and QUESTION in text and "You are terse." in text
        assert all(other not in text for other in PREFERENCES if other != mine)


def test_response_metadata_and_trace(chat: ChatPersonaJudge) -> None:
    result = chat.invoke(QUESTION)
    meta = result.response_metadata
    assert {"model_name", "finish_reason", "model_provider", "persona_judge", "trace"} <= set(meta)
    assert meta["model_provider"] == "persona_judge"
    assert meta["model_name"] == "LlamaForCausalLM"  # an hf_model without a name: its class
    assert meta["finish_reason"] in ("stop", "length")
    assert meta["preferences"] == PREFERENCES
    stats = meta["persona_judge"]
    for key in ("acceptance_rate", "iterations", "drafted", "accepted"):
        assert key in stats
    assert stats["acceptance_rate"] == round(stats["accepted"] / stats["drafted"], 4)
    assert stats["personas"] == 2 and stats["lookahead"] == 4

    trace = meta["trace"]
    assert len(trace) == result.usage_metadata["output_tokens"]
    assert {e["kind"] for e in trace} <= {"accepted", "residual", "bonus"}
    assert sum(e["kind"] == "accepted" for e in trace) == stats["accepted"]
    assert len({e["iteration"] for e in trace}) == stats["iterations"]
    for entry in trace:  # the roles rotate: persona k % 2 drafts, the other judges
        assert entry["drafter"] == entry["iteration"] % 2 and entry["judge"] == (entry["iteration"] + 1) % 2

    # The trace is the generation_info LangChain copies into response_metadata.
    generation = chat.generate([[HumanMessage(QUESTION)]]).generations[0][0]
    assert generation.generation_info["trace"] == trace
    assert generation.generation_info["finish_reason"] == meta["finish_reason"]


def test_caches_never_mix_personas(random_model: Any, tokenizer: Any, engine_runs: list[SimpleNamespace]) -> None:
    formal = make(random_model, tokenizer)
    swapped = make(random_model, tokenizer, preferences=PREFERENCES[::-1])  # who drafts first matters
    other = make(random_model, tokenizer, preferences=["Be very brief.", "Use lots of detail."])
    formal_again = make(random_model, tokenizer)
    assert formal._identifying_params == formal_again._identifying_params
    assert formal._identifying_params != other._identifying_params
    assert formal._identifying_params != swapped._identifying_params

    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        first = formal.invoke(QUESTION)
        other.invoke(QUESTION)
        swapped.invoke(QUESTION)
        assert len(engine_runs) == 3 and len(cache._cache) == 3
        again = formal_again.invoke(QUESTION)  # same settings: served from the cache
        assert len(engine_runs) == 3
        assert again.content == first.content
        formal.invoke(QUESTION, max_tokens=5)  # a per-call override is part of the key
        assert len(engine_runs) == 4
    finally:
        set_llm_cache(None)


def test_caches_never_mix_models(
    random_model: Any, scripted: SimpleNamespace, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    # Two in-memory models with the same settings, and the same settings on the default model: three keys.
    random_llm, scripted_llm = make(random_model, tokenizer), make(scripted.model, tokenizer)
    default_llm = ChatPersonaJudge(preferences=PREFERENCES, temperature=0, max_tokens=24)
    keys = {llm._get_llm_string(stop=None) for llm in (random_llm, scripted_llm, default_llm)}
    assert len(keys) == 3
    set_llm_cache(InMemoryCache())
    try:
        first = random_llm.invoke(QUESTION)
        assert scripted_llm.invoke(QUESTION).content == SCRIPT  # not the random model's cached answer
        assert len(engine_runs) == 2
        assert make(random_model, tokenizer).invoke(QUESTION).content == first.content
        assert len(engine_runs) == 2
    finally:
        set_llm_cache(None)


def test_token_counting_uses_the_models_tokenizer(chat: ChatPersonaJudge, tokenizer: Any) -> None:
    text = "Persona-judge personalises answers — at decoding time! 😊"
    assert chat.get_token_ids(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert chat.get_num_tokens_from_messages([HumanMessage(text)]) == expected


def test_per_call_overrides(chat: ChatPersonaJudge, engine_runs: list[SimpleNamespace]) -> None:
    short = chat.invoke(QUESTION, temperature=0, max_tokens=5)
    assert short.usage_metadata["output_tokens"] == 5
    assert short.response_metadata["finish_reason"] == "length"
    assert chat.max_tokens == 24  # the field is untouched

    one = chat.invoke(QUESTION, lookahead=1, max_tokens=8)
    assert one.response_metadata["persona_judge"]["lookahead"] == 1
    assert engine_runs[-1].options["lookahead"] == 1
    assert one.response_metadata["persona_judge"]["drafted"] <= one.response_metadata["persona_judge"]["iterations"]

    single = chat.invoke(QUESTION, preferences=["Be brief."], max_tokens=3)
    assert len(engine_runs[-1].prompts) == 1
    assert single.response_metadata["preferences"] == ["Be brief."]

    sampled = [chat.invoke(QUESTION, temperature=1.0, top_k=50, seed=7).content for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert engine_runs[-1].options["do_sample"] is True and engine_runs[-1].options["seed"] == 7

    assert chat.invoke(QUESTION, stream=True).content  # LangChain's own flag is accepted


def test_schedule_auto_picks_lockstep_where_rows_are_cheap(
    chat: ChatPersonaJudge, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    from langchain_persona_judge.decoding.cpu_kernels import prepack_linear_weights, prepack_supported

    # A plain fp32 CPU model: a 2-row forward costs ~1.6x a 1-row one, so the paper's schedule, which saves
    # the drafts it would waste with draft_confidence 0.5.
    speculative = chat.invoke(QUESTION)
    stats = speculative.response_metadata["persona_judge"]
    assert (stats["schedule"], stats["draft_confidence"]) == ("speculative", 0.5)
    assert engine_runs[-1].options["schedule"] == "speculative"

    lockstep = chat.invoke(QUESTION, schedule="lockstep")
    stats = lockstep.response_metadata["persona_judge"]
    assert (stats["schedule"], stats["draft_confidence"]) == ("lockstep", 0.0)
    assert stats["forward_calls"] == lockstep.usage_metadata["output_tokens"]  # one batched forward per token
    # The same greedy decisions as the paper's schedule with the same draft_confidence.
    paper = chat.invoke(QUESTION, schedule="speculative", draft_confidence=0.0)
    assert lockstep.content == paper.content and trace_ids(lockstep) == trace_ids(paper)
    assert lockstep.response_metadata["trace"] == paper.response_metadata["trace"]

    if prepack_supported():
        packed = tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
        prepack_linear_weights(packed)
        stats = make(packed, tokenizer).invoke(QUESTION).response_metadata["persona_judge"]
        assert (stats["schedule"], stats["draft_confidence"]) == ("lockstep", 0.0)
    with pytest.raises(ValidationError, match="schedule"):
        chat.invoke(QUESTION, schedule="batched")


def test_unknown_and_invalid_call_arguments(chat: ChatPersonaJudge) -> None:
    with pytest.raises(TypeError, match="frobnicate"):
        chat.invoke(QUESTION, frobnicate=1)
    with pytest.raises(ValidationError, match="temperature"):
        chat.invoke(QUESTION, temperature=-1)
    with pytest.raises(ValidationError, match="lookahead"):
        chat.invoke(QUESTION, lookahead=0)
    with pytest.raises(ValidationError, match="max_tokens"):
        chat.invoke(QUESTION, max_tokens=0)
    with pytest.raises(ValidationError, match="preferences"):
        chat.invoke(QUESTION, preferences="Be brief.")


def test_one_preference_is_plain_decoding_with_it_in_the_system_turn(random_model: Any, tokenizer: Any) -> None:
    preference = "Always answer in French."
    conversation = [SystemMessage("You are terse."), HumanMessage(QUESTION)]
    result = make(random_model, tokenizer, preferences=[preference], max_tokens=16).invoke(conversation)
    system = render_preferences("system", [preference], "You are terse.")
    assert "You are terse." in system and preference in system
    messages = [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]
    expected = hf_greedy(random_model, tokenizer, messages, 16)
    assert trace_ids(result) == expected
    assert result.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert result.response_metadata["persona_judge"]["drafted"] == 0


def test_no_preference_is_plain_decoding(random_model: Any, tokenizer: Any) -> None:
    llm = make(random_model, tokenizer, preferences=[], max_tokens=16)
    for conversation in ([HumanMessage(QUESTION)], [SystemMessage("You are terse."), HumanMessage(QUESTION)]):
        result = llm.invoke(conversation)
        messages = [
            {"role": "system" if isinstance(m, SystemMessage) else "user", "content": m.content} for m in conversation
        ]
        assert trace_ids(result) == hf_greedy(random_model, tokenizer, messages, 16)
    blank = make(random_model, tokenizer, preferences=["  "], max_tokens=16).invoke(conversation)
    assert blank.content == result.content  # blank preferences are ignored


@pytest.mark.parametrize("layout", ["system", "user_turn"])
def test_preference_layout(
    random_model: Any, tokenizer: Any, engine_runs: list[SimpleNamespace], layout: str
) -> None:
    make(random_model, tokenizer, preference_layout=layout, max_tokens=1).invoke(QUESTION)
    for preference, prompt in zip(PREFERENCES, engine_runs[-1].prompts):
        text = tokenizer.decode(prompt)
        turns = [t.strip() for t in text.split("<|im_start|>") if t.strip()]
        roles = [t.split("\n", 1)[0] for t in turns]
        if layout == "user_turn":
            # The paper's layout: the preference is a user turn of its own, before the question.
            assert roles == ["system", "user", "user", "assistant"]
            assert preference in turns[1] and QUESTION not in turns[1]
            assert QUESTION in turns[2] and preference not in turns[2]
            assert preference not in turns[0]
        else:
            assert roles == ["system", "user", "assistant"]
            assert preference in turns[0] and preference not in turns[1]


async def test_ainvoke_does_not_block_the_event_loop(slow_model: SimpleNamespace, tokenizer: Any) -> None:
    llm = make(slow_model.model, tokenizer, max_tokens=20)
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
    assert result.usage_metadata["output_tokens"] == 20
    assert slow_model.forwards >= 20 and elapsed >= 0.2
    # A blocked loop would tick once at most; a free one ticks all along.
    assert ticks >= 10


def test_threads_sharing_one_model_get_their_own_answers(chat: ChatPersonaJudge) -> None:
    questions = ["What is rain?", "Tell me about cats.", "How do planes fly?", "Name a colour."]
    sequential = [chat.invoke(q).content for q in questions]
    assert len(set(sequential)) == len(questions)
    barrier = threading.Barrier(len(questions))

    def ask(question: str) -> list[str]:
        barrier.wait()
        return [chat.invoke(question).content for _ in range(2)]

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert answers == [[s, s] for s in sequential]
    assert [m.content for m in chat.batch(questions)] == sequential


def test_breaking_out_of_a_stream_stops_decoding(
    slow_model: SimpleNamespace, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    llm = make(slow_model.model, tokenizer, max_tokens=400)
    for chunk in llm.stream(QUESTION):
        assert chunk.content
        break
    forwards = slow_model.forwards
    time.sleep(0.1)
    assert slow_model.forwards == forwards <= 10
    decoder = engine_runs[-1].tokens.decoder
    assert decoder.finish_reason is None and decoder.stats.iterations <= 2
    assert all(p.cached == 0 for p in decoder.personas)  # caches released


async def test_breaking_out_of_an_astream_stops_decoding(
    slow_model: SimpleNamespace, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    llm = make(slow_model.model, tokenizer, max_tokens=400)  # ~6 s to the end
    async for chunk in llm.astream(QUESTION):
        assert chunk.content
        break
    # The worker stops at its next chunk once the abandoned generator is finalised by the loop.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        before = slow_model.forwards
        await asyncio.sleep(0.1)
        if slow_model.forwards == before:
            break
    forwards = slow_model.forwards
    await asyncio.sleep(0.1)
    assert slow_model.forwards == forwards < 60
    assert engine_runs[-1].tokens.decoder.finish_reason is None


async def test_cancelling_ainvoke_stops_decoding(
    slow_model: SimpleNamespace, tokenizer: Any, engine_runs: list[SimpleNamespace]
) -> None:
    llm = make(slow_model.model, tokenizer, max_tokens=400)  # ~6 s to the end
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(llm.ainvoke(QUESTION), timeout=0.2)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        before = slow_model.forwards
        await asyncio.sleep(0.1)
        if slow_model.forwards == before:
            break
    forwards = slow_model.forwards
    await asyncio.sleep(0.1)
    assert slow_model.forwards == forwards < 60
    assert engine_runs[-1].tokens.decoder.finish_reason is None


async def test_async_calls_raise_the_same_errors(chat: ChatPersonaJudge) -> None:
    with pytest.raises(ValueError, match="No messages"):
        await chat.ainvoke([])
    with pytest.raises(TypeError, match="frobnicate"):
        await chat.ainvoke(QUESTION, frobnicate=1)
    with pytest.raises(ValidationError, match="lookahead"):
        async for _ in chat.astream(QUESTION, lookahead=0):
            pass


def test_model_override_and_environment(
    tmp_path: Any, chat: ChatPersonaJudge, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tiny"
    tiny_llama(seed=5, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    result = chat.invoke(QUESTION, model=str(path), max_tokens=4)
    assert result.response_metadata["model_name"] == str(path)
    assert chat._get_ls_params(model=str(path))["ls_model_name"] == str(path)
    assert chat.invoke(QUESTION, max_tokens=4).response_metadata["model_name"] == "LlamaForCausalLM"

    monkeypatch.setenv(MODEL_ENV, str(path))
    from_env = ChatPersonaJudge(preferences=PREFERENCES, temperature=0, max_tokens=4)
    assert from_env.model_name == str(path)
    assert from_env.invoke(QUESTION).response_metadata["model_name"] == str(path)
    assert from_env.invoke(QUESTION).content == result.content


# -- bad inputs -------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(chat: ChatPersonaJudge, random_model: Any) -> None:
    with pytest.raises(ValueError, match="No messages"):
        chat.invoke([])
    image = {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"}
    with pytest.raises(ValueError, match="text only.*'image'"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])])
    image_url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(ValueError, match="'image_url'"):
        chat.invoke([HumanMessage(content=[image_url])])
    with pytest.raises(ValidationError, match="temperature"):
        ChatPersonaJudge(temperature=-0.5)
    with pytest.raises(ValidationError, match="lookahead"):
        ChatPersonaJudge(lookahead=0)
    with pytest.raises(ValidationError, match="preferences"):
        ChatPersonaJudge(preferences="Be brief.")
    with pytest.raises(ValueError, match="tokenizer"):
        ChatPersonaJudge(hf_model=random_model).invoke(QUESTION)


def test_text_blocks_and_names_are_read(
    chat: ChatPersonaJudge, engine_runs: list[SimpleNamespace], tokenizer: Any
) -> None:
    blocks = [{"type": "text", "text": "What is "}, {"type": "text", "text": "rain?"}]
    result = chat.invoke([HumanMessage(content=blocks, name="alice")], max_tokens=3)
    assert isinstance(result, AIMessage)
    assert QUESTION in tokenizer.decode(engine_runs[-1].prompts[0])
