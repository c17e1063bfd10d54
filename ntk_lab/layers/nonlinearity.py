"""The elementwise nonlinearity: finite module and kernel map (no parameters, no factors).

(a) ``Nonlinearity``: h = φ(z), φ from :mod:`ntk_lab.layers.activations`.
(b) kernel map (docs/conventions.md), pairwise on every position pair the state holds:
        (u, v) ~ N(0, [[var1, Σ], [Σ, var2]]),
        Σ_out = E[φ(u) φ(v)],   Θ_out = E[φ'(u) φ'(v)] · Θ_in,   var_out = E[φ(u)²],
    the expectations from :mod:`ntk_lab.layers.gaussian` — the closed-form dual when the
    activation has one, else the Hermite series — the one code path for every activation.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ntk_lab.layers import fused_pairs
from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.layers.gaussian import gaussian_expectations, gaussian_moments
from ntk_lab.layers.state import KernelState


class Nonlinearity(nn.Module):
    """h = φ(z), elementwise; any shape.

    Args:
        activation: a name of :mod:`ntk_lab.layers.activations` or an :class:`Activation`.
        quadrature_degree: Hermite degree for activations without a closed form (None: chosen
            to meet ``SERIES_TOL``).
    """

    def __init__(self, activation: str | Activation, quadrature_degree: Optional[int] = None):
        super().__init__()
        self.activation = get_activation(activation)
        self.quadrature_degree = quadrature_degree

    def forward(self, z: Tensor) -> Tensor:
        return self.activation.fn(z)

    def kernel_map(self, state: KernelState) -> KernelState:
        q1, q2 = state.broadcast_vars()
        fused = None
        if state.fused and state.full and self.activation.name == "relu" and state.nngp.device.type == "cpu":
            fused = fused_pairs.relu_pair_map(q1, state.nngp, q2, state.ntk)
        if fused is not None:
            e_phi, ntk = fused
        else:
            e_phi, e_dphi = gaussian_expectations(self.activation, q1, state.nngp, q2,
                                                  degree=self.quadrature_degree)
            ntk = e_dphi.mul_(state.ntk)
        return state.replace(nngp=e_phi, ntk=ntk,
                             var1=gaussian_moments(self.activation, state.var1)[0],
                             var2=gaussian_moments(self.activation, state.var2)[0],
                             **state.map_self_covariances(self._self_map))

    def _self_map(self, cov: Tensor, _which: int) -> Tensor:
        """E[φ(u_t) φ(u_t')] over one input's own (T, T) token covariance (n, T, T)."""
        var = cov.diagonal(dim1=-2, dim2=-1)
        return gaussian_expectations(self.activation, var.unsqueeze(-1), cov, var.unsqueeze(-2),
                                     degree=self.quadrature_degree)[0]

    def extra_repr(self) -> str:
        return self.activation.name
