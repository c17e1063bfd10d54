"""Closed-form training dynamics of a kernel model: gradient flow and kernel regression.

For the MSE loss L = 1/(2N) Σ‖f(x_i) − y_i‖² and learning rate η, a model that is linear in
its parameters with kernel Θ evolves under gradient flow, at time τ = η·step (docs/conventions.md), as

    f_τ(X)  − y = e^{−τ Θ(X,X)/N} (f_0(X) − y)                                   (train)
    f_τ(x*)     = f_0(x*) + Θ(x*,X) Θ(X,X)⁻¹ (I − e^{−τ Θ(X,X)/N}) (y − f_0(X))  (test)

(Jacot et al. 2018; Lee et al. 2019, eqs. 9–10). τ → ∞ gives kernel regression,
f_∞(x*) = f_0(x*) + Θ(x*,X) Θ(X,X)⁻¹ (y − f_0(X)); with f_0 = 0 it is the predictor of Arora
et al. 2019 (their Theorem 3.2). Pure functions, float64 in and out.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Eigenvalues below this fraction of the largest are treated as 0: there the flow factor
# (1 − e^{−τλ/N})/λ is replaced by its λ → 0 limit τ/N (no division by round-off).
RELATIVE_EIGENVALUE_FLOOR = 1e-12


def _eigh(theta_train: Tensor) -> tuple[Tensor, Tensor]:
    theta = 0.5 * (theta_train + theta_train.T)  # symmetric up to round-off
    return torch.linalg.eigh(theta)


def gradient_flow(
    theta_train: Tensor, theta_test_train: Tensor, f0_train: Tensor, f0_test: Tensor,
    y_train: Tensor, tau: float,
) -> tuple[Tensor, Tensor]:
    """Predictions of the kernel model at time τ = η·step.

    Args:
        theta_train: Θ(X, X) (N, N). theta_test_train: Θ(x*, X) (M, N).
        f0_train: f_0(X) (N, O). f0_test: f_0(x*) (M, O). y_train: (N, O).
        tau: η·step.

    Returns:
        (f_τ(X) (N, O), f_τ(x*) (M, O)).
    """
    return _flow_in_eigenbasis(_eigh(theta_train), theta_test_train, f0_train, f0_test, y_train, tau)


def _flow_in_eigenbasis(eig: tuple[Tensor, Tensor], theta_test_train: Tensor, f0_train: Tensor,
                        f0_test: Tensor, y_train: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """:func:`gradient_flow` given Θ(X, X)'s eigendecomposition (λ, U)."""
    lam, vecs = eig
    n = lam.shape[0]
    r0 = vecs.T @ (f0_train - y_train)  # residual in the eigenbasis, (N, O)
    decay = torch.exp(-tau * lam / n)  # e^{-τλ/N}
    small = lam.abs() <= RELATIVE_EIGENVALUE_FLOOR * lam.abs().max()
    safe_lam = torch.where(small, torch.ones_like(lam), lam)
    flow = torch.where(small, torch.full_like(lam, tau / n), -torch.expm1(-tau * lam / n) / safe_lam)
    train = y_train + vecs @ (decay[:, None] * r0)
    test = f0_test - theta_test_train @ (vecs @ (flow[:, None] * r0))
    return train, test


def kernel_regression(theta_train: Tensor, theta_test_train: Tensor, y_train: Tensor) -> Tensor:
    """Θ(x*, X) Θ(X, X)⁺ y (M, O): the τ → ∞ limit from f_0 = 0 (Arora et al. 2019).

    Uses the pseudo-inverse on eigenvalues above the relative floor.
    """
    lam, vecs = _eigh(theta_train)
    keep = lam > RELATIVE_EIGENVALUE_FLOOR * lam.abs().max()
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return theta_test_train @ (vecs @ (inv[:, None] * (vecs.T @ y_train)))


class GradientFlowPredictor:
    """The kernel model's test and train predictions at any time τ, for one network's f_0.

    Holds the eigendecomposition-free inputs; each call is O(N³ + M·N·O) (N = n_train), cheap
    for the training-set sizes of NTK studies.

    Args:
        theta_train: Θ(X, X) (N, N); theta_test_train: Θ(x*, X) (M, N); y_train: (N, O),
            all float64 — the kernel that drives the dynamics (Θ_∞ for the infinite network).
    """

    def __init__(self, theta_train: Tensor, theta_test_train: Tensor, y_train: Tensor):
        self.theta_train = theta_train
        self.theta_test_train = theta_test_train
        self.y_train = y_train
        self.f0_train: Tensor | None = None
        self.f0_test: Tensor | None = None
        self._eig: tuple[Tensor, Tensor] | None = None

    def set_initial(self, f0_train: Tensor, f0_test: Tensor) -> None:
        """The network's outputs at initialization (the infinite model starts where it does)."""
        self.f0_train, self.f0_test = f0_train.double(), f0_test.double()

    def at(self, tau: float) -> tuple[Tensor, Tensor]:
        """(f_τ(X), f_τ(x*)) — see :func:`gradient_flow`. Θ(X, X) is diagonalized once."""
        if self._eig is None:
            self._eig = _eigh(self.theta_train)
        return _flow_in_eigenbasis(self._eig, self.theta_test_train, self.f0_train, self.f0_test,
                                   self.y_train, tau)

    def kernel_regression(self) -> Tensor:
        """Θ(x*, X) Θ(X, X)⁺ y: the infinite-time predictor from f_0 = 0."""
        return kernel_regression(self.theta_train, self.theta_test_train, self.y_train)
