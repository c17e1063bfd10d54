"""‖J_t − J_0‖²_F on the probe set from the structured factors, without forming J.

``jac_change`` = ‖J_t − J_0‖_F / ‖J_0‖_F (J = ∂f/∂θ on the probe inputs): for an affine layer,
‖J_a − J_b‖² = ⟨J_a, J_a⟩ + ⟨J_b, J_b⟩ − 2⟨J_a, J_b⟩, and each inner product is a sum over
samples of the layer's factor inner products — the same contraction as the kernel's diagonal.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ntk_lab.kernels._common import chunk_size, chunks
from ntk_lab.layers.factors import AffineFactors
from ntk_lab.kernels.structured_contraction import _feature_blocks
from ntk_lab.kernels.structured_cost import _out_dim, factor_bytes_per_sample
from ntk_lab.kernels.structured_layers import StructuredLayer, capture_factors, structured_layers


# --------------------------------------------------------------------------- Jacobian change
def structured_jacobian_sq_distance(
    model_a: nn.Module, model_b: nn.Module, x: Tensor, budget_bytes: int,
    jacobian_fn: Callable[[nn.Module, Tensor, list[str]], dict[str, Tensor]],
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) for two models of one architecture on x (N, …).

    J = ∂f/∂θ (N·O × P). For a known layer the per-sample inner products ⟨J_a(x), J_b(x)⟩ are
    Σ_{p,q} (m_W² u_a(p)·u_b(q) + m_b²)(δ_a(p)·δ_b(q)) (a P × P Gram per sample), expanded as
    ‖J_a‖² + ‖J_b‖² − 2⟨J_a, J_b⟩ in float64 so that a small change is not lost to
    cancellation. Other layers: per-sample Jacobians from ``jacobian_fn``, differenced.
    ``model_b`` may be a frozen copy: its parameters are matched to ``model_a``'s by name.
    """
    layers_a = structured_layers(model_a)
    layers_b = _mirror_layers(model_b, layers_a)
    per_sample = 2 * factor_bytes_per_sample(model_a, x) * 2
    size = chunk_size(per_sample, budget_bytes, len(x))
    dist, norm_b = 0.0, 0.0
    for s in chunks(len(x), size):
        fa = capture_factors(model_a, x[s], layers_a)
        fb = capture_factors(model_b, x[s], layers_b)
        for layer, a, b in zip(layers_a, fa, fb):
            if layer.module is None:
                continue
            d, n = jacobian_sq_distance_from_factors([a], [b])
            dist, norm_b = dist + d, norm_b + n
    general = [l.names for l in layers_a if l.module is None]
    if general:
        names = [n for group in general for n in group]
        out_dim = _out_dim(model_a, x)
        numel = sum(dict(model_a.named_parameters())[n].numel() for n in names)
        size = chunk_size(2 * out_dim * numel * x.element_size(), budget_bytes, len(x))
        for s in chunks(len(x), size):
            ja = jacobian_fn(model_a, x[s], names)
            jb = jacobian_fn(model_b, x[s], names)
            for k in ja:
                dist += (ja[k] - jb[k]).double().pow(2).sum().item()
                norm_b += jb[k].double().pow(2).sum().item()
    return max(dist, 0.0), norm_b


def _mirror_layers(model_b: nn.Module, layers_a: list[StructuredLayer]) -> list[StructuredLayer]:
    """model_b's modules at the same names as model_a's layers (model_b's parameters may be
    frozen, so its own parameter_layers would be empty)."""
    modules = dict(model_b.named_modules())
    mirrored = []
    for layer in layers_a:
        prefix = layer.names[0].rpartition(".")[0]
        module = modules[prefix] if layer.module is not None else None
        mirrored.append(StructuredLayer(layer.names, module, layer.weight, layer.bias))
    return mirrored


def jacobian_sq_distance_from_factors(
    factors_a: list[Optional[AffineFactors]], factors_b: list[Optional[AffineFactors]],
    norms_b: Optional[list[float]] = None,
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) over the known layers, on the samples both factor lists
    were captured on: ‖J_a‖² + ‖J_b‖² − 2⟨J_a, J_b⟩ from per-sample inner products, in
    float64. ``norms_b``: the per-layer ‖J_b‖² of :func:`jacobian_sq_norms` when already known
    (a tracker's fixed θ_0). May be slightly negative from round-off; callers clamp."""
    norms_b = jacobian_sq_norms(factors_b) if norms_b is None else norms_b
    dist, norm_b = 0.0, 0.0
    for a, b, bb in zip(factors_a, factors_b, norms_b):
        if a is None:
            continue
        dist += _sample_inner(a, a) + bb - 2 * _sample_inner(a, b)
        norm_b += bb
    return dist, norm_b


def jacobian_sq_norms(factors: list[Optional[AffineFactors]]) -> list[float]:
    """Per layer ‖J‖²_F (float64) on the captured samples; 0 for unknown layers."""
    return [0.0 if f is None else _sample_inner(f, f) for f in factors]


def _sample_inner(a: AffineFactors, b: AffineFactors) -> float:
    """Σ_n Σ_o ⟨J_a(x_n)_o, J_b(x_n)_o⟩ for one layer, in float64."""
    da, db = a.delta.double(), b.delta.double()  # (N, O, P, C)
    m_w2 = a.weight_multiplier ** 2
    m_b2 = a.bias_multiplier ** 2 if a.bias_multiplier is not None else 0.0
    n, p, feat = a.input_shape
    if p == 1:  # dense: the classic expansion
        hh = (a.u[:, 0].double() * b.u[:, 0].double()).sum(-1)
        dd = (da[:, :, 0] * db[:, :, 0]).sum((-1, -2))
        return ((m_w2 * hh + m_b2) * dd).sum().item()
    gu = da.new_zeros(n, p, p)  # Σ_f u_a(p, f) u_b(q, f), one kernel offset's columns at a time
    unit = max(a.feature_unit, b.feature_unit)
    for start, stop in _feature_blocks(feat, unit, unit if unit > 1 else feat):
        gu.baddbmm_(a.columns(start, stop).double(), b.columns(start, stop).double().transpose(1, 2))
    gd = torch.einsum("nopc,noqc->npq", da, db)
    return ((m_w2 * gu + m_b2) * gd).sum().item()
