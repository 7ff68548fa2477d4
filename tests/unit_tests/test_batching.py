"""Continuous batching: concurrent requests share one forward per step, and each decodes what it would alone.

Every request here is decoded twice: alone (its own batch, the lockstep schedule as it always ran) and together
with others in threads, through one :class:`BatchScheduler` (its rows in the model's one shared batch). The tokens
must be identical; the scheduler's counters show that the requests really shared forwards.

Exactness, found out at the end of this file: with prepacked weights (a CPU's default) a request's logits in the
shared batch are bitwise its logits alone (its attention runs over its own columns); with MKL's default kernels
they agree to float rounding (1e-5), since those kernels give a row different bits in a batch of another size,
and so would attention over more left padding. The decoding tests use prepacked models, so identical tokens are
guaranteed, not a matter of luck with near-ties.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import torch

from langchain_persona_judge.decoding import DecodingOptions, generate, prepack_linear_weights, stream
from langchain_persona_judge.decoding.backends import TransformersBackend
from langchain_persona_judge.decoding.batching import BatchingBackend, BatchScheduler
from langchain_persona_judge.errors import InvalidOptionError, RequestTimeoutError
from langchain_persona_judge.runtime import (
    PersonaSettings,
    batch_scheduler,
    batched,
    batching_mode,
    set_batching,
    start_run,
)
from tests.helpers import ToyConstraint, tiny_llama

VOCAB = 32
# Prompt lengths far apart, so that the shared batch pads every request's rows to another request's longest.
PROMPTS = [[9], list(range(1, 21)), [3, 3, 3, 8, 20], [7, 1, 7, 1, 30, 2, 2], list(range(31, 0, -3)), [5, 6]]


def exact_llama(**kwargs: Any) -> Any:
    """A tiny random Llama with prepacked linear weights (the default load on a CPU): each row gets the same bits
    whatever the batch, so a request's logits batched are bitwise its logits alone (see the end of this file)."""
    model = tiny_llama(**kwargs)
    prepack_linear_weights(model)
    return model


def _request(first: int, personas: int = 2, **options: Any) -> dict[str, Any]:
    """One request: ``personas`` prompts starting at PROMPTS[first], greedy lockstep unless ``options`` say."""
    prompts = [torch.tensor(PROMPTS[(first + i) % len(PROMPTS)]) for i in range(personas)]
    settings = {"max_new_tokens": 30, "lookahead": 3, "do_sample": False, "eos_token_id": [], "schedule": "lockstep",
                **options}
    reference = torch.tensor(PROMPTS[(first + personas) % len(PROMPTS)]) if settings.get("guidance", 1.0) != 1 else None
    return {"prompts": prompts, "options": DecodingOptions(**settings), "reference": reference}


def _alone(model: Any, request: dict[str, Any], constraint: Any = None) -> list[int]:
    return generate(model, request["prompts"], options=request["options"], reference=request["reference"],
                    constraint=constraint).token_ids


def _together(model: Any, requests: list[dict[str, Any]], patience: float = 1.0,
              constraints: list[Any] | None = None) -> tuple[list[list[int]], BatchScheduler]:
    """Decode ``requests`` at once, one thread each, through one scheduler."""
    scheduler = BatchScheduler(patience=patience)
    backend = BatchingBackend(TransformersBackend(model), scheduler)
    results: list[Any] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = _alone(backend, requests[i], constraints[i] if constraints else None)
        except BaseException as exc:  # re-raised below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results, scheduler


def _rows(request: dict[str, Any]) -> int:
    return len(request["prompts"]) + (request["reference"] is not None)


RULES = {
    "judge": {},
    "judge-3": {"personas": 3},
    "product": {"combine": "product", "weights": (0.7, 0.3)},
    "judge-guided": {"guidance": 2.0},
    "product-guided": {"combine": "product", "guidance": 1.5},
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "seeded"])
def test_each_request_decodes_what_it_decodes_alone(rule, do_sample):
    model = exact_llama(seed=3, sharpness=2.0)
    options = dict(RULES[rule])
    personas = options.pop("personas", 2)
    sampling = {"do_sample": True, "seed": 11, "temperature": 0.9} if do_sample else {}
    requests = [_request(i, personas, **options, **{**sampling, **({"seed": 11 + i} if do_sample else {})})
                for i in range(4)]
    alone = [_alone(model, r) for r in requests]
    together, scheduler = _together(model, requests)
    assert together == alone
    # They shared forwards: some step held every request's rows, and far fewer forwards ran than alone.
    assert scheduler.widest == sum(_rows(r) for r in requests)
    assert scheduler.steps < sum(len(t) for t in alone) / 2


