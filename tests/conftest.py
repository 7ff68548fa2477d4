from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct, loaded once per test session (converted on first use)."""
    from langchain_persona_judge import load_model

    model, tokenizer = load_model(device="cpu")
    return model, tokenizer
