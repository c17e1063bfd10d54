"""The variance of a finite-width MLP's NTK at initialization: n·Var[Θ̂(x, x')] → V_Θ(x, x').

The MLP of :mod:`ntk_lab.kernels.finite_width` (``ntk`` parameterization, ``depth`` hidden
layers of width n, W, b ~ N(0, 1)), with Σ^l the covariance of z^l (the state k^l there) and
the NTK of z^l written through its recursion, exact at every width:

    Θ̂^{l+1}_ij = δ_ij (σ_w² K̂^l + σ_b²) + (σ_w²/n) Σ_{a,b} W_ia W_jb φ'(z_a^l) φ'(z_b^l) Θ̂^l_ab,
    Θ̂¹_ij = δ_ij Σ¹,    K̂^l = (1/n) Σ_a φ(z_a^l) φ(z_a^l),    Θ̂ = Θ̂^{depth+1}_11 (one output).

At leading order in 1/n the fluctuations of Θ̂ about Θ_∞ have three sources.

1. Shared layer averages. The diagonal entries Θ̂^l_aa = T̂^l + (per-unit noise), where
   T̂^1 = Σ¹ and T̂^{l+1} = Σ̂^{l+1} + σ_w² B̂^l T̂^l with B̂^l = (1/n) Σ_a φ'(z_a^l(x)) φ'(z_a^l(x')):
   the per-unit noise averages out of B̂^l T̂^l at O(1/n). Given layer l, (Σ̂^{l+1}, B̂^l) are
   means of n i.i.d. unit terms g = (σ_b² + σ_w²(φ(u)², φ(u)φ(v), φ(v)²), φ'(u)φ'(v)),
   (u, v) ~ N(0, Σ^l), so the delta method of :mod:`ntk_lab.kernels.finite_width` applies to the
   state ξ^l = (δΣ^l_11, δΣ^l_12, δΣ^l_22, δT^l) with Q^l = n·Cov[ξ^l], Q¹ = 0:

       δΣ^{l+1} = J δΣ^l + ε_Σ,   δB^l = ∇Ḃ·δΣ^l + ε_B,   δT^{l+1} = δΣ^{l+1}_12 + σ_w²(B^l δT^l + T^l δB^l),

   (J = ∂F/∂k, Ḃ(k) = E[φ'(u)φ'(v)], n·Cov[ε] = Cov[g]), so Q^{l+1} = G Q^l Gᵀ + M Cov[g] Mᵀ.
2. The readout's diagonal term D = (σ_w²/n) Σ_a W_1a² φ'_a φ'_a Θ̂^L_aa: Var[W²] = 2 gives
   n·Var[D] → 2σ_w⁴ E[φ'(u)² φ'(v)²] T^L².
3. The off-diagonal entries Θ̂^l_ab (a ≠ b), O(1/√n) each, enter the single readout unit
   through O = (σ_w²/n) Σ_{a≠b} W_1a W_1b φ'_a(x) φ'_b(x') Θ̂^L_ab, with
   n·Var[O] → σ_w⁴ (Ḃ_11 Ḃ_22 S^L + Ḃ_12² S'^L), S = n·E[Θ̂_ab(x,x')²], S' = n·E[Θ̂_ab(x,x') Θ̂_ab(x',x)]:

       S^{l+1} = σ_w⁴ (E[φ'(u)²φ'(v)²] T^l² + Ḃ_11 Ḃ_22 S^l),   S'^{l+1} = σ_w⁴ (E[φ'²φ'²] T^l² + Ḃ_12² S'^l),

   S¹ = S'¹ = 0 (Θ̂¹ is diagonal), Ḃ_11 = E[φ'(u)²], Ḃ_22 = E[φ'(v)²] at layer l.

The three are uncorrelated (D and O have zero mean given the hidden layers, and E[W_a² W_b W_c] = 0
for b ≠ c), so V_Θ = Q^{L+1}_TT + 2σ_w⁴ E[φ'²φ'²] T^L² + σ_w⁴(Ḃ_11 Ḃ_22 S^L + Ḃ_12² S'^L) at
layer L = depth. With O outputs, the trace-mode NTK (the mean over the O readout units) keeps
the shared part and divides the readout's own terms (2 and 3) by O. This is the O(1/n) part of
the NTK-variance recursions of Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory*
(2022), ch. 8, and Hanin & Nica (2019), written as a delta method in the lab's conventions.

4. The mean. E[Θ̂] = E[T̂^{L+1}] exactly, T̂^{l+1} = Σ̂^{l+1}_12 + σ_w² Û^l with the layer average
   Û^l = (1/n) Σ_a φ'(z_a^l(x)) φ'(z_a^l(x')) Θ̂^l_aa (E[W_1a W_1b] = δ_ab at the readout). Given
   layer l − 1, unit a's row w̃ = (W_a, b_a) is N(0, I) and its pre-activations s = Ψᵀw̃ ~ N(0, K̂^l)
   (Ψ_α = (σ_w φ(z^{l−1}(x_α))/√n, σ_b)); conditioning w̃ on s gives, exactly,

       E[Θ̂^l_aa | s] = T̂^l + σ_w⁴ (sᵀK̂⁻¹ Ĝ K̂⁻¹ s − tr(K̂⁻¹ Ĝ)),
       Ĝ_αβ = (1/n²) Σ_bc φ_b(x_α) φ'_b(x) Θ̂^{l−1}_bc(x, x') φ'_c(x') φ_c(x_β)   (2 × 2, O(1/n)),

   and by Stein's lemma E[φ'φ'(s) (sᵀK⁻¹ĜK⁻¹s − tr K⁻¹Ĝ)] = Σ_αβ Ĝ_αβ E[∂_α∂_β(φ'φ')] =
   2Ĝ_11 ∂_{k11}Ḃ + (Ĝ_12 + Ĝ_21) ∂_{k12}Ḃ + 2Ĝ_22 ∂_{k22}Ḃ: a unit's own NTK entry is correlated
   with its pre-activations at O(1/n). Hence, with μ^l = n·E[(δΣ^l, δT^l)] and g^l = n·E[Ĝ^l],

       n·E[δÛ^l] = Ḃ μ_T + T ∇Ḃ·μ_Σ + ∇Ḃ·Q_ΣT + ½ T ∇²Ḃ:Q_ΣΣ + σ_w⁴ ⟨∇Ḃ, g^{l−1}⟩,
       μ_Σ^{l+1} = J μ_Σ^l + ½ H:Q_ΣΣ (the NNGP's m),   μ_T^{l+1} = μ_Σ,12^{l+1} + σ_w² n·E[δÛ^l],
       g^l_αβ = E[φ(u_α)φ(u_β)φ'(u)φ'(v)] T^l + σ_w⁴ Σ_γδ P_αγ g^{l−1}_γδ R_βδ,

   P_αγ = E[φ(u_α)φ'(u)(K⁻¹w)_γ], R_βδ = E[φ(u_β)φ'(v)(K⁻¹w)_δ] (w = (u, v), all at layer l), the
   second term of g being the off-diagonal Θ̂^{l−1}_bc (b ≠ c), whose O(1/n) correlation with
   units b and c is again a conditioning on their rows; μ¹ = 0, g⁰ = 0. Then
   Θ^(1) = μ_T^{depth+1}: E[Θ̂] = Θ_∞ + Θ^(1)/n + O(1/n²). It is 0 at depth 1 (Θ̂ is then a mean of
   i.i.d. unit terms) and on the diagonal for relu (Ḃ = ½ and F linear there), the known special
   case. This is the NTK mean correction of Roberts, Yaida & Hanin (2022), ch. 8 (their
   NTK–pre-activation cross-correlations are the g and Stein terms), derived here as
   conditional Gaussian expectations in the lab's conventions.

Identical inputs (x = x') take the 1-D state (δΣ, δT), as the NNGP does; there Ĝ is a scalar and
the Stein term is 2Ĝ dḂ/dk. Every coefficient is checked against brute-force Monte Carlo of
≥ 10⁴ networks per width (n·Var, n·(mean − Θ_∞) extrapolated in 1/n) in the tests.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.kernels.finite_width import (
    _jacobian_hessian, checked_inputs, nngp_finite_width_corrections, pairwise,
)
from ntk_lab.kernels.finite_width_residual import resmlp_nngp_corrections
from ntk_lab.kernels.finite_width_residual_mean import resmlp_ntk_corrections
from ntk_lab.kernels.finite_width_moments import (
    correlation_moments, derivative_gradient, derivative_hessian, unit_moments,
)
from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.models import MLP, ResMLP

# --------------------------------------------------------------------------- the recursion
def _propagate_ntk(act: Activation, k: Tensor, depth: int, w2: float, b2: float, out_dim: int,
                   gains: Tuple[float, float, float] = (1.0, 1.0, -1.0)):
    """(Θ_∞, V_Θ, Θ^(1)) per state after ``depth`` hidden layers; k = Σ¹ as (P, 3) or (P, 1).

    ``gains`` = (λ_1, λ, g_b): a layer's own parameters add λ·(Σ̂_12 − σ_b²) + g_b to T̂ (λ_1
    for the first layer); ``ntk``: (1, 1, σ_b²) (g_b < 0 means σ_b²), ``standard``:
    (d/σ_w², n/σ_w², 1), the squared multipliers times fan_in over σ_w²."""
    first_gain, gain, bias_gain = gains
    bias_gain = b2 if bias_gain < 0 else bias_gain
    p, dim = k.shape
    two_d = dim == 3
    cross = 1 if two_d else 0  # the state's (x, x') entry
    size = dim + 1  # the state ξ = (δΣ…, δT)
    q = k.new_zeros(p, size, size)
    s_same = k.new_zeros(p)
    s_swap = k.new_zeros(p)
    mu_k, mu_t = k.new_zeros(p, dim), k.new_zeros(p)  # n·E[δΣ^l], n·E[δT^l]
    g = k.new_zeros(p, 2 if two_d else 1, 2 if two_d else 1)  # n·E[Ĝ^{l−1}]; Ĝ⁰ = 0
    t = first_gain * (k[:, cross] - b2) + bias_gain  # T¹ (Σ¹ under ntk)
    for layer in range(depth):
        f, jac, hess = _jacobian_hessian(act, k, w2, b2)
        mean, cov_g, e4, b11, b22 = unit_moments(act, k, w2, b2)
        b = mean[:, -1]  # B^l = E[φ'(u)φ'(v)]
        grad_b = derivative_gradient(act, k)
        # the mean (part 4 of the module docstring), from the layer-l moments before q moves on
        q_kk, q_kt = q[:, :dim, :dim], q[:, :dim, dim]
        mu_k_next = torch.einsum("pia,pa->pi", jac, mu_k) + 0.5 * torch.einsum("piab,pab->pi", hess, q_kk)
        if two_d:
            stein = 2.0 * g[:, 0, 0] * grad_b[:, 0] + (g[:, 0, 1] + g[:, 1, 0]) * grad_b[:, 1] \
                + 2.0 * g[:, 1, 1] * grad_b[:, 2]
        else:
            stein = 2.0 * g[:, 0, 0] * grad_b[:, 0]
        mean_u = (b * mu_t + t * (grad_b * mu_k).sum(1) + (grad_b * q_kt).sum(1)
                  + 0.5 * t * torch.einsum("pab,pab->p", derivative_hessian(act, k), q_kk) + w2 * w2 * stein)
        e4_pairs, left, right = correlation_moments(act, k)
        g = e4_pairs * t[:, None, None] + w2 * w2 * left @ g @ right.transpose(1, 2)
        mu_k, mu_t = mu_k_next, gain * mu_k_next[:, cross] + w2 * mean_u
        # the variance: y = (δΣ^{l+1}, δB^l) = A ξ^l + ε;  ξ^{l+1} = M y + c·δT^l
        a_mat = k.new_zeros(p, size, size)
        a_mat[:, :dim, :dim] = jac
        a_mat[:, dim, :dim] = grad_b
        m_mat = k.new_zeros(p, size, size)
        m_mat[:, :dim, :dim] = torch.eye(dim, dtype=k.dtype)
        m_mat[:, dim, cross] = gain
        m_mat[:, dim, dim] = w2 * t
        g_mat = m_mat @ a_mat
        g_mat[:, dim, dim] += w2 * b
        noise = cov_g  # n·Cov[ε] = Cov[g]
        q = g_mat @ q @ g_mat.transpose(1, 2) + m_mat @ noise @ m_mat.transpose(1, 2)
        if layer < depth - 1:  # the off-diagonal NTK of the next hidden layer
            s_same = w2 * w2 * (e4 * t * t + b11 * b22 * s_same)
            s_swap = w2 * w2 * (e4 * t * t + b * b * s_swap)
        else:  # the readout layer: its own terms, over O output units
            readout = w2 * w2 * (2.0 * e4 * t * t + b11 * b22 * s_same + b * b * s_swap)
        k, t = f, gain * (f[:, cross] - b2) + bias_gain + w2 * b * t
    return t, q[:, -1, -1] + readout / out_dim, mu_t


def ntk_finite_width_variance(x1: Tensor, x2: Optional[Tensor] = None, *,
                              activation: str | Activation = "relu", depth: int,
                              w_std: float = 1.0, b_std: float = 0.0,
                              out_dim: int = 1, parameterization: str = "ntk",
                              width: Optional[int] = None) -> Dict[str, Tensor]:
    """V_Θ(x, x') = lim n·Var[Θ̂(x, x')] and Θ^(1)(x, x') = lim n·(E[Θ̂(x, x')] − Θ_∞(x, x'))
    of the width-n MLP at initialization (module docstring).

    Args:
        x1: (N1, d) inputs; x2: (N2, d) or None for x1.
        activation: relu (exact polar moments) or any activation with a derivative (tanh, erf,
            gelu, …: a tensor-product Gauss–Hermite rule of ``NODES`` per axis).
        depth: hidden layers (≥ 1); w_std, b_std: σ_w, σ_b of every layer (``ntk``, or μP,
            whose NTK at initialization has the same distribution).
        out_dim: O, the outputs the trace-mode NTK averages over.
        parameterization: ``ntk`` or ``mup`` (the same NTK distribution at initialization), or
            ``standard``: there a layer's weights add fan_in·K̂_post and its bias 1 to the NTK
            (neural-tangents' convention), so Θ_∞ grows with the width and ``width`` (n) is
            needed; the results are then the values at that width, E[Θ̂] = Θ_∞(n) + Θ^(1)(n)/n.
        width: n, for ``standard`` only.

    Returns:
        dict of float64 (N1, N2): ``ntk`` (Θ_∞), ``ntk_variance`` (V_Θ) and
        ``ntk_mean_correction`` (Θ^(1), the same for every out_dim). For a run at width n the
        predicted root-mean-square ‖Θ̂ − Θ_∞‖_F is √(Σ V_Θ/n + Σ Θ^(1)²/n²).

    Raises:
        ValueError: depth < 1, mismatched inputs, an unknown parameterization, ``standard``
            without a width or with σ_w = 0, or a non-finite result (relu on distinct inputs
            that are parallel at some layer).
    """
    act = get_activation(activation)
    symmetric = x2 is None
    x1, x2 = checked_inputs(x1, x2, depth)
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2
    gains = _gains(parameterization, x1.shape[1], width, w2)
    ntk, var, mean = pairwise(x1, None if symmetric else x2, w2, b2,
                              lambda k: _propagate_ntk(act, k, depth, w2, b2, out_dim, gains))
    if not (torch.isfinite(var).all() and torch.isfinite(mean).all()):
        raise ValueError("non-finite NTK correction: for relu, distinct inputs that are parallel "
                         "(|ρ| = 1) at some layer make the expansion singular")
    return {"ntk": ntk, "ntk_variance": var, "ntk_mean_correction": mean}


def _gains(parameterization: str, d: int, width: Optional[int], w2: float) -> Tuple[float, float, float]:
    """:func:`_propagate_ntk`'s (λ_1, λ, g_b) for a parameterization."""
    if parameterization in ("ntk", "mup"):
        return 1.0, 1.0, -1.0
    if parameterization != "standard":
        raise ValueError(f"parameterization={parameterization!r} is not supported: allowed: ntk, mup, standard")
    if width is None or isinstance(width, bool) or int(width) < 1:
        raise ValueError(f"parameterization='standard' needs the width (n >= 1), got width={width!r}")
    if w2 <= 0.0:
        raise ValueError("parameterization='standard' needs w_std > 0")
    return d / w2, int(width) / w2, 1.0


def predicted_ntk_error(x: Tensor, theta_inf: Tensor, *, width: int, activation: str | Activation,
                        depth: int, w_std: float, b_std: float, out_dim: int = 1,
                        parameterization: str = "ntk") -> float:
    """The predicted root-mean-square ‖Θ̂_0 − Θ_∞‖_F / ‖Θ_∞‖_F of the width-n MLP on inputs x
    (N, d): √(Σ V_Θ/n + Σ Θ^(1)²/n²) / ‖Θ_∞‖_F — the variance and the squared mean correction,
    E‖Θ̂ − Θ_∞‖² = Σ Var + Σ (E Θ̂ − Θ_∞)², each at its leading order. ``theta_inf`` (N, N) is
    the run's Θ_∞ on x."""
    got = ntk_finite_width_variance(x, activation=activation, depth=depth, w_std=w_std, b_std=b_std,
                                    out_dim=out_dim, parameterization=parameterization, width=width)
    mean_sq = got["ntk_variance"].sum().item() / width + (got["ntk_mean_correction"] ** 2).sum().item() / width ** 2
    norm = theta_inf.double().norm().item()
    return math.sqrt(max(mean_sq, 0.0)) / norm if norm > 0 else float("nan")


def finite_width_corrections(x1: Tensor, x2: Optional[Tensor] = None, *, model) -> Dict[str, Tensor]:
    """The 1/n coefficients of a built-in MLP's or residual MLP's kernels at initialization,
    for its own activation, σ's, depth and outputs (its width is ignored: these multiply 1/n).

    Returns float64 (N1, N2) tensors: ``nngp_mean_correction`` and ``nngp_variance``
    (:func:`ntk_lab.kernels.nngp_finite_width_corrections`; for a
    :class:`~ntk_lab.models.ResMLP`, :func:`ntk_lab.kernels.resmlp_nngp_corrections`),
    ``ntk_mean_correction`` (Θ^(1)) and ``ntk_variance`` (V_Θ, this module); ``ntk`` and
    ``nngp``, the infinite-width kernels: E[Θ̂] = ntk + ntk_mean_correction/n + O(1/n²),
    n·Var[Θ̂] → ntk_variance, and the same for the NNGP.

    For ``standard`` (whose NTK grows with n) the NTK's coefficients are those at the model's
    own width: E[Θ̂] = ntk + ntk_mean_correction/n with ``ntk`` = Θ_∞(n).

    For a residual MLP (``ntk`` or ``mup`` parameterization, which share the NTK's law at
    initialization) ``ntk_variance`` and ``ntk_mean_correction`` come from
    :func:`ntk_lab.kernels.resmlp_ntk_corrections`, ``ntk`` is its exact Θ_∞.

    Raises:
        ValueError: neither an :class:`~ntk_lab.models.MLP` nor a :class:`~ntk_lab.models.ResMLP`.
    """
    if isinstance(model, ResMLP):
        if model.parameterization not in ("ntk", "mup"):
            raise ValueError(f"finite_width_corrections: the residual MLP's are derived for "
                             f"parameterization ntk, got {model.parameterization!r}")
        settings = dict(activation=model.activation, depth=model.depth, w_std=model.w_std,
                        b_std=model.b_std, branch_scale=model.branch_scale)
        nngp = resmlp_nngp_corrections(x1, x2, **settings)
        ntk = resmlp_ntk_corrections(x1, x2, out_dim=model.out_dim, **settings)
        _, theta = infinite_width_kernels(*checked_inputs(x1, x2, model.depth), model=model)
        return {**nngp, "ntk": theta.to(torch.float64), "ntk_variance": ntk["ntk_variance"],
                "ntk_mean_correction": ntk["ntk_mean_correction"]}
    if not isinstance(model, MLP):
        raise ValueError(f"finite_width_corrections: derived for the MLP and the residual MLP, got "
                         f"{type(model).__name__}")
    settings = dict(activation=model.activation, depth=model.depth, w_std=model.w_std, b_std=model.b_std)
    nngp = nngp_finite_width_corrections(x1, x2, **settings)
    ntk = ntk_finite_width_variance(x1, x2, out_dim=model.out_dim, parameterization=model.parameterization,
                                    width=model.width, **settings)
    return {**nngp, **ntk}