def test_mixed_rules_and_lengths_share_one_batch():
    model = exact_llama(seed=5, sharpness=2.0)
    requests = [_request(0), _request(1, 3, combine="product"), _request(2, guidance=2.0, max_new_tokens=7),
                _request(3, do_sample=True, seed=4, max_new_tokens=45)]
    alone = [_alone(model, r) for r in requests]
    together, scheduler = _together(model, requests)
    assert together == alone
    assert [len(t) for t in together] == [30, 30, 7, 45]
    assert scheduler.active == 0  # every request left


def test_grammar_masks_stay_per_request():
    model = exact_llama(seed=2, sharpness=3.0)
    requests = [_request(i) for i in range(3)]
    alone = [_alone(model, requests[0], ToyConstraint(VOCAB)), _alone(model, requests[1]),
             _alone(model, requests[2], ToyConstraint(VOCAB, limit=9))]
    together, _ = _together(model, requests, constraints=[ToyConstraint(VOCAB), None, ToyConstraint(VOCAB, limit=9)])
    assert together == alone
    assert all(t < 20 for t in together[0][::2]) and all(t < 9 for t in together[2][::2])
    assert any(t >= 20 for t in together[1][::2])  # the unconstrained request was not masked by the others


def _streams(model: Any, scheduler: BatchScheduler, requests: list[dict[str, Any]]) -> list[Any]:
    backend = BatchingBackend(TransformersBackend(model), scheduler)
    return [stream(backend, r["prompts"], options=r["options"], reference=r["reference"]) for r in requests]


def test_a_request_that_joins_mid_batch_leaves_the_others_unchanged():
    model = exact_llama(seed=4, sharpness=2.0)
    requests = [_request(0, max_new_tokens=40), _request(1, do_sample=True, seed=3, max_new_tokens=40),
                _request(4, 3, max_new_tokens=20)]
    alone = [_alone(model, r) for r in requests]
    scheduler = BatchScheduler(patience=1.0)
    first, second, late = _streams(model, scheduler, requests)
    got: list[list[int]] = [[], [], []]
    threads = [threading.Thread(target=lambda i=i, s=s: got[i].extend(s)) for i, s in enumerate((first, second))]
    for thread in threads:
        thread.start()
    while len(first.generation.token_ids) < 12:  # the late request joins once the others are under way
        time.sleep(0.001)
    got[2].extend(late)
    for thread in threads:
        thread.join(timeout=120)
    assert got == alone
    assert scheduler.widest == 2 + 2 + 3  # the late request's rows joined the others'


@pytest.mark.parametrize("leaver", [0, 1])
def test_a_request_that_is_cancelled_leaves_the_others_unchanged(leaver):
    model = exact_llama(seed=6, sharpness=2.0)
    requests = [_request(0, max_new_tokens=40), _request(1, do_sample=True, seed=8, max_new_tokens=40),
                _request(2, guidance=2.0, max_new_tokens=40)]
    alone = [_alone(model, r) for r in requests]
    scheduler = BatchScheduler(patience=1.0)
    streams = _streams(model, scheduler, requests)
    got: list[list[int]] = [[] for _ in streams]

    def consume(i: int) -> None:
        for token in streams[i]:
            got[i].append(token)
            if i == leaver and len(got[i]) == 9:
                streams[i].close()  # what a run does when its caller goes away or its deadline passes
                return

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got[leaver] == alone[leaver][:9]
    assert [g for i, g in enumerate(got) if i != leaver] == [a for i, a in enumerate(alone) if i != leaver]
    assert scheduler.active == 0


