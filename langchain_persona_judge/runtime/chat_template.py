"""A conversation (plain role/content dicts) → the token ids the model reads, through its own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..personas.templates import Message


def render_chat(tokenizer: Any, messages: Sequence[Message], **template_kwargs: Any) -> str:
    """The conversation as the model's chat template writes it, ending with the assistant's turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False, **template_kwargs
        )
    # A base model without a chat template: a plain transcript that ends where the answer starts.
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def encode_chat(tokenizer: Any, messages: Sequence[Message], **template_kwargs: Any) -> torch.Tensor:
    """Token ids (1-D LongTensor) of the rendered conversation, ready for the engine."""
    text = render_chat(tokenizer, messages, **template_kwargs)
    # The chat template already wrote any BOS it wants; don't let the tokenizer add a second.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


__all__ = ["encode_chat", "render_chat"]
