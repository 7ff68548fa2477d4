"""LangChain's standard integration tests for ChatPersonaJudge, on the real embedded SmolLM2-135M-Instruct.

Every test builds a new ChatPersonaJudge, but the weights are loaded once per process and shared.
The model-override tests switch, per call, to a tiny random Llama saved (with the embedded tokenizer) in a
temporary folder; its ``model_name`` in the response metadata is that folder's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_tests.integration_tests import ChatModelIntegrationTests
from transformers import AutoTokenizer

from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge.loading import resolve_model_path
from tests.helpers import tiny_llama

pytestmark = pytest.mark.embedded

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The test machines are small and shared; one intra-op thread avoids OpenMP oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the embedded model's tokenizer (and chat template), saved as a checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class TestChatPersonaJudgeStandard(ChatModelIntegrationTests):
    _override: str | None = None

    @pytest.fixture(autouse=True)
    def _override_dir(self, tiny_model_dir: Path) -> None:
        type(self)._override = str(tiny_model_dir)

    @property
    def chat_model_class(self) -> type[ChatPersonaJudge]:
        return ChatPersonaJudge

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"preferences": PREFERENCES, "temperature": 0, "max_tokens": 24}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str | None:
        return self._override
