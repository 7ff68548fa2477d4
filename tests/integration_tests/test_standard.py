"""LangChain's standard integration tests for ChatPersonaJudge, on the real embedded SmolLM2-135M-Instruct.

Every test builds a new ChatPersonaJudge, but the weights are loaded once per process and shared.
The model-override tests switch, per call, to a tiny random Llama saved (with the embedded tokenizer) in a
temporary folder; its ``model_name`` in the response metadata is that folder's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from transformers import AutoTokenizer

from langchain_persona_judge.runtime.loading import resolve_model_path
from tests.helpers import PersonaJudgeStandardCapabilities, tiny_llama

pytestmark = pytest.mark.embedded

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the embedded model's tokenizer (and chat template), saved as a checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Tool calls and structured answers are JSON documents: 24 tokens (plenty for the plain-text tests, and fast)
# cannot hold `<tool_call>{"name": "magic_function", "arguments": {"input": 3}}</tool_call>` with room to
# spare, so these tests get 48. (The grammar's budget guard closes any document that would not fit, so a
# smaller budget still parses, but then it is the guard, not the model, that picks the arguments.)
JSON_MAX_TOKENS = 48
_JSON_TESTS = ("tool", "structured", "json_mode", "agent_loop")
# '你好啊集团' is 15 tokens in SmolLM2's vocabulary: the call needs more room.
UNICODE_MAX_TOKENS = 80


class TestChatPersonaJudgeStandard(PersonaJudgeStandardCapabilities, ChatModelIntegrationTests):
    _override: str | None = None
    _max_tokens: int = 24

    @pytest.fixture(autouse=True)
    def _override_dir(self, tiny_model_dir: Path, request: pytest.FixtureRequest) -> None:
        type(self)._override = str(tiny_model_dir)
        name = request.node.name
        type(self)._max_tokens = (
            UNICODE_MAX_TOKENS if "unicode" in name else JSON_MAX_TOKENS if any(k in name for k in _JSON_TESTS) else 24
        )

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"preferences": PREFERENCES, "temperature": 0, "max_tokens": self._max_tokens}

    @property
    def model_override_value(self) -> str | None:
        return self._override

    @pytest.mark.xfail(
        reason="tool_choice='auto' leaves the choice to the model, and SmolLM2-135M-Instruct was not trained to "
        "call tools: asked 'What is the weather in San Francisco, CA?' with get_weather bound, it answers in text "
        "(a made-up forecast) and writes no <tool_call>. The same loop with tool_choice='any' passes: "
        "tests/integration_tests/test_tools.py::test_agent_loop_with_forced_first_call.",
        strict=False,
    )
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
