"""How persona distributions become the one a token is drawn from, as pure tensor functions.

Every function takes raw next-token logits (rows of ``(rows, vocab)``), works in fp32 log-probabilities and
returns *scores*: log-probabilities up to a constant per row, ready for the warpers (temperature, top-k, top-p),
the grammar mask and the softmax, exactly as a persona's own logits would be.

* **guidance** (classifier-free guidance for LMs, Sanchez et al. 2023; Context Steering, He et al. 2024):
  ``log p_0 + γ (log p_i − log p_0)`` against a reference row ``p_0`` (the conversation with no preference, or
  with a negative one). ``γ = 1`` is persona ``i`` itself, ``γ > 1`` amplifies what the preference changes,
  ``γ < 0`` steers away from it.
* **weighted product** (MOD, Shi et al. 2024): ``log p_0 + γ Σ_i w_i (log p_i − log p_0)``; with ``γ = 1`` and
  ``Σ w = 1`` the reference cancels and this is ``Σ_i w_i log p_i``: a token must be likely under every persona.
"""

from __future__ import annotations

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of each row."""
    return torch.log_softmax(logits.float(), dim=-1)


def guided(persona: torch.Tensor, reference: torch.Tensor, guidance: float) -> torch.Tensor:
    """``log p_0 + γ (log p_i − log p_0)`` for each row of ``persona`` against the one ``reference`` row."""
    base = log_probs(reference)
    return base + guidance * (log_probs(persona) - base)


def product(
    personas: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor | None = None, guidance: float = 1.0
) -> torch.Tensor:
    """``log p_0 + γ Σ_i w_i (log p_i − log p_0)`` (one row), or ``Σ_i w_i log p_i`` with no reference.

    ``personas``: (K, V) logits; ``weights``: (K,); ``reference``: (V,) or (1, V) logits.
    """
    logp = log_probs(personas)
    w = weights.to(device=logp.device, dtype=torch.float32).unsqueeze(1)
    if reference is None:
        return (w * logp).sum(dim=0)
    base = log_probs(reference.reshape(1, -1))[0]
    return base + guidance * (w * (logp - base)).sum(dim=0)


__all__ = ["guided", "log_probs", "product"]
