"""The 1/n corrections to the NNGP of a finite-width residual MLP at initialization.

The residual MLP of :class:`ntk_lab.models.ResMLP` (``ntk`` parameterization, width n, β the
branch scale, W, b ~ N(0, 1)):

    h¹ = σ_w W⁰x/√d + σ_b b⁰,   h^{m+1} = h^m + β·u^m,   u^m = σ_w W^m φ(h^m)/√n + σ_b b^m,

m = 1…L, and the readout reads φ(h^{L+1}). Given the layers below, the n units of u^m are
i.i.d. N(0, Ĝ^m) with Ĝ^m = σ_b² + σ_w²(1/n)Σ_j φ(h^m_j)φ(h^m_j)ᵀ (a 2 × 2 matrix on a pair of
inputs, as the state (Ĝ11, Ĝ12, Ĝ22)); the empirical NNGP is Ĝ^{L+1}. Unlike an MLP's units, a
unit here persists along the skip path: h^k_j = h^m_j + (the increments of layers m…k−1), so the
layer averages Ĝ^m and Ĝ^k share their units' noise. At infinite width a unit's trajectory is
Gaussian, h^1 ~ N(0, K^1 = Σ¹), with independent increments u^m ~ N(0, G^m), G^m = F(K^m),
K^{m+1} = K^m + β²G^m, F(k) = σ_b² + E_{N(0,k)}[ψ], ψ(y) = σ_w²(φ(y1)², φ(y1)φ(y2), φ(y2)²).

First order (the variance). Ĝ is a smooth functional of the units' empirical measure; its
fluctuation is the mean of the units' influence functions (von Mises expansion):

    IF_k = e_k + β² J_k R_k,   R_k = Σ_{m<k} IF_m,   e_k = ψ(h^k) − E ψ(h^k),   J_k = ∂F/∂k at K^k,

so n·Cov[Ĝ^{L+1}] → Cov[IF_{L+1}], from the unit covariances Cov[e_k, e_m] across layers. For
m ≤ k, h^k = h^m + Δ with Δ ~ N(0, K^k − K^m) independent of h^{≤m}, so

    Cov[e_k, e_m] = E_{y~N(0,K^m)}[ψ̃_{k|m}(y) (ψ(y) − E ψ)ᵀ],   ψ̃_{k|m}(y) = E_Δ[ψ(y + Δ)].

Second order (the mean), E[Ĝ^k] = G^k + m_k/n + O(1/n²). A unit's own ψ(h^k_j) is evaluated
under the layer averages Ĝ^{<k} = G + (the others' fluctuation, mean m/n, covariance
n·Cov[R_k]) + (its own influence, IF(ω_j)/n). Expanding to second order,

    m_k = β² J_k Σ_{m<k} m_m + ½ β⁴ H_k : Cov[R_k] + ½ β² Σ_{m<k} E⟨∇²ψ(h^k), IF_m⟩,

with H_k = ∂²F/∂k² at K^k. The last (self) term is the unit's own influence on the layer
averages it later reads. It comes from Stein's lemma on the increment u^m_j = (Ĝ^m)^{1/2}ξ_j,
independent of IF_m(ω_j); ⟨A, X⟩ = Σ_ab A_ab X_ab pairs a Hessian in y with the 2 × 2
matrix of IF_m. By the same independence of increments, E[∇²ψ(h^k)·e_{m'}] for m' ≤ m equals
E_{y~N(0,K^{m'})}[∇²ψ̃_{k|m'}(y) e_{m'}(y)], and ∇²ψ̃ = E_Δ[ψ(y + Δ) D^{−1/2}(zzᵀ − I)D^{−1/2}],
Δ = D^{1/2}z, D = K^k − K^{m'} (Gaussian integration by parts). m_1 = 0 (h¹ is exactly
Gaussian), and as β → 0 the results tend to the one-hidden-layer MLP's (m = 0, V = σ_w⁴C(Σ¹)).

The nested expectations use a tensor Gauss–Hermite rule of ``NODES`` per axis in y and in z
(symmetric square roots, so that swapping the inputs mirrors the rule): ~1e-6 relative for
smooth activations, ~3e-4 for relu (its kinks), far below the Monte-Carlo precision any check
reaches (~1%). Same-layer covariances use the exact
:func:`ntk_lab.kernels.finite_width.fourth_moment_covariance`.

This is the forward (NNGP) part. The NTK's corrections, which also need the backward pass's
reuse of the W^m, build on the same rule: :mod:`ntk_lab.kernels.finite_width_residual_ntk`
(V_Θ) and :mod:`ntk_lab.kernels.finite_width_residual_mean` (Θ^(1)).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ntk_lab.kernels.finite_width import (
    _hermite_rule, _jacobian_hessian, checked_inputs, fourth_moment_covariance, pairwise,
    symmetric_root_nodes,
)
from ntk_lab.layers.activations import Activation, get_activation

NODES = 40
"""Gauss–Hermite nodes per axis of the outer (y) and the inner (z) rule: 40⁴ = 2.6M points
per pair and layer pair. Against 56 nodes (erf and relu, depth 2, β = 0.7, relative to the
largest entry): erf's mean 1e-6 and variance 3e-8, relu's 2.5e-4 and 1e-5 (its kinks). The
mean converges the slower: its Hessian weight z² − 1 reaches into the tails."""


def _components(act: Activation, u: Tensor, v: Optional[Tensor], w2: float, statistic: str) -> list:
    """A unit's statistic on a grid, as a list of tensors shaped like u, for a pair (u, v) or
    the 1-D state (v None):

    ``nngp``: ψ = σ_w²(φ(u)², φ(u)φ(v), φ(v)²), or σ_w²φ(u)²;
    ``ntk``: ψ and φ'(u)φ'(v);
    ``slopes``: (φ'(u)², φ'(v)², φ'(u)φ'(v)), or φ'(u)²;
    ``derivatives``: φ'(u)φ'(v) alone;
    ``ell``: (φ'(u)φ(u), φ'(u)φ(v), φ'(v)φ(u), φ'(v)φ(v)), or φ'(u)φ(u): the products that carry
    a unit's first-order share of the NTK entries of its neighbours."""
    du = act.derivative(u).to(torch.float64) if statistic != "nngp" else None
    dv = du if v is None or du is None else act.derivative(v).to(torch.float64)
    if statistic == "slopes":
        return [du * du] if v is None else [du * du, dv * dv, du * dv]
    if statistic == "derivatives":
        return [du * dv]
    fu = act.fn(u).to(torch.float64)
    fv = fu if v is None else act.fn(v).to(torch.float64)
    if statistic == "ell":
        return [du * fu] if v is None else [du * fu, du * fv, dv * fu, dv * fv]
    parts = [w2 * fu * fu] if v is None else [w2 * fu * fu, w2 * fu * fv, w2 * fv * fv]
    return parts + [du * dv] if statistic == "ntk" else parts


