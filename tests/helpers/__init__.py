"""Tiny random models and a naive reference implementation for exact engine checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats
from transformers import LlamaConfig, LlamaForCausalLM

from langchain_persona_judge.decoding.reference import naive_generate


def tiny_llama(seed: int = 0, vocab_size: int = 32, sharpness: float = 1.0, eos_token_id: int | None = None,
               context: int = 512):
    """A 2-layer random Llama. ``sharpness`` scales the output head so distributions are peaked and differ by prompt;
    ``context``: its context length (the weights do not depend on it)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=None,
        pad_token_id=None,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    model.generation_config.eos_token_id = eos_token_id
    return model


@torch.inference_mode()
def full_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits of every position, recomputed from scratch (no cache)."""
    return model(input_ids=torch.tensor([tokens])).logits[0].float()


def naive_greedy(model, prompts: list[list[int]], lookahead: int, max_new_tokens: int, eos: set[int]):
    """The paper's algorithm in greedy mode, with no KV cache (``decoding.reference``, the one oracle).

    Returns (tokens, [(drafter, judge, kind), ...], finish_reason).
    """
    result = naive_generate(model, prompts, max_new_tokens=max_new_tokens, lookahead=lookahead,
                            eos_token_id=sorted(eos))
    return result.token_ids, result.trace, result.finish_reason


class ToyConstraint:
    """A history-dependent token constraint: no immediate repeats, and only tokens < ``limit`` at even positions."""

    def __init__(self, vocab_size: int, limit: int = 20) -> None:
        self.vocab_size = vocab_size
        self.limit = limit
        self.history: list[int] = []
        self.max_rollback = 0

    @staticmethod
    def mask_for(history: list[int], vocab_size: int, limit: int) -> torch.Tensor:
        mask = torch.ones(vocab_size, dtype=torch.bool)
        if len(history) % 2 == 0:
            mask[limit:] = False
        if history:
            mask[history[-1]] = False
        return mask

    def allowed(self) -> torch.Tensor:
        return self.mask_for(self.history, self.vocab_size, self.limit)

    def advance(self, token_id: int) -> None:
        assert self.allowed()[token_id], f"token {token_id} was not allowed after {self.history}"
        self.history.append(token_id)

    def rollback(self, count: int) -> None:
        self.max_rollback = max(self.max_rollback, count)
        if count:
            del self.history[-count:]


def naive_greedy_masked(model, prompts, lookahead, max_new_tokens, mask_fn):
    """naive_greedy with every position's logits masked by ``mask_fn(emitted_so_far)`` (no EOS)."""
    emitted: list[int] = []
    n = len(prompts)
    k = 0

    def choose(tokens: list[int], history: list[int]) -> int:
        logits = full_logits(model, tokens)[-1].clone()
        logits[~mask_fn(history)] = float("-inf")
        return int(logits.argmax())

    while len(emitted) < max_new_tokens:
        drafter, judge = k % n, (k + 1) % n
        drafts: list[int] = []
        for _ in range(min(lookahead, max_new_tokens - len(emitted) - 1)):
            drafts.append(choose(prompts[drafter] + emitted + drafts, emitted + drafts))
        new: list[int] = []
        for token in drafts:
            best = choose(prompts[judge] + emitted + new, emitted + new)
            new.append(best)
            if best != token:
                break
        else:
            new.append(choose(prompts[judge] + emitted + new, emitted + new))
        emitted.extend(new[: max_new_tokens - len(emitted)])
        k += 1
    return emitted


class PersonaJudgeStandardCapabilities:
    """What ChatPersonaJudge supports, declared once for LangChain's standard unit and integration suites.

    Put it before the langchain-tests base class so that these properties override the base's defaults.
    """

    @property
    def chat_model_class(self):
        from langchain_persona_judge import ChatPersonaJudge

        return ChatPersonaJudge

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True


def _log_softmax(logits) -> np.ndarray:
    x = torch.as_tensor(logits).detach().double().reshape(-1).numpy()
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())


def _tempered_softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """The documented order after a rule: its scores, then the temperature (no top-k/top-p here), then softmax."""
    z = scores / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def product_law(personas, weights, reference=None, guidance: float = 1.0, temperature: float = 1.0) -> np.ndarray:
    """The weighted product's law written out (float64, independent of ``decoding.combine``):
    ``softmax(((1 − γ Σ w) log p_0 + γ Σ_i w_i log p_i) / T)``; with no reference ``softmax(Σ_i w_i log p_i / T)``.
    ``personas``: rows of raw logits, ``reference``: the reference row's raw logits."""
    w = [float(v) for v in weights]
    assert len(w) == len(personas)
    mixed = sum(wi * _log_softmax(row) for wi, row in zip(w, personas))
    if reference is None:
        return _tempered_softmax(mixed, temperature)
    return _tempered_softmax((1.0 - guidance * sum(w)) * _log_softmax(reference) + guidance * mixed, temperature)


def guided_law(persona, reference, guidance: float, temperature: float = 1.0) -> np.ndarray:
    """Guidance's law written out: ``softmax((log p_0 + γ (log p_i − log p_0)) / T)`` (float64)."""
    base = _log_softmax(reference)
    return _tempered_softmax(base + guidance * (_log_softmax(persona) - base), temperature)


def chi_square_pvalue(counts: Counter, probs: np.ndarray, total: int) -> float:
    """Pearson chi-square of observed counts against ``probs``; bins with expected < 5 are pooled."""
    expected = probs * total
    big = expected >= 5
    observed = np.array([counts.get(i, 0) for i in range(len(probs))], dtype=float)
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)



def tiny_gguf(directory, **kwargs):
    """``(tiny_llama(**kwargs), its unquantised GGUF export in directory)``, for the llama.cpp backend's tests."""
    model = tiny_llama(**kwargs)
    path = Path(directory) / "tiny.gguf"
    export_gguf(model, path)
    return model, path


def export_gguf(model, path) -> None:
    """Write a transformers Llama to an unquantised (F32) GGUF file that llama.cpp loads: the same tensors
    under llama.cpp's names, q/k rows permuted to its rotary layout (as llama.cpp's convert_hf_to_gguf.py
    does), and a placeholder SentencePiece vocabulary (the tests feed token ids, never text)."""
    import gguf

    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // n_head
    rope = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = ["<unk>", "<s>", "</s>", "<0x0A>"] + [f"t{i}" for i in range(4, config.vocab_size)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.BYTE]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types + [gguf.TokenType.NORMAL] * (len(tokens) - 4))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(config.eos_token_id if isinstance(config.eos_token_id, int) else 2)
    writer.add_add_bos_token(False)

    def permute(weight: np.ndarray, heads: int) -> np.ndarray:
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
            weight.shape)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(state[p + "self_attn.q_proj.weight"], n_head))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute(state[p + "self_attn.k_proj.weight"], n_kv))
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def count_context_checks(monkeypatch: Any) -> list[int | None]:
    """Record each context check the runtime makes (the limit it checked against) and fail the test if decoding
    starts: for tests that an over-long conversation is refused once, before any forward."""
    from langchain_persona_judge import decoding
    from langchain_persona_judge.runtime import request

    checks: list[int | None] = []
    original = request.context_budget

    def counting(limit: int | None, *args: Any, **kwargs: Any) -> int:
        checks.append(limit)
        return original(limit, *args, **kwargs)

    def no_forward(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoding started for a conversation that does not fit")

    monkeypatch.setattr(request, "context_budget", counting)
    monkeypatch.setattr(decoding, "stream", no_forward)
    return checks
