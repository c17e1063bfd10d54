"""The linearized network f_lin(x; θ) = f(x; θ₀) + J(θ₀)(θ − θ₀) (Lee et al. 2019), trained by
the same gradient descent as the network, on the same batches.

Forward: ``torch.func.jvp`` of f at θ₀ along θ − θ₀. Gradient of the MSE loss: ``vjp`` of f at
θ₀ with the residual, J(θ₀)ᵀ (f_lin − y)/N — the linear model's exact gradient, no graph kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp

from ntk_lab.kernels._common import functional_forward, split_parameters


class LinearizedModel:
    """First-order Taylor model of ``model`` around its current (initial) parameters.

    Attributes:
        params_0: θ₀ (detached copies). delta: θ − θ₀, starts at 0.
    """

    def __init__(self, model: nn.Module):
        params, fixed = split_parameters(model)
        self.params_0 = {k: v.clone() for k, v in params.items()}
        self.delta = {k: torch.zeros_like(v) for k, v in params.items()}
        self._f = functional_forward(model, {k: v.clone() for k, v in fixed.items()})

    def __call__(self, x: Tensor) -> Tensor:
        """f_lin(x) (N, O) for x (N, …)."""
        with torch.no_grad():
            out, tangent = jvp(lambda p: self._f(p, x), (self.params_0,), (self.delta,))
        return out + tangent

    def step(self, x: Tensor, y: Tensor, lr: float, loss_scale: float = 1.0) -> float:
        """One gradient step on loss_scale · 1/(2N) Σ‖f_lin(x_i) − y_i‖²; returns that loss."""
        with torch.no_grad():
            residual = self(x) - y
            loss = 0.5 * residual.pow(2).sum().item() / len(x) * loss_scale
            _, pullback = vjp(lambda p: self._f(p, x), self.params_0)
            (grad,) = pullback(residual * (loss_scale / len(x)))
            for k in self.delta:
                self.delta[k].sub_(grad[k], alpha=lr)
        return loss

    def parameters_now(self) -> dict[str, Tensor]:
        """θ_lin = θ₀ + delta."""
        return {k: self.params_0[k] + self.delta[k] for k in self.params_0}