def test_a_lone_request_runs_the_forwards_it_runs_without_batching():
    model = exact_llama(seed=7, sharpness=2.0)
    request = _request(1, 3, max_new_tokens=25)
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    plain = generate(model, request["prompts"], options=request["options"])
    plain_shapes, shapes[:] = list(shapes), []
    backend = BatchingBackend(TransformersBackend(model), BatchScheduler())
    batched_run = generate(backend, request["prompts"], options=request["options"])
    assert batched_run.token_ids == plain.token_ids
    assert shapes == plain_shapes == [(3, 20)] + [(3, 1)] * 24
    assert batched_run.stats.forward_calls == plain.stats.forward_calls == 25
    assert batched_run.stats.positions == plain.stats.positions


def test_a_forward_that_fails_fails_the_batch_and_the_scheduler_recovers():
    model = exact_llama(seed=7, sharpness=2.0)
    scheduler = BatchScheduler(patience=1.0)
    calls = {"n": 0}

    def explode(module: Any, args: Any, kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("boom: the device ran out of memory")

    hook = model.register_forward_pre_hook(explode, with_kwargs=True)
    with pytest.raises(RuntimeError, match="boom"):
        _together_with(model, scheduler, [_request(0), _request(1)])
    hook.remove()
    assert scheduler.active == 0
    request = _request(2)
    assert _together_with(model, scheduler, [request]) == [_alone(model, request)]


def _together_with(model: Any, scheduler: BatchScheduler, requests: list[dict[str, Any]]) -> list[list[int]]:
    backend = BatchingBackend(TransformersBackend(model), scheduler)
    results: list[Any] = [None] * len(requests)

    def work(i: int) -> None:
        try:
            results[i] = _alone(backend, requests[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_a_request_that_misses_a_step_does_not_stall_the_others():
    model = exact_llama(seed=1, sharpness=2.0)
    scheduler = BatchScheduler(patience=0.02)
    requests = [_request(0, max_new_tokens=20), _request(1, max_new_tokens=20)]
    alone = [_alone(model, r) for r in requests]
    slow, fast = _streams(model, scheduler, requests)
    got_slow = [next(slow)]  # joined, then keeps its caller waiting
    started = time.monotonic()
    got_fast = list(fast)
    assert time.monotonic() - started < 5  # not 19 steps x the slow one's absence
    got_slow.extend(slow)
    assert [got_slow, got_fast] == alone


# -- the runtime: the batching setting ------------------------------------------------------------------------


@pytest.fixture
def handle(tokenizer: Any) -> TransformersBackend:
    model = exact_llama(seed=2, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, sharpness=3.0)
    return TransformersBackend(model, tokenizer, name="tiny")


def _run(handle: Any, question: str, max_new_tokens: int = 16, **kwargs: Any) -> Any:
    options = DecodingOptions(max_new_tokens=max_new_tokens, do_sample=False, schedule="lockstep", eos_token_id=[])
    return start_run(handle, [{"role": "user", "content": question}], options=options, model_name="tiny",
                     personas=PersonaSettings(preferences=["Be brief.", "Be playful."]), **kwargs)


def test_runs_on_a_transformers_model_are_batched_by_default(handle, monkeypatch):
    monkeypatch.delenv("PERSONA_JUDGE_BATCHING", raising=False)
    assert batching_mode(handle) == "auto"
    assert isinstance(batched(handle), BatchingBackend)
    assert batched(handle, "off") is handle
    questions = ["What is rain?", "Why is the sky blue on a long summer afternoon?", "Hi"]
    alone = ["".join(_run(handle, q, batching="off").text()) for q in questions]
    assert batch_scheduler(handle).steps == 0
    texts: list[str] = [""] * len(questions)
    start = threading.Barrier(len(questions))

    def work(i: int) -> None:
        start.wait()
        texts[i] = "".join(_run(handle, questions[i]).text())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert texts == alone and all(alone)
    assert batch_scheduler(handle).widest > 2  # more than one request's rows in a step


def test_a_run_past_its_deadline_leaves_the_others_unchanged(handle):
    alone = "".join(_run(handle, "What is rain?", batching="off").text())
    handle.model.register_forward_pre_hook(lambda *args: time.sleep(0.02))
    outcome: dict[str, Any] = {}

    def late() -> None:
        try:
            "".join(_run(handle, "Tell me a story.", max_new_tokens=60, timeout=0.15).text())
        except RequestTimeoutError as exc:
            outcome["timeout"] = exc

    thread = threading.Thread(target=late)
    thread.start()
    text = "".join(_run(handle, "What is rain?").text())
    thread.join(timeout=120)
    assert "timeout" in outcome and text == alone


def test_the_setting_is_per_model_and_checked(handle, monkeypatch):
    monkeypatch.setenv("PERSONA_JUDGE_BATCHING", "off")
    assert batching_mode(handle) == "off" and batched(handle) is handle
    set_batching(handle, "on")
    other = TransformersBackend(handle.model, handle.tokenizer)  # another handle of the same weights
    assert batching_mode(other) == "on" and isinstance(batched(other), BatchingBackend)
    with pytest.raises(InvalidOptionError, match="batching='sometimes' is invalid: pass one of auto, on, off"):
        set_batching(handle, "sometimes")
    monkeypatch.setenv("PERSONA_JUDGE_BATCHING", "yes")
    with pytest.raises(InvalidOptionError, match="PERSONA_JUDGE_BATCHING='yes' is invalid"):
        batching_mode(TransformersBackend(tiny_llama()))


def test_on_refuses_a_backend_that_cannot_batch(handle, monkeypatch):
    monkeypatch.setattr(TransformersBackend, "shared_batch", lambda self: None)
    assert batched(handle, "auto") is handle  # auto: falls back to a batch per request
    with pytest.raises(InvalidOptionError, match="batching='on' needs a backend that can share one batch"):
        set_batching(handle, "on")


# -- the shared batch itself: a member's logits, bitwise, against its lone batch -------------------------------


def _lone_and_shared(model: Any, steps: int, schedule: list[tuple[str, int, list[list[int]]]]):
    """Drive one shared batch and a lone batch per member through ``schedule`` ((step, action, member, prompts)),
    feeding each member the argmax of its own first row; every member's logits at every step,
    (lone, shared)."""
    from langchain_persona_judge.decoding.backends.hf import TransformersBatch
    from langchain_persona_judge.decoding.backends.hf_shared import TransformersSharedBatch
    from langchain_persona_judge.decoding.options import DecodingStats

    backend = TransformersBackend(model)
    shared = TransformersSharedBatch(backend)
    lone: dict[int, Any] = {}
    rows: dict[int, Any] = {}
    last: dict[int, int] = {}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for step in range(steps):
            for at, action, member, prompts in schedule:
                if at != step:
                    continue
                if action == "join":
                    lone[member] = TransformersBatch(backend, prompts, 64, DecodingStats())
                    alone = lone[member].prefill()
                    rows[member], together = shared.join(prompts, DecodingStats())
                    pairs.append((alone, together))
                    last[member] = int(alone[0].argmax())
                else:
                    shared.leave(rows.pop(member))
                    del lone[member], last[member]
            logits = shared.step({rows[m]: last[m] for m in rows})
            for member, batch in lone.items():
                alone = batch.step(last[member])
                pairs.append((alone, logits[rows[member].span]))
                last[member] = int(alone[0].argmax())
    return pairs, shared


SCHEDULE = [
    (0, "join", 0, [PROMPTS[0], PROMPTS[2]]),       # widths 5, then a wider newcomer pads it
    (0, "join", 1, [PROMPTS[1], PROMPTS[3]]),
    (3, "join", 2, [PROMPTS[4], PROMPTS[5], PROMPTS[0]]),   # joins mid-batch
    (6, "leave", 1, []),                           # the widest leaves: leading columns are trimmed
    (8, "join", 3, [PROMPTS[5], PROMPTS[5]]),      # no padding of its own
]


def test_with_prepacked_weights_a_members_logits_are_bitwise_its_lone_batchs():
    model = tiny_llama(seed=3, sharpness=2.0)
    prepack_linear_weights(model)
    pairs, shared = _lone_and_shared(model, 14, SCHEDULE)
    assert shared.exact
    assert len(pairs) > 40
    mismatched = [i for i, (alone, together) in enumerate(pairs) if not torch.equal(alone, together)]
    assert mismatched == []


def test_with_default_kernels_a_members_logits_match_its_lone_batchs_to_rounding():
    model = tiny_llama(seed=3, sharpness=2.0)
    pairs, shared = _lone_and_shared(model, 14, SCHEDULE)
    assert not shared.exact  # MKL's kernels do not give a row the same bits whatever the batch
    for alone, together in pairs:
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


# -- chunked prefill: a newcomer's long prompt is read a chunk at a time, between the others' steps ---------------


def test_a_chunked_prefill_agrees_with_one_forward():
    from langchain_persona_judge.decoding.backends.hf import TransformersBatch
    from langchain_persona_judge.decoding.options import DecodingStats

    model = tiny_llama(seed=3, sharpness=2.0)
    prompts = [PROMPTS[1], PROMPTS[4], PROMPTS[0]]  # widths 20, 11 and 1: the first chunks are all padding for two
    stats = DecodingStats()
    with torch.inference_mode():
        whole = TransformersBatch(TransformersBackend(model, prefill_chunk=0), prompts, 8, DecodingStats())
        chunked = TransformersBatch(TransformersBackend(model, prefill_chunk=6), prompts, 8, stats)
        torch.testing.assert_close(chunked.prefill(), whole.prefill(), rtol=1e-5, atol=1e-5)
        assert stats.forward_calls == 4 and stats.positions == 3 * 20  # ceil(20 / 6) forwards, padding counted
        for token in [4, 9, 17, 2]:
            torch.testing.assert_close(chunked.step(token), whole.step(token), rtol=1e-5, atol=1e-5)
        assert chunked.length == whole.length == 24


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "seeded"])
def test_requests_whose_prompts_are_read_in_chunks_decode_what_they_decode_alone(monkeypatch, do_sample):
    monkeypatch.setenv("PERSONA_JUDGE_PREFILL_CHUNK", "3")
    model = exact_llama(seed=3, sharpness=2.0)
    sampling = {"do_sample": True, "temperature": 0.9} if do_sample else {}
    requests = [_request(i, 2 + i % 2, **sampling, **({"seed": 5 + i} if do_sample else {}),
                         **({"combine": "product"} if i == 2 else {})) for i in range(4)]
    alone = [_alone(model, r) for r in requests]
    together, scheduler = _together(model, requests)
    assert together == alone
    assert scheduler.chunks >= 4 * 4  # every request has a prompt of 11 or 20 columns, read 3 at a time
    assert scheduler.widest > 3


class _SlowConstraint(ToyConstraint):
    """A running request that takes 10 ms to choose each token, in its own thread."""

    def allowed(self) -> torch.Tensor:
        time.sleep(0.01)
        return super().allowed()


class _Recorded:
    """A chunked-prefill scene: the exact toy model reading prompts 4 columns at a time, every forward's (rows,
    columns) in order, a scheduler, and requests decoded greedily through it (``results`` by name)."""

    def __init__(self, monkeypatch: Any, **scheduler: Any) -> None:
        monkeypatch.setenv("PERSONA_JUDGE_PREFILL_CHUNK", "4")
        self.model = exact_llama(seed=3, sharpness=2.0)
        self.forwards: list[tuple[int, int]] = []
        self.model.register_forward_pre_hook(
            lambda module, args, kwargs: self.forwards.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        self.scheduler = BatchScheduler(patience=1.0, **scheduler)
        self.backend = BatchingBackend(TransformersBackend(self.model), self.scheduler)
        self.results: dict[str, list[int]] = {}

    def options(self, max_new_tokens: int) -> Any:
        return DecodingOptions(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[], schedule="lockstep")

    def decode(self, name: str, prompts: list[list[int]], max_new_tokens: int, constraint: Any = None) -> None:
        self.results[name] = generate(self.backend, [torch.tensor(p) for p in prompts], constraint=constraint,
                                      options=self.options(max_new_tokens)).token_ids

    def start_running(self, max_new_tokens: int) -> threading.Thread:
        """The slow request ``running`` ([[9], [5, 6]]), decoding in its own thread once this returns."""
        thread = threading.Thread(target=self.decode,
                                  args=("running", [[9], [5, 6]], max_new_tokens, _SlowConstraint(VOCAB)))
        thread.start()
        while self.scheduler.steps < 3:
            time.sleep(0.001)
        return thread

    def alone(self, prompts: list[list[int]], max_new_tokens: int, constraint: Any = None) -> list[int]:
        return generate(TransformersBackend(self.model), [torch.tensor(p) for p in prompts], constraint=constraint,
                        options=self.options(max_new_tokens)).token_ids


def test_a_long_prompt_is_read_between_the_others_steps(monkeypatch):
    scene = _Recorded(monkeypatch)
    long_prompt = list(range(1, 31)) + [4, 4]  # 32 columns: 8 chunks of 4
    running = scene.start_running(40)
    scene.decode("long", [long_prompt, [7, 7]], 4)
    running.join(timeout=120)
    forwards = scene.forwards
    chunks = [i for i, shape in enumerate(forwards) if shape == (2, 4)]
    assert len(chunks) == 8
    # Between the newcomer's first and last chunk the running request stepped after every chunk (the worker waited
    # for its token before reading another chunk): its rows were not stalled for the whole prompt.
    steps_between = [i for i in range(chunks[0], chunks[-1]) if forwards[i][1] == 1]
    assert len(steps_between) >= 7
    assert scene.results["running"] == scene.alone([[9], [5, 6]], 40, ToyConstraint(VOCAB))
    assert scene.results["long"] == scene.alone([long_prompt, [7, 7]], 4)


@pytest.mark.parametrize("newcomers", [1, None], ids=["oldest-first", "each"])
def test_newcomers_joining_at_once_read_one_chunk_in_all_between_two_steps(monkeypatch, newcomers):
    """Three newcomers with long prompts join while a request decodes: by default (first come, first served) the
    running request waits for one chunk at most between two of its steps, not one chunk per newcomer; every
    request still decodes what it decodes alone. (``None``: every newcomer reads a chunk each gap, the old rule.)"""
    scene = _Recorded(monkeypatch, prefill_newcomers=newcomers)
    long_prompts = {f"new{i}": [list(range(1 + i, 25 + i)), [7, 7 + i]] for i in range(3)}  # 24 columns: 6 chunks
    running = scene.start_running(60)
    threads = [threading.Thread(target=scene.decode, args=(name, prompts, 3)) for name, prompts in long_prompts.items()]
    for thread in threads:
        thread.start()
    for thread in [*threads, running]:
        thread.join(timeout=120)
    assert sum(shape == (2, 4) for shape in scene.forwards) == 3 * 6
    # Chunks read between two consecutive step forwards (one column each) of the shared batch.
    gaps, current = [], 0
    for rows, columns in scene.forwards[scene.forwards.index((2, 4)):]:
        if columns == 1:
            gaps.append(current)
            current = 0
        elif (rows, columns) == (2, 4):
            current += 1
    if newcomers == 1:
        assert max(gaps) == 1
    else:
        assert max(gaps) >= 2  # the old rule: a chunk of every newcomer in one gap
    assert scene.results["running"] == scene.alone([[9], [5, 6]], 60, ToyConstraint(VOCAB))
    for name, prompts in long_prompts.items():
        assert scene.results[name] == scene.alone(prompts, 3)


def test_the_prefill_newcomers_setting_is_checked():
    with pytest.raises(ValueError, match="prefill_newcomers=0: pass a count >= 1"):
        BatchScheduler(prefill_newcomers=0)


def test_the_prefill_chunk_setting_is_checked(monkeypatch):
    model = tiny_llama()
    assert TransformersBackend(model).prefill_chunk == 128  # on a CPU
    monkeypatch.setenv("PERSONA_JUDGE_PREFILL_CHUNK", "64")
    assert TransformersBackend(model).prefill_chunk == 64
    assert TransformersBackend(model, prefill_chunk=0).prefill_chunk == 0
    with pytest.raises(InvalidOptionError, match="prefill_chunk=-1: pass a count of prompt columns"):
        TransformersBackend(model, prefill_chunk=-1)
    monkeypatch.setenv("PERSONA_JUDGE_PREFILL_CHUNK", "lots")
    with pytest.raises(InvalidOptionError, match="PERSONA_JUDGE_PREFILL_CHUNK='lots': expected a count"):
        TransformersBackend(model)
