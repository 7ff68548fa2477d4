"""A tiny byte-level BPE chat tokenizer for unit tests: built in milliseconds, no model files.

Byte-level, so every text (any language, JSON, emoji) encodes and decodes back exactly, as SmolLM2's does; a few
hundred merges learnt from a fixed English corpus (deterministic), so English prompts are a few characters per
token; the special tokens and the ChatML chat template of the embedded model (SmolLM2-135M-Instruct), so prompts
are laid out the same way: ``<|endoftext|>`` = 0 (unknown), ``<|im_start|>`` = 1 (BOS), ``<|im_end|>`` = 2 (EOS
and padding).
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's chat template (ChatML, with its default system turn)."""

CORPUS = [
    "You are a helpful AI assistant. Answer the question the user asks, in a way that suits them.",
    "Why is the sky blue? Because air scatters blue light more than red light, so the sky looks blue to us.",
    "What is rain? Rain is water that falls from clouds when droplets grow heavy enough to fall.",
    "How do I start running? Start slowly, run a little each day, and rest when you need to.",
    "Be concise. Be friendly and warm. Be formal. Use simple words a child would understand. Explain like an "
    "expert, with the technical terms. Answer with a joke. Write in a casual tone. Be polite and enthusiastic.",
    "The weather today is sunny with a light breeze; tomorrow there will be clouds and some rain in the evening.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "value": [1, 2, 3], "ok": true}',
    # Tool calls and JSON answers, as the tool and structured-output tests decode them (a few times, so that
    # their tags and keys become whole tokens and a call fits the budgets those tests give).
    *['<tool_call>\n{"name": "Calculator", "arguments": {"a": 2, "b": 2, "op": "+"}}\n</tool_call>\n'
      '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>\n'
      '{"setup": "Why?", "punchline": "Because."}'] * 4,
    "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Thank you! That is a great question. Here is what I think, and why it matters to you and me.",
    # test_chat_models' scripted answer: its words become single, distinct tokens (its emoji and check mark,
    # unseen here, stay split into their bytes).
    *["Hi! über café, done; STOP now please and more text."] * 3,
]
"""Text the merges are learnt from (fixed, so the vocabulary is the same on every run and machine)."""


@lru_cache(maxsize=1)
def _backend() -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return backend


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh transformers tokenizer over the tiny vocabulary (a new object each call; the vocabulary is shared)."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_backend(), bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
