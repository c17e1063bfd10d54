"""Function-space training dynamics of a kernel model for any loss, integrated in float64.

A model that is linear in its parameters with (infinite-width) kernel Θ, trained on the loss
L(f) = 1/N Σ_i ℓ(f(x_i), y_i) (docs/conventions.md; ``mse``: ℓ = ½‖f − y‖², ``cross_entropy``:
ℓ = −Σ_k y_k log softmax(f)_k), moves in function space as

    gradient descent, continuous limit (time t = η·step):
        df/dt = −Θ(·, X) g(f(X)),                 g = ∇_f L = (f − y)/N  or  (softmax(f) − y)/N

    heavy-ball momentum μ (torch.optim.SGD: v ← μv + ∇L, θ ← θ − ηv), continuous limit:
        η(1+μ)/2 · d²f/dt² + (1 − μ) · df/dt = −Θ(·, X) g(f(X)),   t = η·step,
        f(0) = f_0,  df/dt(0) = −Θ(·, X) g(f_0)/(1 + μ).

The momentum equation is the heavy-ball recursion θ_{k+1} − θ_k = μ(θ_k − θ_{k−1}) − η∇L(θ_k)
expanded to second order in the step (θ(t ± η) by Taylor series; Qian 1999, Kovachki & Stuart
2021): at fixed t it matches the iterates to O(η²), where the first-order limit
df/dt = −Θg/(1 − μ) is only O(η) (both orders are checked in the tests). The Taylor expansion
holds on the slow solution, not in the first ~1/(1 − μ) steps while the velocity builds up
from v_0 = 0; the initial velocity is the one whose slow solution is the iterates' — matching
the slow eigenmode of the linear recursion and of the ODE to first order in η gives
df/dt(0) = −Θg(f_0)/(1 + μ) (the recursion lags the first-order flow by μ/(1 − μ) steps).
With μ = 0 it is the O(η) modified equation of plain gradient descent; the ``sgd``
prediction uses the plain gradient flow above, which for MSE is the closed form of
:mod:`ntk_lab.dynamics.gradient_flow`.

Both train and test predictions follow from one state. Write f(x, t) = f_0(x) − Θ(x, X) G(t);
then G (N, O) obeys Ġ = g(f_0(X) − Θ(X, X) G) (gradient flow) or η(1+μ)/2 G̈ + (1 − μ)Ġ =
g(f_0(X) − Θ(X, X) G), G(0) = 0, Ġ(0) = g(f_0(X))/(1 + μ) (momentum) — for the network, θ(t) − θ_0 =
−J(X)ᵀ G(t). G is integrated with :func:`scipy.integrate.solve_ivp` (DOP853, an explicit
adaptive Runge–Kutta method of order 8 with error control at relative tolerance ``RTOL`` and
absolute ``ATOL``); the train and test predictions are exact linear maps of it, so the
test-set error is bounded by ‖Θ(x*, X)‖ times the controlled error of G.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

LOSSES = ("mse", "cross_entropy")
# Local error tolerances of the integrator on G, whose entries are O(t/N): the predictions are
# accurate to ~1e-9 relative, far below the finite-width gaps (≳1e-3) they are compared with.
RTOL = 1e-10
ATOL = 1e-13


def loss_gradient(loss: str, f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """g = ∇_f L for L = 1/N Σ_i ℓ(f_i, y_i); f, y: (N, O) -> (N, O).

    ``mse``: (f − y)/N. ``cross_entropy``: (softmax(f) − y)/N (softmax over the O outputs; y
    rows are one-hot or any probability vectors).
    """
    n = f.shape[0]
    if loss == "mse":
        return (f - y) / n
    if loss == "cross_entropy":
        shifted = f - f.max(axis=1, keepdims=True)  # softmax without overflow
        p = np.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        return (p - y) / n
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


class KernelFlow:
    """The kernel model's train and test predictions at any time t = η·step.

    Args:
        theta_train: Θ(X, X) (N, N). theta_test_train: Θ(x*, X) (M, N). y_train: (N, O).
        loss: ``mse`` or ``cross_entropy``.
        momentum: μ of heavy-ball momentum; 0 gives gradient flow.
        lr: η (only the momentum equation's inertia η(1+μ)/2 needs it).
        rtol, atol: the integrator's tolerances.

    Call :meth:`set_initial` with the network's f_0, then :meth:`at` with non-decreasing times
    (each call continues the integration from the last time; an earlier time restarts it).
    """

    def __init__(self, theta_train: Tensor, theta_test_train: Tensor, y_train: Tensor,
                 loss: str = "mse", momentum: float = 0.0, lr: float = 1.0,
                 rtol: float = RTOL, atol: float = ATOL):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self._np = lambda t: t.detach().to(torch.float64).cpu().numpy()  # noqa: E731
        self.theta_train = self._np(theta_train)
        self.theta_test_train = self._np(theta_test_train)
        self.y_train = self._np(y_train)
        self.device = y_train.device
        self.loss, self.momentum, self.lr = loss, float(momentum), float(lr)
        self.rtol, self.atol = rtol, atol
        self.f0_train: Optional[np.ndarray] = None
        self.f0_test: Optional[np.ndarray] = None
        self.evaluations = 0  # right-hand-side calls, for the tests

    def set_initial(self, f0_train: Tensor, f0_test: Tensor) -> None:
        """The network's outputs at initialization (the kernel model starts where it does)."""
        self.f0_train, self.f0_test = self._np(f0_train), self._np(f0_test)
        self._time = 0.0
        self._state = self._initial_state()

    # -------------------------------------------------------------------- the ODE
    def _g(self, G: np.ndarray) -> np.ndarray:
        return loss_gradient(self.loss, self.f0_train - self.theta_train @ G, self.y_train)

    def _initial_state(self) -> np.ndarray:
        zero = np.zeros_like(self.f0_train)
        if self.momentum == 0.0:
            return zero.ravel()
        return np.concatenate([zero.ravel(), (self._g(zero) / (1.0 + self.momentum)).ravel()])

    def _rhs(self, _t: float, state: np.ndarray) -> np.ndarray:
        self.evaluations += 1
        size = self.f0_train.size
        G = state[:size].reshape(self.f0_train.shape)
        g = self._g(G).ravel()
        if self.momentum == 0.0:
            return g
        velocity = state[size:]
        inertia = self.lr * (1.0 + self.momentum) / 2.0
        return np.concatenate([velocity, (g - (1.0 - self.momentum) * velocity) / inertia])

    def _advance(self, t: float) -> None:
        if t < self._time:
            self._time, self._state = 0.0, self._initial_state()
        if t == self._time:
            return
        sol = solve_ivp(self._rhs, (self._time, t), self._state, method="DOP853",
                        rtol=self.rtol, atol=self.atol)
        if not sol.success:
            raise RuntimeError(f"kernel flow integration failed at t={t}: {sol.message}")
        self._time, self._state = t, sol.y[:, -1]

    def at(self, t: float) -> tuple[Tensor, Tensor]:
        """(f_t(X) (N, O), f_t(x*) (M, O)) in float64 on the targets' device."""
        if self.f0_train is None:
            raise RuntimeError("KernelFlow.at needs set_initial(f0_train, f0_test) first")
        self._advance(float(t))
        G = self._state[: self.f0_train.size].reshape(self.f0_train.shape)
        train = self.f0_train - self.theta_train @ G
        test = self.f0_test - self.theta_test_train @ G
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64, device=self.device)  # noqa: E731
        return as_tensor(train), as_tensor(test)
