"""Structured empirical NTK of the MLP: the per-layer factorization of a dense layer's Jacobian.

For a dense layer z = m_W·W h + m_b·b and δ_o = ∂f_o/∂z, the gradient w.r.t. W is
m_W·δ_o hᵀ, so the layer adds

    m_W²·(h(x)·h(x'))·(δ_o(x)·δ_p(x')) + m_b²·(δ_o(x)·δ_p(x'))

to Θ_op(x, x') (Novak, Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width Neural Tangent
Kernel", structured derivatives). The cost is one forward pass, O backward passes done as one
batched product per layer, and N1·N2·O²·Σ widths for the Gram matrices — no N·O×P Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ntk_lab.kernels._common import chunk_size, chunks, empty_kernel
from ntk_lab.models import MLP


@dataclass
class LayerFeatures:
    """What one layer contributes: its input h (N, fan_in) and δ = ∂f/∂z (N, O, fan_out)."""

    h: Tensor
    delta: Tensor
    weight_multiplier: float
    bias_multiplier: float


def mlp_features(mlp: MLP, x: Tensor) -> list[LayerFeatures]:
    """Forward and O-output backward pass of ``mlp`` on x (N, d), by hand.

    δ^{L+1} = I_O; δ^l = (δ^{l+1} W_eff^{l+1}) ⊙ φ'(z^l), W_eff = m_W·W.
    """
    with torch.no_grad():
        inputs, preacts = [], []
        h = x
        for layer in mlp.layers[:-1]:
            inputs.append(h)
            z = layer(h)
            preacts.append(z)
            h = mlp.activation.fn(z)
        inputs.append(h)
        n = x.shape[0]
        out_dim = mlp.layers[-1].out_features
        delta = torch.eye(out_dim, dtype=x.dtype, device=x.device).expand(n, out_dim, out_dim)
        deltas = [delta]
        for i in range(len(mlp.layers) - 1, 0, -1):
            layer = mlp.layers[i]
            # (δ W)·m_W rather than δ (m_W W): no weight-sized temporary at large width
            slope = mlp.activation.derivative(preacts[i - 1]) * layer.weight_multiplier
            delta = (delta @ layer.weight) * slope.unsqueeze(1)
            deltas.append(delta)
        deltas.reverse()
        return [
            LayerFeatures(h_in, d, layer.weight_multiplier, layer.bias_multiplier)
            for h_in, d, layer in zip(inputs, deltas, mlp.layers)
        ]


def kernel_from_features(f1: list[LayerFeatures], f2: list[LayerFeatures], mode: str) -> Tensor:
    """Σ_l (m_W² h1·h2 + m_b²) · (δ1 · δ2), reduced to ``mode``."""
    total = None
    for a, b in zip(f1, f2):
        coef = a.weight_multiplier**2 * (a.h @ b.h.T) + a.bias_multiplier**2  # (N1, N2)
        if mode == "trace":
            n1, o, k = a.delta.shape
            dd = a.delta.reshape(n1, o * k) @ b.delta.reshape(b.delta.shape[0], o * k).T / o
        elif mode == "diagonal":
            dd = torch.einsum("aok,bok->abo", a.delta, b.delta)
            coef = coef.unsqueeze(-1)
        else:
            dd = torch.einsum("aok,bpk->abop", a.delta, b.delta)
            coef = coef[..., None, None]
        term = coef * dd
        total = term if total is None else total + term
    return total


def feature_bytes_per_sample(mlp: MLP, itemsize: int) -> int:
    out_dim = mlp.layers[-1].out_features
    return itemsize * sum(l.in_features + out_dim * l.out_features for l in mlp.layers)


def structured_ntk(
    mlp: MLP, x1: Tensor, x2: Tensor | None, mode: str, budget_bytes: int, scale: float = 1.0
) -> Tensor:
    """Θ(x1, x2) of an :class:`MLP` by the layer factorization, times ``scale``² (output α).

    Args:
        mlp: the network.
        x1: (N1, d); x2: (N2, d) or None for x1.
        mode: "trace" (N1, N2), "diagonal" (N1, N2, O) or "full" (N1, N2, O, O).
        budget_bytes: cap on the features held at once; samples are chunked to fit.
        scale: output factor α of a :class:`~ntk_lab.models.ScaledOutput` wrapper.
    """
    same = x2 is None
    x2 = x1 if same else x2
    per_sample = feature_bytes_per_sample(mlp, x1.element_size())
    size = chunk_size(per_sample, budget_bytes // 2, max(len(x1), len(x2)))
    if size >= len(x1) and size >= len(x2):
        f1 = mlp_features(mlp, x1)
        f2 = f1 if same else mlp_features(mlp, x2)
        return kernel_from_features(f1, f2, mode) * scale**2
    out = empty_kernel(len(x1), len(x2), mlp.out_dim, mode, x1)
    for s1 in chunks(len(x1), size):
        f1 = mlp_features(mlp, x1[s1])
        for s2 in chunks(len(x2), size):
            f2 = f1 if (same and s1 == s2) else mlp_features(mlp, x2[s2])
            out[s1, s2] = kernel_from_features(f1, f2, mode)
    return out * scale**2


def structured_jacobian_sq_distance(
    mlp_a: MLP, mlp_b: MLP, x: Tensor, budget_bytes: int, scale: float = 1.0
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) for two MLPs of one architecture on x (N, d).

    J = ∂f/∂θ (N·O × P). Per layer ‖m_W(δ_a⊗h_a − δ_b⊗h_b)‖² expands into Gram products,
    accumulated in float64 so that a small change is not lost to cancellation.
    """
    per_sample = 2 * feature_bytes_per_sample(mlp_a, x.element_size())
    size = chunk_size(per_sample, budget_bytes, len(x))
    dist, norm_b = 0.0, 0.0
    for s in chunks(len(x), size):
        d, n = jacobian_sq_distance_from_features(mlp_features(mlp_a, x[s]), mlp_features(mlp_b, x[s]))
        dist, norm_b = dist + d, norm_b + n
    return max(dist, 0.0) * scale**2, norm_b * scale**2


def jacobian_sq_distance_from_features(
    feats_a: list[LayerFeatures], feats_b: list[LayerFeatures]
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) on the samples the two feature lists were computed on.

    Per sample and layer, ‖m_W(δ_a⊗h_a − δ_b⊗h_b)‖² + ‖m_b(δ_a − δ_b)‖² expands into
    products of per-sample norms and inner products, in float64 so that a small change is not
    lost to cancellation. The result may be slightly negative from round-off; callers clamp.
    """
    dist, norm_b = 0.0, 0.0
    for fa, fb in zip(feats_a, feats_b):
        ha, hb = fa.h.double(), fb.h.double()
        da, db = fa.delta.double(), fb.delta.double()
        m_w2, m_b2 = fa.weight_multiplier**2, fa.bias_multiplier**2
        hh = {"aa": (ha * ha).sum(-1), "bb": (hb * hb).sum(-1), "ab": (ha * hb).sum(-1)}
        dd = {"aa": (da * da).sum((-1, -2)), "bb": (db * db).sum((-1, -2)),
              "ab": (da * db).sum((-1, -2))}
        inner = {k: ((m_w2 * hh[k] + m_b2) * dd[k]).sum().item() for k in hh}
        dist += inner["aa"] + inner["bb"] - 2 * inner["ab"]
        norm_b += inner["bb"]
    return dist, norm_b
