"""Layer normalization over channels: finite module and kernel map.

(a) ``LayerNorm``: for each sample and token, h ↦ (h − mean_c h) / √(var_c h + ε), over the
    last (channel) axis; no trainable parameters by default. ``affine=True`` adds a per-channel
    gain (init 1) and bias (init 0), which the empirical NTK counts.
(b) kernel map (neural-tangents ``stax.LayerNorm(axis=-1)``, ε = 1e-12): in the
    infinite-width limit the channel mean is 0 and the channel variance is the input's
    variance q(x, t), so for every pair of tokens

        Σ_out(x, t; x', t') = Σ(x, t; x', t') / √((q(x, t) + ε)(q(x', t') + ε)),   Θ likewise,

    and the inputs' own (T, T) covariances likewise. With ``affine=True`` the gain's gradient
    adds a term of its own to Θ, which this map does not derive: it raises
    :class:`~ntk_lab.layers.state.NoClosedForm` (Θ_∞ is then NaN with the reason, or a
    Monte-Carlo estimate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ntk_lab.layers.state import KernelState, NoClosedForm

EPS = 1e-12
"""ε of the normalization, neural-tangents' default, in the module and in the kernel map."""


class LayerNorm(nn.Module):
    """(h − mean) / √(var + ε) over the last axis; (N, …, C) -> (N, …, C).

    Args:
        features: C (the channels normalized over).
        affine: add a trained per-channel gain and bias (no closed-form Θ_∞).
    """

    channels_last = True

    def __init__(self, features: int, *, affine: bool = False):
        super().__init__()
        self.features, self.affine = int(features), bool(affine)
        if affine:
            self.weight = nn.Parameter(torch.ones(self.features))
            self.bias = nn.Parameter(torch.zeros(self.features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self, generator=None) -> None:
        if self.affine:
            with torch.no_grad():
                self.weight.fill_(1.0)
                self.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        return F.layer_norm(h, (self.features,), self.weight, self.bias, EPS)

    def kernel_map(self, state: KernelState) -> KernelState:
        """Σ and Θ divided by √((q₁ + ε)(q₂ + ε)) pair by pair; the variances become q/(q + ε)."""
        if self.affine:
            raise NoClosedForm("LayerNorm(affine=True): the trained gain's contribution to Θ_∞ "
                               "has no closed form here")
        q1, q2 = state.broadcast_vars()
        scale = torch.rsqrt((q1 + EPS) * (q2 + EPS))

        def own(cov: Tensor, _which: int) -> Tensor:
            var = cov.diagonal(dim1=-2, dim2=-1) + EPS
            return cov * torch.rsqrt(var.unsqueeze(-1) * var.unsqueeze(-2))

        norm = lambda v: None if v is None else v / (v + EPS)  # noqa: E731
        return state.replace(nngp=state.nngp * scale, ntk=state.ntk * scale,
                             var1=norm(state.var1), var2=norm(state.var2),
                             **state.map_self_covariances(own))

    def extra_repr(self) -> str:
        return f"{self.features}, affine={self.affine}"
