"""The dense (fully connected) layer: finite module, kernel map, structured-NTK factors.

(a) ``Dense``: z = m_W · h Wᵀ + m_b · b with W (out, in), b (out,) ~ N(0, init_std²) and the
    four numbers of :func:`~ntk_lab.layers.scales.layer_scales`.
(b) kernel map on vectors (Lee et al. 2018; Jacot et al. 2018), with the coefficients of
    :func:`~ntk_lab.layers.scales.kernel_coefficients`:
        Σ_out = v_w·Σ_in + v_b,   Θ_out = g_w·Σ_in + g_b + v_w·Θ_in,   var likewise as Σ;
    on token sequences (N, T, C) the layer acts on every token alike, so the same map holds
    for every pair of tokens (and for the inputs' own (T, T) covariances).
(c) structured factors: u = h (one position), δ = ∂f/∂z — for ``Dense`` and ``torch.nn.Linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers.factors import AffineFactors, register_factors
from ntk_lab.layers.scales import KernelCoefficients, LayerScales, kernel_coefficients, layer_scales
from ntk_lab.layers.state import KernelState


class Dense(nn.Module):
    """z = weight_multiplier · h Wᵀ + bias_multiplier · b.

    Args:
        in_features, out_features: fan_in and the number of units.
        scales: init stds and multipliers (:func:`~ntk_lab.layers.scales.layer_scales`).
        coefficients: the kernel-map coefficients; None for a layer used only as a finite
            module (its ``kernel_map`` then raises).
        bias: whether the layer has a bias (its coefficients' v_b, g_b must then be 0).

    Shapes: input (N, in_features) -> output (N, out_features); (N, T, in_features) ->
    (N, T, out_features), per token.
    """

    def __init__(self, in_features: int, out_features: int, scales: LayerScales,
                 coefficients: Optional[KernelCoefficients] = None, *, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scales = scales
        self.coefficients = coefficients
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:  # attention's key, query and value maps have none
            self.register_parameter("bias", None)

    @property
    def weight_multiplier(self) -> float:
        return self.scales.weight_multiplier

    @property
    def bias_multiplier(self) -> float:
        return self.scales.bias_multiplier

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0, generator=generator).mul_(self.scales.weight_init_std)
            if self.bias is not None:
                self.bias.normal_(0.0, 1.0, generator=generator).mul_(self.scales.bias_init_std)

    def forward(self, h: Tensor) -> Tensor:
        z = (h @ self.weight.T) * self.scales.weight_multiplier
        return z if self.bias is None else z + self.bias * self.scales.bias_multiplier

    def kernel_map(self, state: KernelState) -> KernelState:
        """Σ_out = v_w Σ + v_b, Θ_out = g_w Σ + g_b + v_w Θ on a vector state (N1, N2)."""
        c = _require_coefficients(self)
        if not (state.is_vector or state.channels_last):
            raise ValueError("a dense layer needs vector inputs: flatten or pool feature maps first")
        affine = lambda k, _=None: None if k is None else c.v_w * k + c.v_b  # noqa: E731
        return state.replace(
            nngp=affine(state.nngp),
            ntk=c.g_w * state.nngp + c.g_b + c.v_w * state.ntk,
            var1=affine(state.var1), var2=affine(state.var2), **state.map_self_covariances(affine),
        )

    def extra_repr(self) -> str:
        s = self.scales
        return (f"{self.in_features} -> {self.out_features}, W_mult={s.weight_multiplier:.4g}, "
                f"b_mult={s.bias_multiplier:.4g}")


def scaled_dense(fan_in: int, units: int, kind: str, *, parameterization: str, width: int,
                 w_std: float, b_std: float) -> Dense:
    """A Dense layer of role ``kind`` (input / hidden / output) with its parameterization's
    scales and kernel coefficients, as every built-in network builds its dense layers."""
    return Dense(fan_in, units, layer_scales(parameterization, kind, fan_in, width, w_std, b_std),
                 kernel_coefficients(parameterization, fan_in, w_std, b_std))


def _require_coefficients(layer: nn.Module) -> KernelCoefficients:
    if layer.coefficients is None:
        raise ValueError(f"{type(layer).__name__} was built without kernel coefficients "
                         f"(no infinite-width map)")
    return layer.coefficients


@register_factors(Dense, nn.Linear)
def dense_factors(module: nn.Module, h: Tensor, delta: Tensor) -> AffineFactors:
    """u = h as (N, P, in) and δ as (N, O, P, out); P > 1 only when the input has extra dims
    (nn.Linear acts on the last dim), whose positions then share the weights."""
    n, out = h.shape[0], delta.shape[1]
    if isinstance(module, Dense):
        m_w, m_b = module.weight_multiplier, (module.bias_multiplier if module.bias is not None else None)
    else:
        m_w, m_b = 1.0, (1.0 if module.bias is not None else None)
    return AffineFactors(h.reshape(n, -1, h.shape[-1]), delta.reshape(n, out, -1, delta.shape[-1]),
                         m_w, m_b, "weight", "bias" if m_b is not None else None)
