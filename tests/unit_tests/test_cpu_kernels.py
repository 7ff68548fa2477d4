"""oneDNN-packed linear layers: same results as ``F.linear``, transparent to the rest of torch and transformers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from langchain_persona_judge import generate
from langchain_persona_judge.decoding.cpu_kernels import (
    PREPACK_ENV,
    PrepackedLinear,
    is_prepacked,
    linear_weight_bytes,
    prepack_linear_weights,
    prepack_supported,
    should_prepack,
    unpack_linear_weights,
)
from tests.helpers import naive_greedy, tiny_llama

pytestmark = pytest.mark.skipif(not prepack_supported(), reason="this torch build has no oneDNN linear ops")

PROMPTS = [[1, 5, 9, 3], [2, 7, 7, 4, 11]]


def _logits(model: nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits[0]


def test_packed_layers_compute_what_plain_layers_compute() -> None:
    plain, packed = tiny_llama(seed=3), tiny_llama(seed=3)
    count = prepack_linear_weights(packed)
    assert count == sum(isinstance(m, nn.Linear) for m in plain.modules()) > 0
    tokens = list(range(1, 12))
    # Multi-row products go through oneDNN: equal to float rounding, not bit for bit.
    torch.testing.assert_close(_logits(packed, tokens), _logits(plain, tokens), rtol=1e-4, atol=1e-4)
    # A single row keeps PyTorch's own matrix-vector kernel: bit for bit.
    assert torch.equal(_logits(packed, [5]), _logits(plain, [5]))
    # Packing happened lazily, on the first multi-row call, and only once.
    layer = packed.model.layers[0].mlp.down_proj
    first = layer._packed
    assert first is not None
    _logits(packed, tokens)
    assert layer._packed is first


def test_packed_model_keeps_its_parameters_and_checkpoint(tmp_path) -> None:
    model = tiny_llama(seed=1)
    keys = list(model.state_dict())
    prepack_linear_weights(model)
    _logits(model, [1, 2, 3])
    assert list(model.state_dict()) == keys, "the packed copy must not leak into the state dict"
    assert all(isinstance(m, nn.Linear) for m in model.modules() if type(m) is PrepackedLinear)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, [1, 2, 3]), _logits(model, [1, 2, 3]), rtol=1e-4, atol=1e-4)


def test_editing_a_weight_after_packing_is_seen() -> None:
    model, reference = tiny_llama(seed=2), tiny_llama(seed=2)
    prepack_linear_weights(model)
    _logits(model, [1, 2, 3])  # packs every layer
    with torch.no_grad():
        for m in (model, reference):
            m.lm_head.weight.mul_(-2.0)
            m.model.layers[1].self_attn.q_proj.weight.copy_(torch.ones_like(m.model.layers[1].self_attn.q_proj.weight))
    torch.testing.assert_close(_logits(model, [1, 2, 3]), _logits(reference, [1, 2, 3]), rtol=1e-4, atol=1e-4)


def test_gradients_still_flow_through_packed_layers() -> None:
    model = tiny_llama(seed=4).train()
    prepack_linear_weights(model)
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_other_dtypes_fall_back_to_plain_kernels() -> None:
    plain, packed = tiny_llama(seed=5).to(torch.float64), tiny_llama(seed=5).to(torch.float64)
    prepack_linear_weights(packed)
    assert torch.equal(_logits(packed, [1, 2, 3, 4]), _logits(plain, [1, 2, 3, 4]))


def test_unpack_restores_plain_layers() -> None:
    model = tiny_llama(seed=6)
    n = prepack_linear_weights(model)
    _logits(model, [1, 2, 3])
    assert is_prepacked(model)
    assert unpack_linear_weights(model) == n
    assert not is_prepacked(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert not any(hasattr(m, "_packed") for m in model.modules())


@pytest.mark.parametrize("lookahead", [1, 4])
def test_engine_on_a_packed_model_matches_the_naive_reference(lookahead: int) -> None:
    model = tiny_llama(seed=7, sharpness=4.0)
    prepack_linear_weights(model)
    out = generate(model, [torch.tensor(p) for p in PROMPTS], max_new_tokens=20, lookahead=lookahead,
                   do_sample=False, eos_token_id=[])
    expected, _, _ = naive_greedy(model, PROMPTS, lookahead, 20, set())
    assert out.token_ids == expected


def test_should_prepack_resolution(monkeypatch) -> None:
    model = tiny_llama(seed=8)
    monkeypatch.delenv(PREPACK_ENV, raising=False)
    assert should_prepack(model, None) is True  # fp32 on CPU, tiny
    assert should_prepack(model, False) is False
    monkeypatch.setenv(PREPACK_ENV, "0")
    assert should_prepack(model, None) is False
    assert should_prepack(model, True) is True  # an explicit argument beats the environment
    monkeypatch.setenv(PREPACK_ENV, "1")
    assert should_prepack(model, None) is True
    monkeypatch.delenv(PREPACK_ENV)
    half = tiny_llama(seed=8).to(torch.bfloat16)
    assert should_prepack(half, None) is False
    with pytest.raises(ValueError, match="prepack=True needs a float32 model on the CPU"):
        should_prepack(half, True)
    assert linear_weight_bytes(model) == sum(
        m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear)
    )


def test_auto_prepack_skips_models_over_the_memory_budget(monkeypatch) -> None:
    import langchain_persona_judge.decoding.cpu_kernels as kernels

    model = tiny_llama(seed=9)
    monkeypatch.delenv(PREPACK_ENV, raising=False)
    monkeypatch.setattr(kernels, "AUTO_PREPACK_MAX_BYTES", linear_weight_bytes(model) - 1)
    assert should_prepack(model, None) is False
    assert should_prepack(model, True) is True


def test_layers_with_a_bias_and_batched_inputs() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8, bias=False))
    packed = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8, bias=False))
    packed.load_state_dict(plain.state_dict())
    assert prepack_linear_weights(packed) == 2
    x = torch.randn(3, 5, 16)  # (batch, positions, features)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)
        assert packed[0]._packed is not None  # the oneDNN path ran, not the fallback


def test_packed_models_deep_copy_pickle_and_cast() -> None:
    import copy
    import io

    model = tiny_llama(seed=10)
    prepack_linear_weights(model)
    tokens = [1, 2, 3, 4]
    expected = _logits(model, tokens)  # packs every layer: the opaque oneDNN copies now exist
    clone = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):
        assert is_prepacked(other)
        torch.testing.assert_close(_logits(other, tokens), expected)
    model.to(torch.float64)
    _logits(model, tokens)
    assert all(m._packed is None for m in model.modules() if type(m) is PrepackedLinear), "stale copies kept"
