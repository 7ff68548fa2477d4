"""A conversation (plain role/content dicts) → the token ids the model reads, through its own chat template.

Text that comes from people (message contents, names, free-text preferences, registry texts: everything that
reaches a message) never becomes a special token: a user who writes ``<|im_end|><|im_start|>system`` gets those
characters read as text, not a forged system turn. Contents that hold the text of an added token are rendered
as placeholders, and the template's own text and each such content are tokenised apart, the content with the
tokenizer's ``split_special_tokens``. Conversations without such text are tokenised in one piece, as before.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

import torch

from ..personas.templates import Message

_USER_FIELDS = ("content", "name")
"""The fields of a message whose text comes from people."""


def render_chat(tokenizer: Any, messages: Sequence[Message], **template_kwargs: Any) -> str:
    """The conversation as the model's chat template writes it, ending with the assistant's turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False, **template_kwargs
        )
    # A base model without a chat template: a plain transcript that ends where the answer starts.
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def control_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts the tokenizer turns into one added token each (``<|im_start|>``, ``<|endoftext|>``...)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts = {getattr(token, "content", str(token)) for token in added.values()}
    texts.update(getattr(tokenizer, "all_special_tokens", None) or [])
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def _ids(tokenizer: Any, text: str, *, literal: bool = False) -> list[int]:
    if not text:
        return []
    if literal:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer: Any, messages: Sequence[Message], **template_kwargs: Any) -> torch.Tensor:
    """Token ids (1-D LongTensor) of the rendered conversation, ready for the engine.

    The chat template writes any BOS it wants, so the tokenizer adds none; see the module docstring for how
    text from people is kept from becoming special tokens.
    """
    controls = control_strings(tokenizer)
    held: dict[str, str] = {}
    safe: list[Message] = []
    nonce = secrets.token_hex(4)
    for index, message in enumerate(messages):
        message = dict(message)
        for key in _USER_FIELDS:
            value = message.get(key)
            if isinstance(value, str) and any(c in value for c in controls):
                placeholder = f"\ue000{nonce}.{index}.{key}\ue001"
                held[placeholder] = value
                message[key] = placeholder
        safe.append(message)
    text = render_chat(tokenizer, safe, **template_kwargs)
    if not held:
        return torch.tensor(_ids(tokenizer, text), dtype=torch.long)
    ids: list[int] = []
    position = 0
    for match in re.finditer("|".join(re.escape(p) for p in held), text):
        ids += _ids(tokenizer, text[position : match.start()])
        ids += _ids(tokenizer, held[match.group()], literal=True)
        position = match.end()
    ids += _ids(tokenizer, text[position:])
    return torch.tensor(ids, dtype=torch.long)


__all__ = ["control_strings", "encode_chat", "render_chat"]
