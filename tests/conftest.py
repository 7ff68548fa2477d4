from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Hypothesis profiles. `ci` (the default, and what `make test` runs): derandomized, so a property test draws the
# same examples on every run and machine and a red CI means a change broke it, not a lucky draw; no example
# database, no deadline (a shared 2-core machine makes timings noisy). `explore` (HYPOTHESIS_PROFILE=explore, or
# `make test-explore`): fresh random examples every run, more of them, and the blob to replay a failure. A test's
# own @settings(max_examples=...) still wins over the profile's number.
settings.register_profile("ci", derandomize=True, max_examples=60, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=600, deadline=None, print_blob=True)
# HYPOTHESIS_PROFILE picks one explicitly (pytest's --hypothesis-profile overrides both); otherwise `ci`, with or
# without the CI variable set.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")

# One torch thread: on a 2-core machine that other processes share, two threads can make small ops tens of
# times slower (spin-waiting), and one thread keeps timings and float reductions steady. Override with
# PERSONA_JUDGE_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("PERSONA_JUDGE_TEST_THREADS", "1")))


# `make test` runs the suite on two pytest-xdist workers with --dist loadfile --no-loadscope-reorder: each module is
# one unit of work, handed out in collection order to whichever worker is free. So the longest modules go first
# (measured with --durations, longest first) and the many short ones fill in at the end, and the two workers finish
# within a short module of each other. xdist's default order (most tests first) left a 3-minute module with 7 tests
# near the end while the other worker idled. A module missing here keeps its place after these; a name no longer
# in the suite is ignored. Order within a module is never changed.
SLOW_MODULES_FIRST = (
    "tests/integration_tests/test_standard.py",
    "tests/unit_tests/test_engine.py",
    "tests/integration_tests/test_tools.py",
    "tests/integration_tests/test_examples.py",
    "tests/integration_tests/test_chat_app_profile.py",
    "tests/unit_tests/test_combine.py",
    "tests/integration_tests/test_profiles_embedded.py",
    "tests/integration_tests/test_chat_app.py",
    "tests/integration_tests/test_chat_app_store.py",
    "tests/integration_tests/test_chat_app_load.py",
    "tests/unit_tests/test_llamacpp.py",
    "tests/unit_tests/test_robustness.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: keeps the rest's order


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct's handle on transformers (``.model``, ``.tokenizer``), loaded once
    per session (converted on first use).

    The same copy of the weights that ``ChatPersonaJudge()`` uses (shared process-wide), not a second one.
    """
    from langchain_persona_judge import shared_model

    return shared_model(None, device="cpu", backend="transformers")


def llama_cpp_or_skip() -> None:
    """Skip when llama-cpp-python is missing, unless ``PERSONA_JUDGE_REQUIRE_LLAMACPP=1`` (``make test`` sets
    it, so that CI exercises the llama.cpp backend rather than skipping it), where that is a failure."""
    from langchain_persona_judge.decoding.backends.llamacpp import INSTALL_HINT, llama_cpp_available

    if not llama_cpp_available():
        if os.environ.get("PERSONA_JUDGE_REQUIRE_LLAMACPP") == "1":
            pytest.fail(f"PERSONA_JUDGE_REQUIRE_LLAMACPP=1 but {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def embedded_llamacpp():
    """The embedded GGUF's handle on llama.cpp (one thread), loaded once per session."""
    llama_cpp_or_skip()
    from langchain_persona_judge import shared_model

    return shared_model(None, device="cpu", backend="llamacpp")


@pytest.fixture(scope="session")
def tokenizer():
    """A tiny byte-level BPE chat tokenizer (512 tokens, SmolLM2's special tokens and chat template; built in
    milliseconds, no model files): tiny test models are built with its vocabulary (tests/helpers/tokenizer.py)."""
    from tests.helpers.tokenizer import tiny_tokenizer

    return tiny_tokenizer()
