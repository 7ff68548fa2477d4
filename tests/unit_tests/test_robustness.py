"""Shared-model safety and bad input: admission queue, timeouts, cancellation, context length, OOM, NaN logits."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
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
from langchain_persona_judge.personas import load_registry
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


def test_concurrent_seeded_sampling_calls_each_get_their_own_random_stream(counted, tokenizer):
    """Sampling calls running at once on one model: each equals the same call run alone, equal seeds equal.

    Every forward sleeps 5 ms, so the threads' decodes interleave; a random stream shared between calls (the
    global torch RNG, say) would hand one call's draws to another.
    """
    calls = [(11, "What is rain?"), (12, "What is rain?"), (11, "What is rain?"), (13, "Name a colour."),
             (12, "What is rain?"), (13, "Name a colour."), (14, "Name a colour.")]

    def run(seed: int, question: str) -> tuple[str, str, list[Any]]:
        result = _llm(counted.model, tokenizer, temperature=1.0, seed=seed, lookahead=3).invoke(question)
        return result.content, result.response_metadata["finish_reason"], result.response_metadata["trace"]

    alone = {call: run(*call) for call in dict.fromkeys(calls)}
    assert len({content for content, _, _ in alone.values()}) == len(alone)  # distinct seeds really differ
    assert any(e["kind"] == "accepted" for _, _, trace in alone.values() for e in trace)  # drafts were judged

    counted.peak = 0
    start = threading.Barrier(len(calls))
    results: dict[int, Any] = {}

    def worker(i: int) -> None:
        start.wait(10)
        try:
            results[i] = run(*calls[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert counted.peak >= 2  # the decodes did overlap
    assert [results.get(i) for i in range(len(calls))] == [alone[call] for call in calls]
    assert results[0] == results[2] and results[1] == results[4] and results[3] == results[5]
    assert queue_for(counted.model).running == 0


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
    with pytest.raises(OutOfMemoryError, match="caches were freed") as info:
        llm.invoke("What is rain?")
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError) or "2.00 GiB" in str(info.value)
    assert calls["n"] == 3  # it failed in the middle of the decode, at the third forward, and went no further
    assert queue_for(model).running == 0
    # The next call on the same model decodes to the end and gives the answer an untouched copy of it gives.
    after = llm.invoke("What is rain?")
    assert after.content is not None
    assert calls["n"] > 4 and queue_for(model).running == 0
    reference = _llm(_model(tokenizer, seed=4), tokenizer).invoke("What is rain?")
    assert after.content == reference.content and after.content.strip()
    assert after.response_metadata["finish_reason"] == reference.response_metadata["finish_reason"]
    assert after.usage_metadata["output_tokens"] == reference.usage_metadata["output_tokens"] > 0


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


# -- property-based: valid inputs get an answer, invalid ones a typed error naming what is wrong ---------

_TYPED = (ValueError, TypeError, ValidationError, PersonaError, PersonaJudgeError, DecodingError)

# The rules, written from the documented contract rather than from the implementation.
_OPTION_RULES = {  # the constructor refuses an option that breaks its rule, naming the option
    "temperature": lambda v: v >= 0,  # NaN too: it is not >= 0
    "top_p": lambda v: 0 < v <= 1,
    "top_k": lambda v: v >= 0,
    "lookahead": lambda v: v >= 1,
    "max_tokens": lambda v: v >= 1,
    "seed": lambda v: True,
}
_PERSONA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # a one-word preference names a persona; other text is free
_KNOWN_PERSONAS = frozenset(load_registry(None).names())


def _message_text(message: Any) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(block["text"] for block in content)


def _offences(messages: list[Any], options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What is wrong with a call, as words its error must name: (options the constructor refuses, the rest).

    Valid (both empty): options within their ranges; every preference blank (ignored), free text or a known
    persona's name; and at least one message other than a system message that has text, or a tool result.
    """
    refused = [name for name, ok in _OPTION_RULES.items() if name in options and not ok(options[name])]
    later = [repr(text) for text in (p.strip() for p in options.get("preferences", []))
             if _PERSONA_NAME.fullmatch(text) and text not in _KNOWN_PERSONAS]
    if not any(isinstance(m, ToolMessage) or (not isinstance(m, SystemMessage) and _message_text(m).strip())
               for m in messages):
        later.append("message")
    return refused, later


def _check_call(tokenizer: Any, messages: list[Any], options: dict[str, Any]) -> bool:
    """Run the call; assert an answer if the inputs are valid, else a typed error naming an offence. True: valid."""
    refused, later = _offences(messages, options)
    model = _robust_model(tokenizer)
    if not refused and not later:
        result = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, **options).invoke(messages)
        assert isinstance(result, AIMessage) and isinstance(result.content, str)
        assert result.response_metadata["finish_reason"] in ("stop", "length")
        assert result.usage_metadata["output_tokens"] <= options.get("max_tokens", 256)
        return True
    with pytest.raises(_TYPED) as info:
        ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, **options).invoke(messages)
    text = str(info.value)
    if refused:  # refused at construction: every offending option is named
        assert isinstance(info.value, ValidationError), text
        assert all(name in text for name in refused), (refused, text)
    else:
        assert any(word in text for word in later), (later, text)
    return False


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

# Valid by construction: every option in range (tiny and subnormal temperatures included), and a question.
# max_tokens is always given here (the broad test above also runs the default of 256 tokens).
_free_text = _text.filter(lambda t: not _PERSONA_NAME.fullmatch(t.strip()))
_valid_options = st.fixed_dictionaries(
    {"max_tokens": st.integers(min_value=1, max_value=6)},
    optional={
        "temperature": st.one_of(st.just(0.0), st.floats(min_value=0, max_value=3),
                                 st.floats(min_value=5e-324, max_value=1e-290)),
        "top_p": st.floats(min_value=0, max_value=1, exclude_min=True),
        "top_k": st.integers(min_value=0, max_value=100),
        "lookahead": st.integers(min_value=1, max_value=9),
        "seed": st.integers(min_value=0, max_value=2**31),
        "preferences": st.lists(st.one_of(_free_text, st.sampled_from(sorted(_KNOWN_PERSONAS))), max_size=3),
    },
)
_answerable = st.one_of(
    st.builds(HumanMessage, content=_text.filter(str.strip)),
    st.builds(AIMessage, content=_text.filter(str.strip)),
    st.builds(lambda c: ToolMessage(content=c, tool_call_id="call_1"), _text),
)
_valid_messages = st.tuples(st.lists(_message, max_size=3), _answerable, st.integers(0, 3)).map(
    lambda t: t[0][: t[2]] + [t[1]] + t[0][t[2] :]
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=st.lists(_message, max_size=4), options=_options)
def test_any_messages_and_options_give_an_answer_or_a_typed_error(tokenizer, messages, options):
    """Any inputs: the valid ones get an answer, every other one a typed error that names what is wrong."""
    event("valid" if _check_call(tokenizer, messages, options) else "invalid")


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=_valid_messages, options=_valid_options)
def test_valid_messages_and_options_always_get_an_answer(tokenizer, messages, options):
    assert _offences(messages, options) == ([], [])
    assert _check_call(tokenizer, messages, options)


_ROBUST: dict[int, Any] = {}


def _robust_model(tokenizer: Any) -> Any:
    # A context far longer than any generated conversation, so that valid inputs never hit ContextLengthError.
    if id(tokenizer) not in _ROBUST:
        _ROBUST[id(tokenizer)] = _model(tokenizer, seed=6, context=8192)
    return _ROBUST[id(tokenizer)]
