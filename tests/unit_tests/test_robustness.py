"""Shared-model safety and bad input: admission queue, timeouts, cancellation, context length, OOM, NaN logits."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from langchain_persona_judge import ChatPersonaJudge, PersonaError
from langchain_persona_judge.errors import (
    ContextLengthError,
    DecodingError,
    OutOfMemoryError,
    PersonaJudgeError,
    QueueFullError,
    RequestTimeoutError,
)
from langchain_persona_judge.runtime import AdmissionQueue
from langchain_persona_judge.runtime import admission_queue as queue_for
from tests.helpers import tiny_llama

PREFS = ["Answer formally.", "Answer with a joke."]


def _model(tokenizer: Any, seed: int = 0, context: int = 512) -> Any:
    model = tiny_llama(seed=seed, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model.config.max_position_embeddings = context
    return model


@pytest.fixture
def counted(tokenizer: Any) -> SimpleNamespace:
    """A tiny model whose forwards take >= 5 ms and record how many decodes run at once."""
    model = _model(tokenizer, seed=3)
    state = SimpleNamespace(model=model, forwards=0, peak=0)

    def hook(module: Any, args: Any) -> None:
        state.forwards += 1
        state.peak = max(state.peak, queue_for(model).running)
        time.sleep(0.005)

    model.register_forward_pre_hook(hook)
    return state


def _llm(model: Any, tokenizer: Any, **params: Any) -> ChatPersonaJudge:
    params = {"preferences": PREFS, "temperature": 0, "max_tokens": 16, **params}
    return ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, **params)


# -- the admission queue itself -------------------------------------------------------------------


def test_queue_admits_in_arrival_order_within_the_limit():
    queue = AdmissionQueue(limit=1)
    order: list[int] = []
    gate = threading.Event()

    def worker(i: int) -> None:
        with queue.admit():
            order.append(i)
            gate.wait(5)

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    while queue.running == 0:
        time.sleep(0.001)
    threads = []
    for i in range(1, 6):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        while queue.waiting < i:  # make arrival order certain
            time.sleep(0.001)
        threads.append(t)
    assert queue.running == 1 and queue.waiting == 5
    gate.set()
    for t in [first, *threads]:
        t.join(5)
    assert order == [0, 1, 2, 3, 4, 5]
    assert queue.running == 0 and queue.waiting == 0


def test_queue_full_and_wait_timeout():
    queue = AdmissionQueue(limit=1, max_queue=0)
    with queue.admit():
        with pytest.raises(QueueFullError, match="max_queue=0"):
            with queue.admit():
                pass
        queue.configure(1, None)
        with pytest.raises(RequestTimeoutError, match="free slot"):
            with queue.admit(deadline=time.monotonic() + 0.05):
                pass
    with queue.admit(deadline=time.monotonic() + 0.05):  # free again: admitted at once
        assert queue.running == 1


# -- through the chat model -----------------------------------------------------------------------


def test_max_concurrency_bounds_decodes_on_one_model(counted, tokenizer):
    llm = _llm(counted.model, tokenizer, max_concurrency=1)
    sequential = llm.invoke("What is rain?").content
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(llm.invoke("What is rain?").content)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [sequential] * 3  # independent, correct answers
    assert counted.peak == 1


def test_timeout_raises_with_partial_text_and_the_model_stays_usable(counted, tokenizer):
    slow = _llm(counted.model, tokenizer, max_tokens=400, timeout=0.15)
    with pytest.raises(RequestTimeoutError, match="timeout of 0.15 s") as info:
        slow.invoke("Tell me a long story.")
    assert isinstance(info.value, TimeoutError) and isinstance(info.value.partial_text, str)
    assert queue_for(counted.model).running == 0
    assert _llm(counted.model, tokenizer, max_tokens=4).invoke("Hi").response_metadata["finish_reason"]


def test_cancelled_async_task_stops_decoding_within_an_iteration(counted, tokenizer):
    llm = _llm(counted.model, tokenizer, max_tokens=2000, lookahead=4)

    async def run() -> int:
        task = asyncio.create_task(llm.ainvoke("Tell me a long story."))
        while counted.forwards < 12:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        return counted.forwards

    after_cancel = asyncio.run(run())
    time.sleep(0.3)
    # At most one more iteration (λ drafts + 1 judge pass) ran after the cancellation was seen.
    assert counted.forwards == after_cancel
    assert counted.forwards < 12 + 2 * 5 + 5
    assert queue_for(counted.model).running == 0


def test_conversation_longer_than_context(tokenizer):
    model = _model(tokenizer, context=96)
    llm = _llm(model, tokenizer)
    history = [HumanMessage("word " * 40), AIMessage("ok " * 30), HumanMessage("What is rain?")]
    with pytest.raises(ContextLengthError, match=r"tokens with its preferences, but the model's context holds 96") as info:
        llm.invoke(history)
    assert info.value.tokens > 96 and info.value.limit == 96
    result = _llm(model, tokenizer, truncation="drop_oldest").invoke(history)
    assert result.response_metadata["finish_reason"] in ("stop", "length")
    with pytest.raises(ContextLengthError, match="shorten the last message"):
        _llm(model, tokenizer, truncation="drop_oldest").invoke([HumanMessage("word " * 90)])


def test_oom_is_reported_cleanly_and_the_next_request_works(tokenizer):
    model = _model(tokenizer, seed=4)
    calls = {"n": 0}

    def hook(module: Any, args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.register_forward_pre_hook(hook)
    llm = _llm(model, tokenizer)
    with pytest.raises(OutOfMemoryError, match="caches were freed"):
        llm.invoke("What is rain?")
    assert queue_for(model).running == 0
    assert llm.invoke("What is rain?").content is not None


def test_non_finite_logits_raise_instead_of_garbage(tokenizer):
    model = _model(tokenizer, seed=5)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(DecodingError, match="NaN"):
        _llm(model, tokenizer).invoke("Hi")


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "No messages"),
        ([HumanMessage("")], "Every message is empty"),
        ([SystemMessage("Be nice."), HumanMessage("   ")], "Every message is empty"),
        ([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])], "reads text only"),
    ],
)
def test_bad_messages_fail_before_work(tokenizer, counted, messages, message):
    with pytest.raises(ValueError, match=message):
        _llm(counted.model, tokenizer).invoke(messages)
    assert counted.forwards == 0


@pytest.mark.parametrize(
    "params",
    [{"lookahead": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_tokens": 0}, {"timeout": 0},
     {"max_concurrency": 0}, {"top_k": -2}, {"composition": "mix"}],
)
def test_invalid_options_are_refused_at_construction(tokenizer, params):
    with pytest.raises(ValidationError):
        _llm(None, tokenizer, **params)


# -- property-based: any messages and options give a typed error or an answer ------------------------

_TYPED = (ValueError, TypeError, ValidationError, PersonaError, PersonaJudgeError, DecodingError)

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_message = st.one_of(
    st.builds(HumanMessage, content=_text),
    st.builds(SystemMessage, content=_text),
    st.builds(AIMessage, content=_text),
    st.builds(lambda c: ToolMessage(content=c, tool_call_id="call_1"), _text),
    st.builds(lambda t: HumanMessage(content=[{"type": "text", "text": t}]), _text),
)
_options = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(st.floats(min_value=-1, max_value=3), st.just(float("nan"))),
        "top_p": st.floats(min_value=-0.5, max_value=1.5),
        "top_k": st.integers(min_value=-3, max_value=100),
        "lookahead": st.integers(min_value=-1, max_value=9),
        "max_tokens": st.integers(min_value=-1, max_value=6),
        "seed": st.integers(min_value=0, max_value=2**31),
        "preferences": st.lists(st.one_of(_text, st.sampled_from(["humor", "concise", "elementry"])), max_size=3),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(messages=st.lists(_message, max_size=4), options=_options)
def test_any_messages_and_options_give_an_answer_or_a_typed_error(tokenizer, messages, options):
    model = _robust_model(tokenizer)
    try:
        result = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, **options).invoke(messages)
    except _TYPED:
        return
    assert isinstance(result, AIMessage) and isinstance(result.content, str)
    assert result.usage_metadata["output_tokens"] <= options.get("max_tokens", 256)


_ROBUST: dict[int, Any] = {}


def _robust_model(tokenizer: Any) -> Any:
    if id(tokenizer) not in _ROBUST:
        _ROBUST[id(tokenizer)] = _model(tokenizer, seed=6)
    return _ROBUST[id(tokenizer)]
