"""The engine passes the KV cache under the name the model's ``forward`` declares, and the cache is really used.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns); in 5.40 the old name is gone,
and a forward with ``**kwargs`` would swallow it and decode with no cache at all. Older versions know only
``past_key_values``. Two wrappers of the same tiny Llama mimic each side: each declares one name only and
silently drops the other, as a model that does not know it would. Under both, for both schedules, greedy
decoding must give the plain model's tokens, feed each forward only the new positions, and fill the cache.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from langchain_persona_judge.decoding.backends import ForwardSignature
from langchain_persona_judge.decoding import SCHEDULES, generate
from tests.helpers import tiny_llama

LOOKAHEAD = 4
MAX_NEW_TOKENS = 40
# Long prompts, so that re-reading one in a forward costs far more than the new positions a forward feeds.
PROMPTS = [list(range(1, 31)) + list(range(10)), list(range(3, 31)) + [7] * 7, [5, 9, 2] * 12]  # vocabulary: 32


class _Recording(LlamaForCausalLM):
    """Records, per forward, the cache that arrived under the declared name and how long it was afterwards."""

    unknown_name = ""

    def _record_and_forward(self, cache: Any, kwargs: dict[str, Any]) -> Any:
        # A model that does not know a name would ignore it: drop it silently, but remember it came.
        self.ignored_names.append(kwargs.pop(self.unknown_name, None) is not None)
        out = super().forward(cache=cache, **kwargs)  # the 5.24 name, so the wrapper itself never warns
        self.cache_lengths.append(None if cache is None else cache.get_seq_length())
        return out


class CacheOnlyLlama(_Recording):
    """transformers >= 5.40: ``forward`` takes ``cache=`` only."""

    unknown_name = "past_key_values"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        return self._record_and_forward(cache, dict(kwargs, input_ids=input_ids, attention_mask=attention_mask,
                                                    position_ids=position_ids, use_cache=use_cache,
                                                    logits_to_keep=logits_to_keep))


class PastKeyValuesOnlyLlama(_Recording):
    """transformers < 5.24: ``forward`` takes ``past_key_values=`` only."""

    unknown_name = "cache"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        return self._record_and_forward(past_key_values, dict(kwargs, input_ids=input_ids,
                                                              attention_mask=attention_mask, position_ids=position_ids,
                                                              use_cache=use_cache, logits_to_keep=logits_to_keep))


def _wrapped(cls: type[_Recording]) -> _Recording:
    model = tiny_llama(seed=3, sharpness=3.0)  # the same weights as the plain model below (same seed)
    model.__class__ = cls
    model.ignored_names, model.cache_lengths = [], []
    return model


@pytest.mark.parametrize("cls, name", [(CacheOnlyLlama, "cache"), (PastKeyValuesOnlyLlama, "past_key_values")],
                         ids=["cache-only", "past_key_values-only"])
def test_the_probe_reads_the_declared_name(cls, name):
    model = _wrapped(cls)
    parameters = inspect.signature(model.forward).parameters
    assert name in parameters and cls.unknown_name not in parameters
    assert ForwardSignature(model).cache_argument == name


@pytest.mark.parametrize("n_personas", [2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("cls", [CacheOnlyLlama, PastKeyValuesOnlyLlama], ids=["cache-only", "past_key_values-only"])
def test_greedy_output_and_cache_use_match_the_plain_model(cls, schedule, n_personas):
    prompts = [torch.tensor(p) for p in PROMPTS[:n_personas]]
    options = {"max_new_tokens": MAX_NEW_TOKENS, "lookahead": LOOKAHEAD, "do_sample": False, "eos_token_id": [],
               "schedule": schedule}
    expected = generate(tiny_llama(seed=3, sharpness=3.0), prompts, **options)
    model = _wrapped(cls)
    gen = generate(model, prompts, **options)

    assert gen.token_ids == expected.token_ids and len(gen.token_ids) == MAX_NEW_TOKENS
    # Not a degenerate run: varied tokens, and the personas disagree (rejections, hence cache crops).
    assert len(set(gen.token_ids)) >= 5 and any(e.kind == "residual" for e in gen.stats.trace)
    assert [(e.drafter, e.judge, e.kind) for e in gen.stats.trace] == [
        (e.drafter, e.judge, e.kind) for e in expected.stats.trace]
    # The cache came under the declared name on every forward, and it grew past the prompts (it was used).
    assert len(model.cache_lengths) == gen.stats.forward_calls
    assert not any(model.ignored_names)
    assert all(length is not None for length in model.cache_lengths)
    assert max(model.cache_lengths) >= max(map(len, PROMPTS[:n_personas])) + MAX_NEW_TOKENS // 2
    # Only new positions are fed: each persona's prompt once, then at most a few tokens per row and forward.
    # Re-reading a prompt in every forward would feed at least forward_calls * (shortest prompt) positions.
    shortest, longest = min(map(len, PROMPTS[:n_personas])), max(map(len, PROMPTS[:n_personas]))
    bound = n_personas * longest + gen.stats.forward_calls * n_personas * (LOOKAHEAD + 2)
    assert gen.stats.positions <= bound < gen.stats.forward_calls * shortest
    assert gen.stats.positions == expected.stats.positions