def _psi(act: Activation, u: Tensor, v: Optional[Tensor], w2: float, statistic: str = "nngp") -> Tensor:
    """:func:`_components` stacked on a last axis."""
    return torch.stack(_components(act, u, v, w2, statistic), dim=-1)


def _sqrt_and_inverse(k: Tensor):
    """Symmetric square root of the 2 × 2 states k (P, 3) as (a, b, c) and its inverse's."""
    s = torch.sqrt((k[:, 0] * k[:, 2] - k[:, 1] ** 2).clamp_min(1e-300))
    t = torch.sqrt(k[:, 0] + k[:, 2] + 2.0 * s)
    a, b, c = (k[:, 0] + s) / t, k[:, 1] / t, (k[:, 2] + s) / t
    det = a * c - b * b
    return (a, b, c), (c / det, -b / det, a / det)


ONE_D_NODES = 200
"""Nodes per axis of the nested rule for an input with itself (the 1-D state), whatever ``nodes``
asks: its rule has only nodes² points, and relu's kinks converge slowly there (a depth-1
diagonal entry of the NTK variance: 0.19 % high at 40 nodes, 1e-5 relative of 250 at 200)."""
_OUTER_BLOCK = 128
"""Outer nodes per block of the nested rule: 128 × 40² inner points, ~1.6 MB a component."""


