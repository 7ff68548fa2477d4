"""Faster multi-token forwards on CPU: ``nn.Linear`` layers backed by oneDNN-prepacked weights.

Persona-judge's judge scores λ+1 positions in one forward. On a CPU, PyTorch's default fp32 matmul for a
handful of rows re-packs the whole weight matrix on every call, so a few-token forward costs well over a
1-token one, although reading the weights (the real cost of small-batch decoding) is the same. With the
weight packed once into oneDNN's blocked layout (what intel-extension-for-pytorch and inductor's CPU freezing
do), much of that extra cost goes (figures: ``benchmarks/README.md``). Single-token forwards keep PyTorch's
matrix-vector kernel, which is faster there, so plain decoding is unchanged.

The packed copy is kept beside the original weight (``state_dict``, ``save_pretrained``, ``.to()`` and tied
embeddings keep working), which costs one more copy of the linear weights in memory; a layer falls back to
``F.linear`` whenever the packed copy cannot be used (another device or dtype, autograd, a weight changed
after packing).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import PREPACK_ENV
from ..errors import InvalidOptionError, ModelLoadError

AUTO_PREPACK_MAX_BYTES = 2 << 30  # "auto" packs models whose linear weights take at most 2 GiB (fp32 ~500M params)


def prepack_supported() -> bool:
    """Whether this torch build has the oneDNN ops the packed layers call."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


class PrepackedLinear(nn.Linear):
    """An ``nn.Linear`` whose multi-row products use a oneDNN-packed copy of its weight (packed lazily)."""

    _packed: torch.Tensor | None
    _packed_key: tuple[int, int] | None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  # nn.Linear's own signature
        weight = self.weight
        if (
            input.numel() <= input.shape[-1]  # one row: PyTorch's matrix-vector kernel is faster
            or input.device.type != "cpu"
            or input.dtype != torch.float32
            or weight.dtype != torch.float32
            or weight.device.type != "cpu"
            or (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
        ):
            if self._packed is not None and (weight.device.type != "cpu" or weight.dtype != torch.float32):
                self._packed = self._packed_key = None  # moved or cast: the CPU fp32 copy is dead weight
            return F.linear(input, weight, self.bias)
        key = (weight.data_ptr(), weight._version)
        packed = self._packed
        if packed is None or self._packed_key != key:  # first use, or the weight was replaced or edited
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
            self._packed, self._packed_key = packed, key
        return torch.ops.mkldnn._linear_pointwise(input, packed, self.bias, "none", [], "")


    def __getstate__(self) -> dict[str, Any]:
        # The packed copy is an opaque oneDNN tensor that cannot be pickled or deep-copied; it is rebuilt lazily.
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_packed"] = state["_packed_key"] = None
        return state


def _linears(model: nn.Module) -> list[nn.Linear]:
    # Exactly nn.Linear: subclasses (quantised or LoRA layers) have forwards of their own.
    return [m for m in model.modules() if type(m) is nn.Linear or type(m) is PrepackedLinear]


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes one more copy of ``model``'s plain ``nn.Linear`` weights would take."""
    return sum(m.weight.numel() * m.weight.element_size() for m in _linears(model))


def prepack_linear_weights(model: nn.Module) -> int:
    """Switch ``model``'s plain ``nn.Linear`` layers to :class:`PrepackedLinear` in place; return how many.

    The layers stay ``nn.Linear`` instances with the same parameters; only their multi-row CPU fp32
    products change kernel (results agree with ``F.linear`` to float rounding). Undo with
    :func:`unpack_linear_weights`.
    """
    if not prepack_supported():
        raise ModelLoadError("this torch build has no oneDNN (mkldnn) linear ops; leave prepack off")
    count = 0
    for module in _linears(model):
        if type(module) is nn.Linear:
            module.__class__ = PrepackedLinear
            module._packed, module._packed_key = None, None
            count += 1
    return count


def unpack_linear_weights(model: nn.Module) -> int:
    """Turn :class:`PrepackedLinear` layers back into plain ``nn.Linear``, freeing the packed copies."""
    count = 0
    for module in model.modules():
        if type(module) is PrepackedLinear:
            module.__class__ = nn.Linear
            del module._packed, module._packed_key
            count += 1
    return count


def is_prepacked(model: nn.Module) -> bool:
    """Whether any layer of ``model`` uses packed weights."""
    return any(type(m) is PrepackedLinear for m in model.modules())


def should_prepack(model: Any, prepack: bool | None) -> bool:
    """Resolve ``load_model(prepack=...)``: explicit True/False wins, then ``$PERSONA_JUDGE_PREPACK``, then auto.

    Auto packs a float32 model on the CPU when oneDNN is there and the extra copy fits the budget.
    """
    if prepack is None:
        env = os.environ.get(PREPACK_ENV, "").strip().lower()
        if env in {"0", "false", "no", "off"}:
            return False
        if env in {"1", "true", "yes", "on"}:
            prepack = True
    if prepack is False:
        return False
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    if param.device.type != "cpu" or param.dtype != torch.float32 or not prepack_supported():
        if prepack is True:
            raise InvalidOptionError(
                f"prepack=True needs a float32 model on the CPU and a torch build with oneDNN; this model is "
                f"{param.dtype} on {param.device}. Leave prepack unset (auto) or pass prepack=False."
            )
        return False
    return prepack is True or linear_weight_bytes(model) <= AUTO_PREPACK_MAX_BYTES
