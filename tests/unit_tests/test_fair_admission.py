"""Fair admission: waiting requests are served round-robin by user, a user holds at most ``per_user`` slots, FIFO
within a user, and a prompt's cost is capped in tokens.

The work is fake (threads that hold a slot until told to finish), and every request joins the queue only once the
previous one is seen waiting, so the orders below are deterministic.
"""

from __future__ import annotations

import threading
import time

import pytest

from langchain_persona_judge.errors import PersonaJudgeError, RequestTooLargeError
from langchain_persona_judge.runtime import AdmissionQueue, check_prompt_tokens, count_prompt_tokens


class _Requests:
    """Fake requests on one queue: each takes a slot, records its name when admitted, and holds the slot until
    :meth:`finish` lets it go."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self.queue = queue
        self.admitted: list[str] = []
        self._release: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, name: str, user: str | None) -> None:
        release = self._release[name] = threading.Event()
        waiting_before = self.queue.waiting
        admitted_before = len(self.admitted)

        def work() -> None:
            with self.queue.admit(time.monotonic() + 10, user=user):
                with self._lock:
                    self.admitted.append(name)
                release.wait(10)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self._threads.append(thread)
        _until(lambda: self.queue.waiting > waiting_before or len(self.admitted) > admitted_before)

    def finish(self, name: str) -> None:
        """End request ``name`` and wait until the queue has handed its slot on (if anyone waits)."""
        admitted_before = len(self.admitted)
        waiting = self.queue.waiting
        self._release[name].set()
        if waiting:
            _until(lambda: len(self.admitted) > admitted_before or self.queue.waiting < waiting)

    def close(self) -> None:
        for event in self._release.values():
            event.set()
        for thread in self._threads:
            thread.join(5)


def _until(condition, timeout: float = 5.0) -> None:  # noqa: ANN001 - a zero-argument predicate
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("the queue did not reach the expected state within 5 s")
        time.sleep(0.002)


def test_a_later_user_is_served_before_the_tail_of_a_flood() -> None:
    requests = _Requests(AdmissionQueue(limit=1))
    try:
        for i in range(6):
            requests.submit(f"flood{i}", "alice")
        requests.submit("bob0", "bob")
        assert requests.admitted == ["flood0"] and requests.queue.waiting == 6
        requests.finish("flood0")
        requests.finish("flood1")
        # Round-robin: after one more of the flood (it was first in the round), bob's turn; not after all five.
        assert requests.admitted == ["flood0", "flood1", "bob0"]
        for name in ("bob0", "flood2", "flood3", "flood4"):
            requests.finish(name)
        assert requests.admitted == ["flood0", "flood1", "bob0", "flood2", "flood3", "flood4", "flood5"]
    finally:
        requests.close()


def test_two_users_alternate_and_each_user_is_served_in_arrival_order() -> None:
    requests = _Requests(AdmissionQueue(limit=1))
    try:
        requests.submit("hold", "carol")
        for name, user in [("a0", "alice"), ("a1", "alice"), ("a2", "alice"), ("b0", "bob"), ("b1", "bob")]:
            requests.submit(name, user)
        for name in ("hold", "a0", "b0", "a1", "b1"):
            requests.finish(name)
        assert requests.admitted == ["hold", "a0", "b0", "a1", "b1", "a2"]
    finally:
        requests.close()


def test_one_user_never_holds_every_slot_by_default() -> None:
    queue = AdmissionQueue(limit=2)
    assert queue.user_limit == 1  # below the slot count
    requests = _Requests(queue)
    try:
        requests.submit("a0", "alice")
        requests.submit("a1", "alice")
        time.sleep(0.05)
        assert requests.admitted == ["a0"] and queue.running == 1 and queue.waiting == 1  # a slot left free...
        requests.submit("b0", "bob")
        assert requests.admitted == ["a0", "b0"]  # ...which another user gets at once, ahead of alice's second
        assert queue.running_for("alice") == 1 and queue.running_for("bob") == 1
        requests.finish("a0")
        assert requests.admitted == ["a0", "b0", "a1"]
    finally:
        requests.close()


def test_an_explicit_per_user_limit_is_honoured() -> None:
    queue = AdmissionQueue(limit=4, per_user=2)
    requests = _Requests(queue)
    try:
        for i in range(4):
            requests.submit(f"a{i}", "alice")
        time.sleep(0.05)
        assert requests.admitted == ["a0", "a1"] and queue.running_for("alice") == 2 and queue.waiting == 2
        requests.finish("a0")
        assert requests.admitted == ["a0", "a1", "a2"] and queue.running_for("alice") == 2
    finally:
        requests.close()


def test_the_anonymous_bucket_is_not_capped_per_user() -> None:
    """A library caller that names no user keeps every slot it configured (max_concurrency means what it says)."""
    queue = AdmissionQueue(limit=2)
    requests = _Requests(queue)
    try:
        requests.submit("x0", None)
        requests.submit("x1", None)
        assert requests.admitted == ["x0", "x1"] and queue.running == 2
    finally:
        requests.close()


def test_configure_keeps_the_per_user_limit_unless_given() -> None:
    queue = AdmissionQueue(limit=4, per_user=3)
    queue.configure(4, 8)
    assert queue.user_limit == 3
    queue.configure(4, 8, per_user=None)
    assert queue.user_limit == 3  # None: one fewer than the slots
    queue.configure(None, None)
    assert queue.user_limit is None


class _WordTokenizer:
    """One token per whitespace-separated word."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        return list(range(len(text.split())))


def test_a_prompt_over_the_token_cap_is_refused_naming_both_counts() -> None:
    tokenizer = _WordTokenizer()
    assert count_prompt_tokens(tokenizer, "one two three") == 3
    assert check_prompt_tokens(tokenizer, "one two three", 3) == 3
    with pytest.raises(RequestTooLargeError) as info:
        check_prompt_tokens(tokenizer, "one two three four", 3)
    assert isinstance(info.value, PersonaJudgeError) and isinstance(info.value, ValueError)
    assert (info.value.tokens, info.value.limit) == (4, 3)
    assert "4 tokens" in str(info.value) and "3" in str(info.value)
    assert check_prompt_tokens(tokenizer, "a " * 10_000, None) == 10_000


def test_the_chat_model_passes_the_user_key_to_the_admission_queue(
    tokenizer, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001 - the session's tokenizer fixture
) -> None:
    from langchain_persona_judge import ChatPersonaJudge
    from tests.helpers import tiny_llama

    seen: list[object] = []
    real_admit = AdmissionQueue.admit

    def spy(self, deadline=None, cancelled=None, user=None):  # noqa: ANN001, ANN202
        seen.append(user)
        return real_admit(self, deadline, cancelled, user)

    monkeypatch.setattr(AdmissionQueue, "admit", spy)
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    chat = ChatPersonaJudge(hf_model=model, tokenizer=tokenizer, preferences=["Be brief."], temperature=0,
                            max_tokens=2)
    chat.invoke("Hi", user="account-7")
    chat.invoke("Hi")
    assert seen == ["account-7", None]