def nested_moments(act: Activation, k_outer: Tensor, k_inc: Tensor, w2: float, nodes: int, inner: str,
                   outer: Optional[str] = None, centred: bool = True, orders=(0,)) -> Dict[int, Tensor]:
    """Moments of one unit's statistics at two layers. For its state y ~ N(0, k_outer) at the
    earlier layer and its later increment Δ ~ N(0, k_inc), independent of y (states (P, D),
    D = 3 or 1), with ψ = ``inner`` at the later layer and o = ``outer`` (default ``inner``) at
    the earlier one (:func:`_components`; centred o − E o unless ``centred`` is False):

        order 0  (P, I, C):     E[ψ̃_i(y) o_c(y)],          ψ̃(y) = E_Δ ψ(y + Δ)
        order 1  (P, I, R, C):  E[∂_r ψ̃_i(y) o_c(y)],      r over the inputs (R = 2, or 1 in 1-D)
        order 2  (P, I, H, C):  E[∂²ψ̃_i(y)_h o_c(y)],      h over (11, 12, 22) (H = 3, or 1)

    The derivatives of the smoothed ψ̃ come by Gaussian integration by parts in Δ = D^{1/2}z:
    ∇ψ̃ = E[ψ(y + Δ) D^{-1/2}z] and ∇²ψ̃ = E[ψ(y + Δ) D^{-1/2}(zzᵀ − I)D^{-1/2}], so kinked
    activations need no derivative beyond φ'. Returns {order: tensor} for the ``orders`` asked.
    """
    dim = k_outer.shape[1]
    z, w = _hermite_rule(max(nodes, ONE_D_NODES) if dim == 1 else nodes)
    results = {order: [] for order in orders}
    for p in range(k_outer.shape[0]):  # one pair at a time: nodes⁴ points
        ko, ki = k_outer[p:p + 1], k_inc[p:p + 1]
        if dim == 1:
            root = torch.sqrt(ki[0, 0])
            weight = {0: w[:, None], 1: (w * z / root)[:, None], 2: (w * (z * z - 1.0) / ki[0, 0])[:, None]}
            outer_u, outer_v = torch.sqrt(ko[0, 0]) * z, None
            inner_u, inner_v, outer_w = root * z, None, w
        else:
            u, v = symmetric_root_nodes(ko[:, 0], ko[:, 1], ko[:, 2], z)   # (1, M, M)
            du, dv = symmetric_root_nodes(ki[:, 0], ki[:, 1], ki[:, 2], z)
            (_, _, _), (ia, ib, ic) = _sqrt_and_inverse(ki)
            # D^{-1/2} z for every inner node, then the IBP matrix D^{-1/2}(zzᵀ − I)D^{-1/2}
            z1, z2 = z[:, None].expand(-1, len(z)), z[None, :].expand(len(z), -1)
            g1, g2 = (ia * z1 + ib * z2).flatten(), (ib * z1 + ic * z2).flatten()
            inv11, inv12, inv22 = ia * ia + ib * ib, ia * ib + ib * ic, ib * ib + ic * ic  # D^-1
            outer_w = (w[:, None] * w[None, :]).flatten()                           # (M²,)
            weight = {0: outer_w[:, None], 1: outer_w[:, None] * torch.stack([g1, g2], 1),
                      2: outer_w[:, None] * torch.stack([g1 * g1 - inv11, g1 * g2 - inv12, g2 * g2 - inv22], 1)}
            outer_u, outer_v, inner_u, inner_v = u[0].flatten(), v[0].flatten(), du[0].flatten(), dv[0].flatten()
        columns = torch.cat([weight[order] for order in orders], dim=1)              # (M'², Σ widths)
        o = _psi(act, outer_u, outer_v, w2, outer or inner)                          # (M², C)
        paired = (o - outer_w @ o if centred else o) * outer_w[:, None]
        total = 0.0
        for start in range(0, len(outer_u), _OUTER_BLOCK):  # bounded blocks of the M² × M'² grid
            stop = start + _OUTER_BLOCK
            block = _components(act, outer_u[start:stop, None] + inner_u,
                                None if outer_v is None else outer_v[start:stop, None] + inner_v, w2, inner)
            smoothed = torch.stack([c @ columns for c in block], dim=1)              # (B, I, Σ widths)
            total = total + torch.einsum("bik,bc->ikc", smoothed, paired[start:stop])
        at = 0
        for order in orders:
            width = weight[order].shape[1]
            got = total[:, at:at + width]
            results[order].append((got[:, 0] if order == 0 else got)[None])
            at += width
    return {order: torch.cat(parts) for order, parts in results.items()}


