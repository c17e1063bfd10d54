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
(2022), ch. 8, and Hanin & Nica (2019), written as a delta method in the lab's conventions; it
is checked against brute-force Monte Carlo of ≥ 10⁴ networks per width in the tests.

Identical inputs (x = x') take the 1-D state (δΣ, δT), as the NNGP does. The mean correction
Θ^(1) (E[Θ̂] − Θ_∞ at O(1/n)) needs the per-unit correlations this leading-order variance drops
and is not computed here.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ntk_lab.kernels.finite_width import (
    _correlation, _hermite_rule, _jacobian_hessian, _PAIR_CHUNK, _relu_polar_grid,
    nngp_finite_width_corrections,
)
from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.layers.gaussian import gaussian_expectations, gaussian_moments
from ntk_lab.models import MLP

NODES = 48
"""Gauss–Hermite nodes per axis for the smooth activations' unit moments. V_Θ with 48 nodes
differs from 100 nodes by ≤ 8e-4 relative for tanh (the slowest to converge: analytic only in a
strip) at depth 3, far below the Monte-Carlo precision any check of V_Θ reaches (~1 %); a run
computes V_Θ on every pair of its probe set, and 48 nodes make that ~8× cheaper than 100 (128
points at depth 3 with erf: 2.3 s against 18 s)."""
FD_STEP = 1e-5
"""Relative step of the central differences that give ∇Ḃ (∂E[φ'φ']/∂k): the truncation error
is ~step² relative (1e-10), far below the Monte-Carlo precision any check of V reaches."""


# --------------------------------------------------------------------------- unit moments
def _unit_moments(act: Activation, k: Tensor, w2: float, b2: float):
    """Mean and covariance of the unit term g under N(0, k), per state.

    k: (P, 3) pair states, g = (b2 + w2 φ(u)², b2 + w2 φ(u)φ(v), b2 + w2 φ(v)², φ'(u)φ'(v)); or
    (P, 1), g = (b2 + w2 φ(u)², φ'(u)²). Returns (mean (P, D), cov (P, D, D), e4 (P,), b11, b22)
    with e4 = E[φ'(u)² φ'(v)²] and b11, b22 = E[φ'(u)²], E[φ'(v)²].
    """
    if act.name == "relu":
        return _relu_unit_moments(k, w2, b2)
    z, w = _hermite_rule(NODES)
    means, covs, e4s, b11s, b22s = [], [], [], [], []
    for start in range(0, k.shape[0], _PAIR_CHUNK):
        kk = k[start:start + _PAIR_CHUNK]
        if kk.shape[1] == 1:
            u = torch.sqrt(kk[:, 0].clamp_min(0.0))[:, None] * z  # (p, M)
            fu, du = act.fn(u).double(), act.derivative(u).double()
            g = torch.stack([b2 + w2 * fu * fu, du * du], dim=1)  # (p, 2, M)
            ww = w
            e4 = (du ** 4) @ w
            b11 = (du * du) @ w
            b22 = b11
        else:
            k11, k12, k22 = kk.unbind(1)
            rho = _correlation(k11, k12, k22)
            z1, z2 = z[:, None], z[None, :]
            u = (torch.sqrt(k11.clamp_min(0.0))[:, None, None] * z1).expand(-1, len(z), len(z))
            v = torch.sqrt(k22.clamp_min(0.0))[:, None, None] * (
                rho[:, None, None] * z1 + torch.sqrt(1.0 - rho * rho)[:, None, None] * z2)
            fu, fv = act.fn(u).double(), act.fn(v).double()
            du, dv = act.derivative(u).double(), act.derivative(v).double()
            g = torch.stack([b2 + w2 * fu * fu, b2 + w2 * fu * fv, b2 + w2 * fv * fv, du * dv], dim=1)
            g = g.flatten(2)  # (p, 4, M²)
            ww = (w[:, None] * w[None, :]).flatten()
            e4 = ((du * dv) ** 2).flatten(1) @ ww
            b11 = (du * du).flatten(1) @ ww
            b22 = (dv * dv).flatten(1) @ ww
        mu = g @ ww
        c = g - mu[..., None]
        means.append(mu)
        covs.append(torch.einsum("pam,pbm,m->pab", c, c, ww))
        e4s.append(e4)
        b11s.append(b11)
        b22s.append(b22)
    return torch.cat(means), torch.cat(covs), torch.cat(e4s), torch.cat(b11s), torch.cat(b22s)


def _relu_unit_moments(k: Tensor, w2: float, b2: float):
    """:func:`_unit_moments` for relu, exact: E[relu(u)^a relu(v)^b 1(u>0) 1(v>0)] in polar
    coordinates, k11^{a/2} k22^{b/2} E[r^{a+b}]/(2π) ∫_{θ−π/2}^{π/2} cos^a α cos^b(α − θ) dα
    (r² ~ χ²₂: E[r⁰, r², r⁴] = 1, 2, 8), by Gauss–Legendre on the kink-free range."""
    if k.shape[1] == 1:  # u = v: φ'(u)² = 1(u > 0)
        q = k[:, 0]
        m_phi2, m_phi4, m_ind = 0.5 * q, 1.5 * q * q, torch.full_like(q, 0.5)
        mean = torch.stack([b2 + w2 * m_phi2, m_ind], dim=1)
        cov = k.new_empty(len(q), 2, 2)
        cov[:, 0, 0] = w2 * w2 * (m_phi4 - m_phi2 ** 2)
        cov[:, 0, 1] = cov[:, 1, 0] = w2 * (m_phi2 - m_phi2 * m_ind)  # E[φ² 1] = E[φ²]
        cov[:, 1, 1] = m_ind - m_ind ** 2
        return mean, cov, m_ind, m_ind, m_ind
    k11, _, k22 = k.unbind(1)
    cu, cv, weights = _relu_polar_grid(k)
    r1, r2 = torch.sqrt(k11.clamp_min(0.0)), torch.sqrt(k22.clamp_min(0.0))
    radial = {0: 1.0, 2: 2.0, 4: 8.0}

    def both(a: int, b: int) -> Tensor:  # E[relu(u)^a relu(v)^b 1(u>0)1(v>0)]
        return r1 ** a * r2 ** b * radial[a + b] * ((cu ** a) * (cv ** b) * weights).sum(1) / (2.0 * math.pi)

    def one(q: Tensor, a: int) -> Tensor:  # E[relu(u)^a 1(u>0)], u ~ N(0, q)
        return {0: torch.full_like(q, 0.5), 2: 0.5 * q, 4: 1.5 * q * q}[a]

    # g = (φ_u², φ_uφ_v, φ_v², 1_u 1_v) as (power of u, power of v, needs u > 0, needs v > 0)
    terms = [(2, 0, True, False), (1, 1, True, True), (0, 2, False, True), (0, 0, True, True)]

    def moment(a: int, b: int, iu: bool, iv: bool) -> Tensor:
        if iu and iv:
            return both(a, b)
        return one(k11, a) if iu else one(k22, b)

    raw = [moment(*t) for t in terms]
    scale = [w2, w2, w2, 1.0]
    shift = [b2, b2, b2, 0.0]
    mean = torch.stack([s * m + c for s, m, c in zip(scale, raw, shift)], dim=1)
    cov = k.new_empty(k.shape[0], 4, 4)
    for i, (a1, b1, u1, v1) in enumerate(terms):
        for j, (a2, b2_, u2, v2) in enumerate(terms):
            second = moment(a1 + a2, b1 + b2_, u1 or u2, v1 or v2)
            cov[:, i, j] = scale[i] * scale[j] * (second - raw[i] * raw[j])
    ind = raw[3]
    return mean, cov, ind, torch.full_like(k11, 0.5), torch.full_like(k22, 0.5)


def _derivative_gradient(act: Activation, k: Tensor) -> Tensor:
    """∇Ḃ(k), Ḃ = E[φ'(u)φ'(v)], by central differences: (P, 3) -> (P, 3); (P, 1) -> (P, 1)."""
    def bdot(kk: Tensor) -> Tensor:
        if kk.shape[1] == 1:
            return gaussian_moments(act, kk[:, 0])[1]
        return gaussian_expectations(act, kk[:, 0], kk[:, 1], kk[:, 2])[1]

    grad = torch.empty_like(k)
    for a in range(k.shape[1]):
        h = FD_STEP * k.abs().max(1).values.clamp_min(1e-300)
        step = torch.zeros_like(k)
        step[:, a] = h
        grad[:, a] = (bdot(k + step) - bdot(k - step)) / (2.0 * h)
    return grad


# --------------------------------------------------------------------------- the recursion
def _propagate_ntk(act: Activation, k: Tensor, depth: int, w2: float, b2: float, out_dim: int):
    """(Θ_∞, V_Θ) per state after ``depth`` hidden layers; k = Σ¹ as (P, 3) or (P, 1)."""
    p, dim = k.shape
    two_d = dim == 3
    size = dim + 1  # the state ξ = (δΣ…, δT)
    q = k.new_zeros(p, size, size)
    s_same = k.new_zeros(p)
    s_swap = k.new_zeros(p)
    t = k[:, 1] if two_d else k[:, 0]  # T¹ = Σ¹ (the first layer's NTK under ntk)
    for layer in range(depth):
        f, jac, _ = _jacobian_hessian(act, k, w2, b2)
        mean, cov_g, e4, b11, b22 = _unit_moments(act, k, w2, b2)
        b = mean[:, -1]  # B^l = E[φ'(u)φ'(v)]
        grad_b = _derivative_gradient(act, k)
        # y = (δΣ^{l+1}, δB^l) = A ξ^l + ε;  ξ^{l+1} = M y + c·δT^l
        a_mat = k.new_zeros(p, size, size)
        a_mat[:, :dim, :dim] = jac
        a_mat[:, dim, :dim] = grad_b
        m_mat = k.new_zeros(p, size, size)
        m_mat[:, :dim, :dim] = torch.eye(dim, dtype=k.dtype)
        m_mat[:, dim, 1 if two_d else 0] = 1.0
        m_mat[:, dim, dim] = w2 * t
        g_mat = m_mat @ a_mat
        g_mat[:, dim, dim] += w2 * b
        noise = cov_g  # n·Cov[ε] = Cov[g]
        q = g_mat @ q @ g_mat.transpose(1, 2) + m_mat @ noise @ m_mat.transpose(1, 2)
        if layer < depth - 1:  # the off-diagonal NTK of the next hidden layer
            s_same = w2 * w2 * (e4 * t * t + b11 * b22 * s_same)
            s_swap = w2 * w2 * (e4 * t * t + b * b * s_swap)
            t_next = (f[:, 1] if two_d else f[:, 0]) + w2 * b * t
        else:  # the readout layer: its own terms, over O output units
            readout = w2 * w2 * (2.0 * e4 * t * t + b11 * b22 * s_same + b * b * s_swap)
            t_next = (f[:, 1] if two_d else f[:, 0]) + w2 * b * t
        k, t = f, t_next
    return t, q[:, -1, -1] + readout / out_dim


def ntk_finite_width_variance(x1: Tensor, x2: Optional[Tensor] = None, *,
                              activation: str | Activation = "relu", depth: int,
                              w_std: float = 1.0, b_std: float = 0.0,
                              out_dim: int = 1) -> Dict[str, Tensor]:
    """V_Θ(x, x') = lim n·Var[Θ̂(x, x')] of the width-n MLP at initialization (module docstring).

    Args:
        x1: (N1, d) inputs; x2: (N2, d) or None for x1.
        activation: relu (exact polar moments) or any activation with a derivative (tanh, erf,
            gelu, …: a tensor-product Gauss–Hermite rule of ``NODES`` per axis).
        depth: hidden layers (≥ 1); w_std, b_std: σ_w, σ_b of every layer (``ntk``, or μP,
            whose NTK at initialization has the same distribution).
        out_dim: O, the outputs the trace-mode NTK averages over.

    Returns:
        dict of float64 (N1, N2): ``ntk`` (Θ_∞) and ``ntk_variance`` (V_Θ). For a run at width n
        the predicted root-mean-square ‖Θ̂ − Θ_∞‖_F is √(Σ V_Θ / n) at leading order.

    Raises:
        ValueError: depth < 1, mismatched inputs, or a non-finite result (relu on distinct inputs
            that are parallel at some layer).
    """
    act = get_activation(activation)
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    symmetric = x2 is None
    x1 = torch.as_tensor(x1).detach().to(torch.float64)
    x2 = x1 if x2 is None else torch.as_tensor(x2).detach().to(torch.float64)
    if x1.dim() != 2 or x2.dim() != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1, x2 must be (N, d) with the same d, got {tuple(x1.shape)}, {tuple(x2.shape)}")
    d = x1.shape[1]
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2
    q1 = w2 * (x1 * x1).sum(1) / d + b2
    q2 = w2 * (x2 * x2).sum(1) / d + b2
    q12 = w2 * (x1 @ x2.T) / d + b2
    same = (x1[:, None, :] == x2[None, :, :]).all(-1)
    ntk = torch.empty(len(x1), len(x2), dtype=torch.float64)
    var = torch.empty_like(ntk)
    rows, cols = torch.nonzero(same, as_tuple=True)
    if rows.numel():
        ntk[rows, cols], var[rows, cols] = _propagate_ntk(act, q1[rows, None], depth, w2, b2, out_dim)
    distinct = ~same
    if symmetric:  # the pairs above the diagonal, mirrored
        distinct &= torch.ones_like(same).triu(1)
    rows, cols = torch.nonzero(distinct, as_tuple=True)
    if rows.numel():
        k0 = torch.stack([q1[rows], q12[rows, cols], q2[cols]], dim=1)
        ntk[rows, cols], var[rows, cols] = _propagate_ntk(act, k0, depth, w2, b2, out_dim)
        if symmetric:
            ntk[cols, rows], var[cols, rows] = ntk[rows, cols], var[rows, cols]
    if not torch.isfinite(var).all():
        raise ValueError("non-finite NTK variance: for relu, distinct inputs that are parallel "
                         "(|ρ| = 1) at some layer make the expansion singular")
    return {"ntk": ntk, "ntk_variance": var}


def predicted_ntk_error(x: Tensor, theta_inf: Tensor, *, width: int, activation: str | Activation,
                        depth: int, w_std: float, b_std: float, out_dim: int = 1) -> float:
    """The predicted root-mean-square ‖Θ̂_0 − Θ_∞‖_F / ‖Θ_∞‖_F of the width-n MLP on inputs x
    (N, d): √(Σ V_Θ / n) / ‖Θ_∞‖_F, leading order in 1/n (the squared mean correction is
    O(1/n²) and left out). ``theta_inf`` (N, N) is the run's Θ_∞ on x."""
    var = ntk_finite_width_variance(x, activation=activation, depth=depth, w_std=w_std, b_std=b_std,
                                    out_dim=out_dim)["ntk_variance"]
    norm = theta_inf.double().norm().item()
    return math.sqrt(max(var.sum().item(), 0.0) / width) / norm if norm > 0 else float("nan")


def finite_width_corrections(x1: Tensor, x2: Optional[Tensor] = None, *, model) -> Dict[str, Tensor]:
    """The 1/n coefficients of a built-in MLP's kernels at initialization, for its own
    activation, σ's, depth and outputs (its width is ignored: these multiply 1/n).

    Returns float64 (N1, N2) tensors: ``nngp_mean_correction`` and ``nngp_variance``
    (:func:`ntk_lab.kernels.nngp_finite_width_corrections`), ``ntk_variance`` (V_Θ, this
    module); ``ntk`` and ``nngp``, the infinite-width kernels. The NTK's mean correction Θ^(1)
    is not derived yet, so there is no ``ntk_mean_correction``.

    Raises:
        ValueError: not an :class:`~ntk_lab.models.MLP`, or the ``standard`` parameterization
            (whose NTK grows with n; ``ntk`` and ``mup`` share these coefficients).
    """
    if not isinstance(model, MLP):
        raise ValueError(f"finite_width_corrections: derived for the MLP only, got {type(model).__name__}")
    if model.parameterization not in ("ntk", "mup"):
        raise ValueError(f"finite_width_corrections: parameterization={model.parameterization!r} is not "
                         f"supported: allowed: ntk, mup")
    settings = dict(activation=model.activation, depth=model.depth, w_std=model.w_std, b_std=model.b_std)
    nngp = nngp_finite_width_corrections(x1, x2, **settings)
    ntk = ntk_finite_width_variance(x1, x2, out_dim=model.out_dim, **settings)
    return {**nngp, **ntk}
