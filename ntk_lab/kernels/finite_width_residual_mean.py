"""The mean correction of a finite-width residual MLP's NTK at initialization:
E[Θ̂(x, x')] = Θ_∞ + Θ^(1)/n + O(1/n²).

The network, the hidden NTK Θ̂^m_ij and its exact block update are those of
:mod:`ntk_lab.kernels.finite_width_residual_ntk` (width n, β the branch scale, blocks m = 1…L,
readout on h^{L+1}). Write X_a = φ'(h^{L+1}_a(x)) φ'(h^{L+1}_a(x')), T the infinite-width mean
diagonal, B = E[X], and Ĝ^m the empirical NNGP of layer m. The readout's weights are fresh, so

    E[Θ̂] = E[Ĝ^{L+1}_12] + σ_w² E[X_a Θ̂^{L+1}_aa],   Θ̂^{L+1}_aa = Σ¹_12 + Σ_m ΔΘ^m_aa.

**One block, exactly.** Block m's row ξ = W^m_a· of unit a enters ΔΘ^m_aa and u^m_a = σ_w Φᵀξ/√n
+ σ_b b_a (Φ = φ(h^m) on both inputs, n × 2), and X_a sees ξ only through u^m_a. Conditioning the
Gaussian ξ on u^m_a (E[ξ | u] = σ_w Φ Ĝ⁻¹u/√n) gives E[X_a ΔΘ^m_aa] = E[X_a D^m_a] with

    D^m_a = β² Ĝ^m_12 + β² σ_w² Û^m + (βσ_w²/n) ĝ^m_a·Ĝ⁻¹u^m_a
            + (β²σ_w⁴/n) (u^m_aᵀ Ĝ⁻¹ Ĥ^m Ĝ⁻¹ u^m_a − tr Ĝ⁻¹Ĥ^m),

Û^m = (1/n) Σ_c φ'φ'(h^m_c) Θ̂^m_cc, ĝ^m_a(s) = Σ_c φ(h^m_c(s)) [φ'(h^m_c(x)) Θ̂^m_ca + φ'(h^m_c(x')) Θ̂^m_ac]
and Ĥ^m_st = (1/n) Σ_cd φ_c(s) φ'_c(x) Θ̂^m_cd φ'_d(x') φ_d(t). The terms in u^m_a are the residual
block's own: an MLP's layer has no first-order term ĝ (Θ̂ has no skip path there).

**The 1/n coefficient.** With υ_ℓ = n·(E[X^ℓ_a Θ̂^ℓ_aa] − B^ℓ T^ℓ) (X^ℓ, B^ℓ at layer ℓ), m_m the
residual NNGP's mean correction (:mod:`ntk_lab.kernels.finite_width_residual`) and b_ℓ the same
for the statistic φ'φ' (its Hessian ∇²Ḃ and its own self terms),

    υ_ℓ = b_ℓ T^ℓ + Σ_{m<ℓ} { β² B^ℓ (m_m,12 + σ_w² υ_m)
                               + β² Cov[IF^B_ℓ, IF_m,12] + β² σ_w² Cov[IF^B_ℓ, T^m IF^B_m + B^m δT^m]
                               + β² σ_w² E[ĝ^m·∇X(h^ℓ)] + β⁴ σ_w⁴ ⟨H^m, E[∇²X(h^ℓ)]⟩ },
    Θ^(1) = m_{L+1,12} + σ_w² υ_{L+1}.

The covariances are those of one unit's influence functions (n·Cov[X_a, Ẑ] = Cov[IF^B, IF_Z] for
a layer average Ẑ: the unit's own term and its pull on the averages that shape X), from
:func:`ntk_lab.kernels.finite_width_residual_ntk.residual_influences`. The last two terms are
Stein's lemma on the increment u^m (h^ℓ = h^m + β u^m + later increments):
E[X(h^ℓ) f G⁻¹u^m] = β E[f ∇X(h^ℓ)], and E[X (uᵀAu − tr AG)] = β² tr(G A G E[∇²X]).

**The off-diagonal entries.** ĝ and H need μ(c, a) = n·E[Θ̂^m_ca | units c, a] (c ≠ a), which a
residual block moves by its first-order terms (the other unit's ξ conditioned on its u):

    μ^{m+1}(c, a) = μ^m(c, a) + βσ_w² [T^m ℓ_x(a) + E_e ℓ_x(e) μ^m(e, a)]·z^m_c
                    + βσ_w² [T^m ℓ_x'(c) + E_e ℓ_x'(e) μ^m(c, e)]·z^m_a + β²σ_w⁴ z^m_cᵀ H^m z^m_a,

with ℓ_x(s) = φ'(h^m(x)) φ(h^m(s)), ℓ_x'(s) = φ'(h^m(x')) φ(h^m(s)), z^m = G_m⁻¹ u^m and μ¹ = 0. So
μ^m(c, a) = F_cᵀ C^m F_a is bilinear in each unit's features F = (ℓ_x, ℓ_x', z) at the layers
below m, and H^m = T^m E[φ(s)φ(t)φ'(x)φ'(x')] + P_x C^m P_x'ᵀ with P = E[ℓ ⊗ F]. The moments a
feature pairs with are uncentred products across layers (the nested rule of the residual
NNGP), E[ℓ^m z^j] = β E[∇ℓ^m] and E[z^j ∇X(h^ℓ)] = β E[∇²X(h^ℓ)] (Stein again), and
E[ℓ^j ∇X(h^ℓ)] by integrating the later increment by parts once.

As β → 0 the result is the one-hidden-layer MLP's, 0. This carries the NTK mean recursion of
Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory* (2022), ch. 8, to residual
blocks by conditional Gaussian expectations, as :mod:`ntk_lab.kernels.finite_width_ntk` does for
the MLP; checked against brute-force ensembles in the tests.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

from ntk_lab.kernels.finite_width import pairwise
from ntk_lab.kernels.finite_width_moments import correlation_moments, derivative_gradient, derivative_hessian
from ntk_lab.kernels.finite_width_residual import NODES, _pair_with_matrix, nested_moments, residual_arguments
from ntk_lab.kernels.finite_width_residual_ntk import (
    residual_influences, residual_limit, residual_variance, stacked_covariance,
)
from ntk_lab.layers.activations import Activation


def _layer_means(act: Activation, state: dict, beta2: float) -> tuple:
    """(m_j (P, D), b_j (P,)) per layer: the O(1/n) mean corrections of Ĝ^j and of
    (1/n)Σ φ'φ'(h^j), m_j = β² J_j Σ_{i<j} m_i + ½ β⁴ H_j : Cov[R_j] + ½ β² E⟨∇²ψ(h^j), R_j⟩
    (:mod:`ntk_lab.kernels.finite_width_residual`), and b_j alike with Ḃ for F."""
    k, maps, run, hess = state["k"], state["maps"], state["run"], state["hess"]
    sigma = stacked_covariance(state)
    dim = k[0].shape[1]
    size = dim + 1
    mean_psi, mean_b = [], []
    for j in range(len(k)):
        if j == 0:  # h¹ is exactly Gaussian
            mean_psi.append(k[0].new_zeros(k[0].shape))
            mean_b.append(k[0].new_zeros(k[0].shape[0]))
            continue
        cov_r = run[j] @ sigma @ run[j].transpose(1, 2)                                # Cov[R_j] (P, D, D)
        shift = sum(mean_psi)
        own = sum(_pair_with_matrix(hess[(j, c)], run[j][:, :, c * size:(c + 1) * size]) for c in range(j))
        mean_psi.append(beta2 * torch.einsum("pij,pj->pi", maps[j][1], shift)
                        + 0.5 * beta2 * beta2 * torch.einsum("piab,pab->pi", maps[j][2], cov_r)
                        + 0.5 * beta2 * own[:, :dim])
        mean_b.append(beta2 * (derivative_gradient(act, k[j]) * shift).sum(1)
                      + 0.5 * beta2 * beta2 * torch.einsum("pab,pab->p", derivative_hessian(act, k[j]), cov_r)
                      + 0.5 * beta2 * own[:, dim])
    return mean_psi, mean_b


def _second_derivatives(act: Activation, k: Tensor) -> Tensor:
    """E[∇²X] (P, R, R) of X = φ'(u)φ'(v) under N(0, k) from ∇Ḃ: E[∂_s∂_t X] = (1 + δ_st) ∂Ḃ/∂k_st
    (the state's off-diagonal entry k12 stands for both k12 and k21)."""
    g = derivative_gradient(act, k)
    if k.shape[1] == 1:
        return 2.0 * g[:, :, None]
    return torch.stack([torch.stack([2.0 * g[:, 0], g[:, 1]], 1), torch.stack([g[:, 1], 2.0 * g[:, 2]], 1)], 1)


def _first_order(t: Tensor, own_slopes: Tensor, pull: Tensor, coef: Tensor, feature_slopes: Tensor) -> Tensor:
    """E[ĝ^m·∇X(h^l)] (P,), the block's first-order term (module docstring) after Stein's lemma:
    ĝ^m(s) = T^m (ℓ_x(s) + ℓ_x'(s)) + (P_x C F)_s + (P_x' Cᵀ F)_s over the unit's own features F.
    ``own_slopes`` E[(ℓ_x, ℓ_x') ⊗ ∇X] at layer m (P, 2r, R), ``pull`` P = E[(ℓ_x, ℓ_x') ⊗ F]
    (P, 2r, f), ``coef`` C (P, f, f), ``feature_slopes`` E[F ⊗ ∇X] (P, f, R)."""
    r = own_slopes.shape[2]
    trace = lambda a: torch.diagonal(a, dim1=1, dim2=2).sum(1)  # noqa: E731  Σ_s a[s, s]
    px, px2 = pull[:, :r], pull[:, r:]
    return (t * (trace(own_slopes[:, :r]) + trace(own_slopes[:, r:]))
            + trace(px @ coef @ feature_slopes + px2 @ coef.transpose(1, 2) @ feature_slopes))


def residual_mean(act: Activation, state: dict, w2: float, beta: float, nodes: int) -> Tensor:
    """Θ^(1) (P,) from the influences of
    :func:`~ntk_lab.kernels.finite_width_residual_ntk.residual_influences` (taken with
    ``hessians``), by the recursion of the module docstring."""
    k, t, bdot = state["k"], state["t"], state["bdot"]
    k1 = k[0]
    p, dim = k1.shape
    cross, r = (1, 2) if dim == 3 else (0, 1)
    ell = [0, 1, 2, 3] if dim == 3 else [0, 0]   # the "ell" components behind (ℓ_x(s), ℓ_x'(s))
    beta2, layers = beta * beta, len(k)
    depth = layers - 1
    sigma = stacked_covariance(state)
    mean_psi, mean_b = _layer_means(act, state, beta2)

    def cov(a: Tensor, c: Tensor) -> Tensor:  # Cov of two influences (P, N) each
        return torch.einsum("pa,pab,pb->p", a, sigma, c)

    # one unit's moments: E[ℓ^m ⊗ ℓ^j] (j < m < L+1) and E[ℓ^m ⊗ ∇X(h^l)] (m < l)
    ell_products = {(m, j): nested_moments(act, k[j], k[m] - k[j], w2, nodes, "ell", centred=False)[0][:, ell][:, :, ell]
                    for m in range(depth) for j in range(m)}                                  # (P, 2r, 2r)
    ell_slopes = {(l, m): nested_moments(act, k[m], k[l] - k[m], w2, nodes, "derivatives", "ell", centred=False,
                                         orders=(1,))[1][:, 0][:, :, ell].transpose(1, 2)
                  for l in range(layers) for m in range(l)}                                   # (P, 2r, R)
    second = [_second_derivatives(act, k[l]) for l in range(layers)]                         # E[∇²X(h^l)]
    moments = [correlation_moments(act, k[m]) for m in range(depth)]                          # e4, E∇ℓ_x, E∇ℓ_x'

    # the off-diagonal entries' features: μ^m(c, a) = F_cᵀ C F_a, F over layers < m, 3r per layer
    coef = k1.new_zeros(p, 0, 0)
    pulls, grams, blocks = [], [], []   # per block m: P = E[ℓ^m ⊗ F] (P, 2r, 3r·m), H^m, C^m
    for m in range(depth):
        e4, grad_x, grad_x2 = moments[m]
        pull = torch.cat([torch.cat([ell_products[(m, j)], beta * torch.cat([grad_x, grad_x2], 1)], 2)
                          for j in range(m)], 2) if m else k1.new_zeros(p, 2 * r, 0)
        px, px2 = pull[:, :r], pull[:, r:]
        gram = t[m][:, None, None] * e4 + px @ coef @ px2.transpose(1, 2)                     # H^m (P, r, r)
        pulls.append(pull)
        grams.append(gram)
        blocks.append(coef)
        f = coef.shape[1]
        new = k1.new_zeros(p, f + 3 * r, f + 3 * r)
        new[:, :f, :f] = coef
        lx, lx2, zs = slice(f, f + r), slice(f + r, f + 2 * r), slice(f + 2 * r, f + 3 * r)
        eye = torch.eye(r, dtype=torch.float64)
        new[:, zs, lx] += beta * w2 * t[m][:, None, None] * eye
        new[:, lx2, zs] += beta * w2 * t[m][:, None, None] * eye
        new[:, zs, :f] += beta * w2 * px @ coef
        new[:, :f, zs] += beta * w2 * coef @ px2.transpose(1, 2)
        new[:, zs, zs] += beta2 * w2 * w2 * gram
        coef = new

    ups = []
    for l in range(layers):
        ups_l = mean_b[l] * t[l]
        for m in range(l):
            # E[F ⊗ ∇X(h^l)] over the features of layers < m (ℓ_x, ℓ_x', z per layer)
            feature_slopes = torch.cat([k1.new_zeros(p, 0, r)] + [torch.cat([ell_slopes[(l, j)], beta * second[l]], 1)
                                                               for j in range(m)], 1)         # (P, 3r·m, R)
            first = _first_order(t[m], ell_slopes[(l, m)], pulls[m], blocks[m], feature_slopes)
            ups_l = ups_l + beta2 * (bdot[l] * (mean_psi[m][:, cross] + w2 * ups[m])
                                     + cov(state["influence_b"][l], state["influence"][m][:, cross])
                                     + w2 * cov(state["influence_b"][l], t[m][:, None] * state["influence_b"][m]
                                                + bdot[m][:, None] * state["delta_t"][m])
                                     + w2 * first
                                     + beta2 * w2 * w2 * (grams[m] * second[l]).sum((1, 2)))
        ups.append(ups_l)
    return mean_psi[-1][:, cross] + w2 * ups[-1]


def resmlp_ntk_corrections(x1: Tensor, x2: Optional[Tensor] = None, *, activation: str | Activation = "relu",
                           depth: int, w_std: float = 1.0, b_std: float = 0.0, branch_scale: float = 1.0,
                           out_dim: int = 1, nodes: int = NODES) -> Dict[str, Tensor]:
    """The residual MLP's NTK at initialization to O(1/n): E[Θ̂(x, x')] = Θ_∞ + Θ^(1)/n + O(1/n²)
    (module docstring) and n·Var[Θ̂(x, x')] → V_Θ
    (:func:`ntk_lab.kernels.resmlp_ntk_variance`), from one pass over the unit's moments.

    Args:
        x1: (N1, d); x2: (N2, d) or None for x1.
        activation: a name or :class:`Activation` (relu, erf, gelu, tanh, …).
        depth: residual blocks L (≥ 1); w_std, b_std: σ_w, σ_b; branch_scale: β.
        out_dim: O, the outputs the trace-mode NTK averages over (V_Θ only: Θ^(1) is the same
            for every output).
        nodes: Gauss–Hermite nodes per axis of the nested cross-layer rule.

    Returns:
        dict of float64 (N1, N2): ``ntk`` (Θ_∞), ``ntk_variance`` (V_Θ) and
        ``ntk_mean_correction`` (Θ^(1)). Cost ~ depth² · nodes⁴ per distinct pair, about twice
        the variance's alone.

    Raises:
        ValueError: depth < 1, mismatched inputs, or a non-finite result.
    """
    act, x1, x2, w2, b2, beta = residual_arguments(x1, x2, activation, depth, w_std, b_std, branch_scale)

    def propagate(k1: Tensor):
        state = residual_influences(act, k1, depth, w2, b2, beta, nodes, hessians=True)
        return (residual_limit(state, w2), residual_variance(act, state, w2, beta, out_dim, nodes),
                residual_mean(act, state, w2, beta, nodes))

    ntk, variance, mean = pairwise(x1, x2, w2, b2, propagate)
    if not (torch.isfinite(mean).all() and torch.isfinite(variance).all()):
        raise ValueError("non-finite 1/n correction of the residual MLP's NTK (inputs parallel at some layer?)")
    return {"ntk": ntk, "ntk_variance": variance, "ntk_mean_correction": mean}


def predicted_resmlp_ntk_error(x: Tensor, theta_inf: Tensor, *, width: int, activation: str | Activation,
                               depth: int, w_std: float, b_std: float, branch_scale: float,
                               out_dim: int = 1, nodes: int = NODES) -> float:
    """The predicted root-mean-square ‖Θ̂_0 − Θ_∞‖_F / ‖Θ_∞‖_F of the width-n residual MLP on
    inputs x (N, d): √(Σ V_Θ/n + Σ Θ^(1)²/n²) / ‖Θ_∞‖_F, the variance and the squared mean
    correction at their leading orders, as the MLP's. ``theta_inf`` (N, N) is the run's Θ_∞ on x."""
    got = resmlp_ntk_corrections(x, activation=activation, depth=depth, w_std=w_std, b_std=b_std,
                                 branch_scale=branch_scale, out_dim=out_dim, nodes=nodes)
    mean_sq = got["ntk_variance"].sum().item() / width + (got["ntk_mean_correction"] ** 2).sum().item() / width ** 2
    norm = theta_inf.double().norm().item()
    return math.sqrt(max(mean_sq, 0.0)) / norm if norm > 0 else float("nan")