def _cross_moments(act: Activation, k_outer: Tensor, k_inc: Tensor, w2: float, nodes: int,
                   statistic: str = "nngp", centred: bool = True, hessian: bool = True):
    """(cov, hess) of one statistic at two layers (:func:`nested_moments`, the same statistic
    inside and out): cov (P, D, D) = E[ψ̃(y)(ψ(y) − E ψ)ᵀ], hess (P, D, H, D) its Hessian moments
    E[∇²ψ̃(y)_h (ψ(y) − E ψ)_c] (None unless ``hessian``); with ``centred`` False the outer
    factor is ψ(y) itself."""
    got = nested_moments(act, k_outer, k_inc, w2, nodes, statistic, None, centred, (0, 2) if hessian else (0,))
    return got[0], got.get(2)


def _pair_with_matrix(hess: Tensor, coef: Tensor) -> Tensor:
    """Σ_c Σ_ab hess[p, i, ab, c] X_ab for X = mat(coef[p] e) summed over e's components:
    ⟨∇²ψ̃_i, mat(coef·e)⟩ with the off-diagonal Hessian entry counted twice. hess (P, D, H, D),
    coef (P, D, D) mapping e to the state X."""
    dim = coef.shape[1]
    pair_weight = coef.new_tensor([1.0, 2.0, 1.0] if dim == 3 else [1.0])
    # E[⟨∇²ψ̃_i, mat(X)⟩] = Σ_h weight_h Σ_c hess[i, h, c] coef[h, c]
    return torch.einsum("pihc,phc,h->pi", hess, coef, pair_weight)


