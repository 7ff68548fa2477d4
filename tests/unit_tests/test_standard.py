"""LangChain's standard unit tests for ChatPersonaJudge (no model is loaded: construction is lazy)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd, load
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge.chat_models import DEVICE_ENV, MODEL_ENV
from tests.helpers import PersonaJudgeStandardCapabilities

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]


class TestChatPersonaJudgeUnit(PersonaJudgeStandardCapabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # max_tokens comes from standard_chat_model_params (test_standard_params passes its own).
        return {"preferences": PREFERENCES, "temperature": 0}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # The model and device default to $PERSONA_JUDGE_MODEL and $PERSONA_JUDGE_DEVICE.
        return (
            {MODEL_ENV: "HuggingFaceTB/SmolLM2-360M-Instruct", DEVICE_ENV: "cpu"},
            {"preferences": PREFERENCES},
            {"model_name": "HuggingFaceTB/SmolLM2-360M-Instruct", "device": "cpu", "preferences": PREFERENCES},
        )

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only the classes in its own serialisation "
        "mapping, which lists no third-party package; the round trip with an explicit allowlist is "
        "test_serdes_with_allowlist",
        raises=ValueError,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)

    def test_serdes_with_allowlist(self, model: BaseChatModel) -> None:
        """dumpd/load round-trips every setting when ChatPersonaJudge is allowed explicitly."""
        custom = ChatPersonaJudge(
            model="some/model", preferences=["Be brief."], preference_layout="user_turn", lookahead=2, top_k=5,
            seed=3, stop=["END"], dtype="bfloat16", device="cpu", temperature=0.3,
        )
        for original in (model, custom):
            revived = load(
                dumpd(original), allowed_objects=[ChatPersonaJudge], valid_namespaces=["langchain_persona_judge"]
            )
            assert isinstance(revived, ChatPersonaJudge)
            assert revived.model_dump() == original.model_dump()
            assert revived._identifying_params == original._identifying_params
