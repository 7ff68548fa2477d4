"""Weights from evidence: the Bradley–Terry fit of pairwise choices, the score step of a user's own writing, and
PReF's rule for the most informative next question. Pure numpy (and scipy's optimiser); no model here.

**Choices.** A user who picks ``a`` over ``b`` for prompt ``x`` is modelled as ``P(a ≻ b) = σ(w · d)`` with
``d = φ(x, a) − φ(x, b)`` (Bradley–Terry on the persona features). "No preference" is a half label, which pulls
``w · d`` towards 0. The weights maximise the log-likelihood minus ``l2/2 ‖w − prior‖²``, by scipy's trust-region
Newton method with the exact gradient and Hessian (the problem is convex: one optimum).

**Uncertainty.** At the optimum the Hessian ``H = Σ_i σ_i (1 − σ_i) d_i d_iᵀ + l2 I`` is the precision of the
Laplace posterior over ``w``; a candidate pair with feature difference ``d`` has predictive variance
``dᵀ H⁻¹ d``, and PReF asks next the pair where that is largest.

**Writing.** Text the user wrote is evidence for the weights of the log-linear model that the weighted-product
decoding samples from; one Newton step from ``w = 0`` gives ``w = (F + l2 I)⁻¹ g`` with the score ``g`` and
Fisher information ``F`` summed over the text's tokens (:class:`~.scoring.WritingStatistics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ProfileError

L2 = 0.1
"""The default L2 strength of the choice fit (the prior precision of each weight). Features are mean per-token
log-ratios (typically 0.05–0.5 apart between two answers), so this prior allows reward differences of a few
units: strong preferences. Stronger penalties keep the Hessian near ``l2 I`` for the first ten choices, and the
active rule then keeps asking about the pairs that are merely far apart (README, "Learn my preferences")."""
WRITING_L2 = 1.0
"""The default L2 strength of the writing step."""


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ProfileError(f"The {name} hold NaN or infinite values; check the evidence (and the model's logits).")
    return array


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


@dataclass(frozen=True)
class Fit:
    """The weights of a fit and the Hessian (posterior precision) at them."""

    weights: np.ndarray
    hessian: np.ndarray
    loss: float
    converged: bool

    def information(self, differences: np.ndarray) -> np.ndarray:
        """``dᵀ H⁻¹ d`` of each row of ``differences``: what asking that pair would teach."""
        return information(differences, self.hessian)


def bradley_terry_hessian(differences: np.ndarray, weights: np.ndarray, l2: float) -> np.ndarray:
    """``Σ_i σ_i (1 − σ_i) d_i d_iᵀ + l2 I`` at ``weights``."""
    d = np.asarray(differences, dtype=float).reshape(-1, len(weights))
    p = _sigmoid(d @ weights)
    return (d * (p * (1 - p))[:, None]).T @ d + l2 * np.eye(len(weights))


def fit_bradley_terry(
    differences: np.ndarray | Sequence[Sequence[float]],
    outcomes: np.ndarray | Sequence[float],
    *,
    l2: float = L2,
    prior: np.ndarray | Sequence[float] | None = None,
) -> Fit:
    """Fit ``w`` to pairwise outcomes: row ``i`` of ``differences`` is ``φ(first) − φ(second)``, ``outcomes[i]``
    is 1 (the first was chosen), 0 (the second) or 0.5 (no preference). ``prior``: the centre of the L2 penalty
    (None: zero)."""
    from scipy.optimize import minimize

    d = _finite("feature differences", np.asarray(differences, dtype=float))
    y = _finite("outcomes", np.asarray(outcomes, dtype=float).reshape(-1))
    if d.ndim != 2 or d.shape[0] != y.shape[0]:
        raise ProfileError(f"differences {d.shape} and outcomes {y.shape} do not match: one row per comparison.")
    if np.any((y != 0) & (y != 1) & (y != 0.5)):
        raise ProfileError("An outcome is not 1 (first chosen), 0 (second chosen) or 0.5 (no preference).")
    if not (np.isfinite(l2) and l2 > 0):
        raise ProfileError(f"l2={l2}: pass a finite number > 0.")
    k = d.shape[1]
    centre = np.zeros(k) if prior is None else _finite("prior weights", np.asarray(prior, dtype=float))
    if centre.shape != (k,):
        raise ProfileError(f"The prior has {centre.size} weights but the features have {k}.")

    def loss(w: np.ndarray) -> float:
        z = d @ w
        return float(-(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z)).sum() + 0.5 * l2 * np.sum((w - centre) ** 2))

    def gradient(w: np.ndarray) -> np.ndarray:
        return d.T @ (_sigmoid(d @ w) - y) + l2 * (w - centre)

    def hessian(w: np.ndarray) -> np.ndarray:
        return bradley_terry_hessian(d, w, l2)

    result = minimize(loss, centre.copy(), jac=gradient, hess=hessian, method="trust-exact",
                      options={"gtol": 1e-8, "maxiter": 200})
    weights = _finite("fitted weights", np.asarray(result.x, dtype=float))
    # trust-exact can stop at the float floor with a "bad approximation" message: judge by the gradient itself.
    converged = bool(result.success) or float(np.abs(gradient(weights)).max()) <= 1e-6 * max(1, len(y))
    return Fit(weights, hessian(weights), float(result.fun), converged)


def information(differences: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``dᵀ H⁻¹ d`` for each row ``d`` of ``differences``."""
    d = np.atleast_2d(np.asarray(differences, dtype=float))
    solved = np.linalg.solve(hessian, d.T)
    return np.einsum("ij,ji->i", d, solved)


def most_informative(differences: np.ndarray, hessian: np.ndarray) -> int:
    """PReF's rule: the index of the row ``d`` with the largest ``dᵀ H⁻¹ d``."""
    d = np.atleast_2d(np.asarray(differences, dtype=float))
    if d.shape[0] == 0:
        raise ProfileError("No candidate pair to choose from; add candidate answers first.")
    return int(np.argmax(information(d, hessian)))


def writing_weights(score: np.ndarray, fisher: np.ndarray, *, l2: float = WRITING_L2) -> np.ndarray:
    """``(F + l2 I)⁻¹ g``: one Newton step of the log-linear model's likelihood from ``w = 0``."""
    g = _finite("writing scores", np.asarray(score, dtype=float))
    f = _finite("writing Fisher information", np.asarray(fisher, dtype=float))
    if not (np.isfinite(l2) and l2 > 0):
        raise ProfileError(f"l2={l2}: pass a finite number > 0.")
    # The Fisher information is a covariance: symmetric, positive semi-definite (symmetrise the float noise).
    f = 0.5 * (f + f.T)
    return np.linalg.solve(f + l2 * np.eye(len(g)), g)


__all__ = [
    "L2",
    "WRITING_L2",
    "Fit",
    "bradley_terry_hessian",
    "fit_bradley_terry",
    "information",
    "most_informative",
    "writing_weights",
]