def _propagate_residual(act: Activation, k1: Tensor, depth: int, w2: float, b2: float, beta: float,
                        nodes: int):
    """(G^{L+1}, m_{L+1}, Cov[IF_{L+1}]) for states k1 = Σ¹, (P, D)."""
    p, dim = k1.shape
    beta2 = beta * beta
    k = [k1]
    maps = []
    for _ in range(depth + 1):  # G^m, J_m, H_m for m = 1..L+1
        maps.append(_jacobian_hessian(act, k[-1], w2, b2))
        if len(k) <= depth:
            k.append(k[-1] + beta2 * maps[-1][0])
    layers = depth + 1
    eye = torch.eye(dim, dtype=torch.float64).expand(p, dim, dim)
    # cov_e[(k, m)] = Cov[e_k, e_m] (P, D, D) for m ≤ k; q[(k, m)] the Hessian moments, m < k
    cov_e, q = {}, {}
    for a in range(layers):
        cov_e[(a, a)] = w2 * w2 * fourth_moment_covariance(act, k[a])
        for c in range(a):
            cov_e[(a, c)], q[(a, c)] = _cross_moments(act, k[c], k[a] - k[c], w2, nodes)

    def cov(a: int, c: int) -> Tensor:
        return cov_e[(a, c)] if a >= c else cov_e[(c, a)].transpose(1, 2)

    # IF_a = Σ_c inf[a][c] e_c, R_a = Σ_c run[c] e_c (R_a = Σ_{b<a} IF_b)
    run = [torch.zeros_like(eye) for _ in range(layers)]
    means = []
    for a in range(layers):
        _, jac, hess = maps[a]
        cov_r = sum(run[c] @ cov(c, d) @ run[d].transpose(1, 2) for c in range(a) for d in range(a)) \
            if a else torch.zeros_like(eye)
        mean = beta2 * torch.einsum("pij,pj->pi", jac, sum(means)) if means else k1.new_zeros(p, dim)
        mean = mean + 0.5 * beta2 * beta2 * torch.einsum("piab,pab->pi", hess, cov_r)
        for c in range(a):
            mean = mean + 0.5 * beta2 * _pair_with_matrix(q[(a, c)], run[c])
        means.append(mean)
        influence = [beta2 * jac @ run[c] for c in range(layers)]
        influence[a] = influence[a] + eye
        if a == layers - 1:
            variance = sum(influence[c] @ cov(c, d) @ influence[d].transpose(1, 2)
                           for c in range(layers) for d in range(layers))
            return maps[a][0], mean, variance
        run = [run[c] + influence[c] for c in range(layers)]


def residual_arguments(x1: Tensor, x2: Optional[Tensor], activation, depth, w_std, b_std, branch_scale):
    """(activation, x1, x2 or None for a symmetric call, σ_w², σ_b², β) after the input checks:
    the common front of the residual MLP's correction functions."""
    symmetric = x2 is None
    x1, x2 = checked_inputs(x1, x2, depth)
    return (get_activation(activation), x1, None if symmetric else x2, float(w_std) ** 2,
            float(b_std) ** 2, float(branch_scale))


def resmlp_nngp_corrections(x1: Tensor, x2: Optional[Tensor] = None, *, activation: str | Activation = "relu",
                            depth: int, w_std: float = 1.0, b_std: float = 0.0, branch_scale: float = 1.0,
                            nodes: int = NODES) -> Dict[str, Tensor]:
    """The O(1/n) mean and the variance of the width-n residual MLP's NNGP at initialization.

    E[Ĝ(x, x')] = Σ_∞(x, x') + m(x, x')/n + O(1/n²) and n·Var[Ĝ(x, x')] → V(x, x') for the
    empirical NNGP Ĝ = σ_b² + σ_w² (1/n) Σ_j φ(h_j(x)) φ(h_j(x')) of the readout's input
    (module docstring).

    Args:
        x1: (N1, d); x2: (N2, d) or None for x1.
        activation: a name or :class:`Activation` (relu, erf, gelu, tanh, …).
        depth: residual blocks L (≥ 1); w_std, b_std: σ_w, σ_b; branch_scale: β.
        nodes: Gauss–Hermite nodes per axis of the nested rule.

    Returns:
        dict of float64 (N1, N2): ``nngp`` (Σ_∞), ``nngp_mean_correction`` (m), ``nngp_variance`` (V).
        Cost ~ depth² · nodes⁴ per distinct pair: meant for a few dozen points.

    Raises:
        ValueError: depth < 1, mismatched inputs, or a non-finite result.
    """
    act, x1, x2, w2, b2, beta = residual_arguments(x1, x2, activation, depth, w_std, b_std, branch_scale)
    nngp, mean, var = pairwise(x1, x2, w2, b2,
                               lambda k: _propagate_residual(act, k, depth, w2, b2, beta, nodes))
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise ValueError("non-finite 1/n correction of the residual MLP's NNGP (inputs parallel at some layer?)")
    return {"nngp": nngp, "nngp_mean_correction": mean, "nngp_variance": var}
