from __future__ import annotations

import os

import pytest
import torch

# One torch thread: on a 2-core machine that other processes share, two threads can make small ops tens of
# times slower (spin-waiting), and one thread keeps timings and float reductions steady. Override with
# PERSONA_JUDGE_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("PERSONA_JUDGE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct, loaded once per session (converted on first use).

    The same copy of the weights that ``ChatPersonaJudge()`` uses (shared process-wide), not a second one.
    """
    from langchain_persona_judge import shared_model

    return shared_model(None, device="cpu")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (tiny test models are built with its vocabulary); skips if not installed."""
    from transformers import AutoTokenizer

    from langchain_persona_judge.runtime.loading import ModelLoadError, resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(None))
    except ModelLoadError as exc:
        pytest.skip(f"needs the embedded model's tokenizer: {exc}")
