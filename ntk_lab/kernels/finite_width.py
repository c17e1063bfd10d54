"""The 1/n corrections to the NNGP of a finite-width MLP at initialization.

The MLP of :func:`ntk_lab.kernels.infinite_width_kernels` (``ntk`` parameterization, ``depth``
hidden layers of width n, σ_w = ``w_std``, σ_b = ``b_std``, all W, b ~ N(0, 1)):

    z¹ = σ_w W¹ x/√d + σ_b b¹,   z^{l+1} = σ_w W^{l+1} φ(z^l)/√n + σ_b b^{l+1},   f = z^{depth+1}.

Exact finite-width statement (Gaussian conditioning). Given the post-activations φ(z^l), the n
units of z^{l+1} on a pair (x, x') are i.i.d. N(0, K̂^{l+1}) with the random 2 × 2 matrix

    K̂^{l+1} = σ_b² + σ_w² (1/n) Σ_j φ(z_j^l) φ(z_j^l)ᵀ,      K̂¹ = Σ¹ (deterministic),

state k = (K̂11, K̂12, K̂22). The empirical NNGP of the width-n network — the covariance of the
readout given the hidden layers — is K̂^{depth+1}(x, x'). With

    F(k) = σ_b² + σ_w² E_{N(0,k)}[(φ(u)², φ(u)φ(v), φ(v)²)]   (F11 depends on k11 only),
    C(k) = Cov_{N(0,k)}[(φ(u)², φ(u)φ(v), φ(v)²)]              (3 × 3),

K̂^{l+1} is a mean of n i.i.d. terms given K̂^l, so E[K̂^{l+1} | K̂^l] = F(K̂^l),
Cov[K̂^{l+1} | K̂^l] = σ_w⁴ C(K̂^l)/n and its higher conditional cumulants are O(1/n²).

Delta method. Write K̂^l = K^l + δ with K^l the infinite-width state (K^{l+1} = F(K^l)),
E[δ] = m^l/n, Cov[δ] = S^l/n + O(1/n²), higher cumulants O(1/n²) (so E[δ^{⊗3}] = O(1/n²)).
Expanding F to second order at K^l, with J = ∂F/∂k and H_{iab} = ∂²F_i/∂k_a∂k_b there:

    E[K̂^{l+1}]   = F(K^l) + J m^l/n + ½ H:(S^l/n + m^l m^lᵀ/n²) + O(1/n²)
    Cov[K̂^{l+1}] = E[Cov[K̂^{l+1} | K̂^l]] + Cov[F(K̂^l)] = (σ_w⁴ C(K^l) + J S^l Jᵀ)/n + O(1/n²)

(E[C(K̂^l)] = C(K^l) + O(1/n); Cov[F(K^l + δ)] = J Cov[δ] Jᵀ + O(1/n²)), hence

    m^{l+1} = J m^l + ½ Σ_ab H_{·ab} S^l_ab,    S^{l+1} = σ_w⁴ C(K^l) + J S^l Jᵀ,    m¹ = S¹ = 0,

and E[K̂^{depth+1}(x,x')] = Σ^{depth+1}(x,x') + m_12/n + O(1/n²), n·Var[K̂^{depth+1}(x,x')] →
S_{12,12}. At depth 1 both are exact: m = 0 and V = σ_w⁴ C(Σ¹) (a mean of i.i.d. terms).
For x = x' the state is 1-D (K̂11 = K̂12 = K̂22 exactly), F(k) = σ_b² + σ_w² E[φ(u)²],
C(k) = Var[φ(u)²], u ~ N(0, k). This is the O(1/n) part of the recursions of Roberts, Yaida &
Hanin, *The Principles of Deep Learning Theory* (2022), ch. 4 (the four-point vertex V is
n·Cov of K̂, the NLO metric correction is m), written as a delta method; cf. also Yaida 2020,
"Non-Gaussian processes and neural networks at finite widths".

How the pieces are computed, in float64:

* F by the closed forms of :mod:`ntk_lab.layers.activations` (relu: the arc-cosine kernel;
  gelu: neural-tangents' form; both re-written here without in-place operations, which the
  library duals use and autograd cannot follow; erf: the library dual; any other activation:
  :func:`ntk_lab.layers.gaussian.gaussian_expectations`, the differentiable Hermite series);
* J and H by torch autograd, batched over pairs (F acts pairwise, so the gradient of Σ_pairs
  F_i gives every pair's row of J, and again for H);
* C by a tensor-product Gauss–Hermite rule of ``QUADRATURE_NODES`` nodes per axis in the
  rotated coordinates u = √k11 z1, v = √k22 (ρ z1 + √(1 − ρ²) z2), z ~ N(0, I₂).

For relu the Hessian of F12 grows like 1/sin θ as the correlation ρ → ±1: the expansion is
singular for distinct inputs that are (numerically) parallel at some layer; a non-finite
result raises ``ValueError`` there. Identical inputs take the 1-D path and are fine.

Cost: O(N1·N2·depth·QUADRATURE_NODES²) for the Gauss–Hermite path (measured on one core:
3 ms per pair per layer for erf, 5 ms for tanh, 0.2 ms for relu), all pairs in a few batches;
meant for small sets, N ≲ 64 points (64² pairs at depth 3 ≈ 40 s for erf).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch import Tensor

from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.layers.gaussian import gaussian_expectations, gaussian_moments

QUADRATURE_NODES = 200
"""Gauss–Hermite nodes per axis for the fourth moments in C(k). For smooth activations the rule
is exact to rounding at this order: for erf at k = (1, 0.3, 2) the largest error of an entry of
C against scipy's dblquad is 1.5e-15 relative to the largest entry (6e-6 with 50 nodes, 8e-11
with 100). relu is not computed this way: its kink along the oblique line v = 0 leaves the
tensor-product rule an error ≈ 0.05/nodes (2.6e-4 at 200 nodes); it has its own exact polar
form, :func:`_relu_fourth_moment_covariance`."""
RELU_ANGLE_NODES = 64
"""Gauss–Legendre nodes of the angular integral of relu's fourth moments (exact to rounding:
the integrand is a trigonometric polynomial of degree 4 on a kink-free range)."""
_PAIR_CHUNK = 16  # pairs per chunk of the quadrature grid (16 × 200² × 3 doubles ≈ 15 MB)
_JACOBIAN_CHUNK = 256  # pairs per autograd graph of F's derivatives (256 × 64² grid: ~8 MB a tensor)


def _relu_pair(k11: Tensor, k12: Tensor, k22: Tensor) -> Tensor:
    """E[relu(u) relu(v)] = (√(k11 k22 − k12²) + (π − θ) k12)/(2π), π − θ = atan2(s sin θ, −k12)
    (Cho & Saul 2009), out of place so that autograd follows it (smooth for |ρ| < 1)."""
    ssin = torch.sqrt((k11 * k22 - k12 * k12).clamp_min(0.0))
    return (ssin + torch.atan2(ssin, -k12) * k12) / (2.0 * math.pi)


def _gelu_pair(k11: Tensor, k12: Tensor, k22: Tensor) -> Tensor:
    """E[gelu(u) gelu(v)] = (c A + (c² + a b Δ²)/(P Δ))/(2π) with a, b, c = k11, k22, k12,
    P = (1 + a)(1 + b), Δ² = P − c² ≥ 1, A = atan2(Δ, −c) (neural-tangents' Gelu kernel, as in
    :mod:`ntk_lab.layers.activations`), out of place; smooth for all |ρ| ≤ 1."""
    p = (1.0 + k11) * (1.0 + k22)
    delta2 = p - k12 * k12
    delta = torch.sqrt(delta2)
    angle = torch.atan2(delta, -k12)
    return (k12 * angle + (k12 * k12 + k11 * k22 * delta2) / (p * delta)) / (2.0 * math.pi)


def _second_moment(act: Activation, k11: Tensor, k12: Tensor, k22: Tensor) -> Tensor:
    """E[φ(u)φ(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]]), differentiable by autograd."""
    if act.name == "relu":
        return _relu_pair(k11, k12, k22)
    if act.name == "gelu":
        return _gelu_pair(k11, k12, k22)
    if act.dual is None:
        return _grid_pair(act, k11, k12, k22)
    return gaussian_expectations(act, k11, k12, k22)[0]


def _square_moment(act: Activation, k: Tensor) -> Tensor:
    """E[φ(u)²], u ~ N(0, k), differentiable by autograd (relu: k/2)."""
    if act.name == "relu":
        return 0.5 * k
    if act.name == "gelu":
        return _gelu_pair(k, k, k)
    if act.dual is None:
        z, w = _hermite_rule(GRID_NODES)
        return (act.fn(torch.sqrt(k.clamp_min(0.0))[..., None] * z).double() ** 2) @ w
    return gaussian_moments(act, k)[0]


GRID_NODES = 64
"""Gauss–Hermite nodes per axis of E[φ(u)φ(v)] for an activation without a closed form (tanh,
sigmoid, a user's), where J and H come by autograd through the rule (F's values still come from
the library's exact series). The series, differentiated twice by autograd, took 6.9 s and
5.7 GB for 2016 pairs (tanh); the rule takes 4 s and < 1 GB. For tanh, the slowest to converge
(analytic only in a strip), J and H with 64 nodes are within 4.5e-4 and 7e-5 relative of a
200-node rule. That is far below any Monte-Carlo check of the corrections (~1 %)."""


def symmetric_root_nodes(k11: Tensor, k12: Tensor, k22: Tensor, z: Tensor) -> Tuple[Tensor, Tensor]:
    """(u, v) = K^{1/2} (z1, z2) on the tensor grid z ⊗ z, with the symmetric square root
    K^{1/2} = (K + s I)/t, s = √det K, t = √(tr K + 2s): a rule that is exactly symmetric under
    swapping the two inputs (k11 ↔ k22 swaps u and v on the mirrored grid), and differentiable in
    k while det K > 0. Returns two (P, M, M) tensors."""
    s = torch.sqrt((k11 * k22 - k12 * k12).clamp_min(1e-300))
    t = torch.sqrt(k11 + k22 + 2.0 * s)
    a, b, c = ((k11 + s) / t)[:, None, None], (k12 / t)[:, None, None], ((k22 + s) / t)[:, None, None]
    z1, z2 = z[:, None], z[None, :]
    return a * z1 + b * z2, b * z1 + c * z2


def _grid_pair(act: Activation, k11: Tensor, k12: Tensor, k22: Tensor) -> Tensor:
    """E[φ(u)φ(v)] by the ``GRID_NODES``² rule in :func:`symmetric_root_nodes`,
    differentiable by autograd in (k11, k12, k22)."""
    z, w = _hermite_rule(GRID_NODES)
    u, v = symmetric_root_nodes(k11, k12, k22, z)
    return (act.fn(u).double() * act.fn(v).double() * (w[:, None] * w[None, :])).sum((1, 2))


def _state_map(act: Activation, k: Tensor, w2: float, b2: float) -> Tensor:
    """F(k) for a batch of states: k (P, 3) -> (P, 3), or k (P, 1) -> (P, 1) (1-D state)."""
    if k.shape[1] == 1:
        return b2 + w2 * _square_moment(act, k)
    k11, k12, k22 = k.unbind(1)
    return b2 + w2 * torch.stack([_square_moment(act, k11), _second_moment(act, k11, k12, k22),
                                  _square_moment(act, k22)], dim=1)


def _jacobian_hessian(act: Activation, k: Tensor, w2: float, b2: float):
    """(F(k), J, H) per state: (P, D), (P, D, D) with J[p, i, a] = ∂F_i/∂k_a, and (P, D, D, D)
    with H[p, i, a, b] = ∂²F_i/∂k_a∂k_b, by autograd of Σ_p F_i(k_p) (F acts per state)."""
    if k.shape[0] > _JACOBIAN_CHUNK:  # bounded autograd graphs: pairs are independent
        parts = [_jacobian_hessian(act, k[s:s + _JACOBIAN_CHUNK], w2, b2)
                 for s in range(0, k.shape[0], _JACOBIAN_CHUNK)]
        return tuple(torch.cat(part) for part in zip(*parts))
    p, dim = k.shape
    with torch.enable_grad():
        k = k.detach().clone().requires_grad_(True)
        f = _state_map(act, k, w2, b2)
        jac = k.new_zeros(p, dim, dim)
        hess = k.new_zeros(p, dim, dim, dim)
        for i in range(dim):
            (g,) = torch.autograd.grad(f[:, i].sum(), k, create_graph=True)
            jac[:, i] = g.detach()
            for a in range(dim):
                if not g.requires_grad:  # F_i linear in k (e.g. relu's k/2): H_i = 0
                    break
                (h,) = torch.autograd.grad(g[:, a].sum(), k, retain_graph=True, allow_unused=True)
                if h is not None:
                    hess[:, i, a] = h.detach()
    if act.dual is None:  # the values from the library's exact series, the derivatives from the rule
        f = _exact_state_map(act, k.detach(), w2, b2)
    return f.detach(), jac, hess


def _exact_state_map(act: Activation, k: Tensor, w2: float, b2: float) -> Tensor:
    """F(k) by :func:`ntk_lab.layers.gaussian.gaussian_expectations` (the Hermite series, exact to
    ~1e-12), without autograd."""
    if k.shape[1] == 1:
        return b2 + w2 * gaussian_moments(act, k)[0]
    k11, k12, k22 = k.unbind(1)
    return b2 + w2 * torch.stack([gaussian_moments(act, k11)[0], gaussian_expectations(act, k11, k12, k22)[0],
                                  gaussian_moments(act, k22)[0]], dim=1)


def _hermite_rule(nodes: int):
    z, w = hermegauss(nodes)
    return (torch.tensor(z, dtype=torch.float64), torch.tensor(w / math.sqrt(2.0 * math.pi),
                                                                 dtype=torch.float64))


UNIT_SPACING = 0.25
"""Largest spacing, in units of the pre-activation u itself, of :func:`scaled_rule`. An
activation's derivative has its own scale (erf's φ'⁴ ∝ e^{−4u²}, tanh's poles at u = ±iπ/2), so
a rule in z = u/√k must refine as the variance k grows: a fixed 48-node Gauss–Hermite rule gave
erf's E[φ'(u)⁴] 19 % low at k = 5 (100 nodes: 1.5 %). With this spacing, against scipy's quad
at k = 1: tanh's E[φ'(u)⁴] (sech⁸, a pole of order 8 at u = iπ/2, the hardest case) 3e-10
relative (8e-7 at spacing 1/3); erf's at k = 1, 5, 20 against its closed form (16/π²)/√(1 + 8k):
< 2e-15."""
SCALED_RULE_RANGE = 8.0
"""The rule covers |z| ≤ 8: the standard normal mass beyond is 1.2e-15."""


def scaled_rule(k_max: float, min_nodes: int = 64):
    """A uniform midpoint rule (z, w) for E[g(z)], z ~ N(0, 1), where g(z) = h(√k z) for
    variances k ≤ ``k_max``: spacing min(2·range/min_nodes, UNIT_SPACING/√k_max) in z, no node
    at z = 0 (a kinked φ' is then integrated cell by cell), weights ϕ(z)·spacing normalized to
    1. The trapezoid-type rule is spectrally accurate for smooth integrands that decay."""
    span = 2.0 * SCALED_RULE_RANGE
    nodes = max(min_nodes, math.ceil(span * math.sqrt(max(k_max, 0.0)) / UNIT_SPACING))
    nodes += nodes % 2
    z = (torch.arange(nodes, dtype=torch.float64) + 0.5) * (span / nodes) - SCALED_RULE_RANGE
    w = torch.exp(-0.5 * z * z)
    return z, w / w.sum()


def fourth_moment_covariance(act: str | Activation, k: Tensor, *,
                             nodes: int = QUADRATURE_NODES) -> Tensor:
    """C(k) = Cov[(φ(u)², φ(u)φ(v), φ(v)²)] under (u, v) ~ N(0, [[k11, k12], [k12, k22]]).

    Args:
        act: activation name or :class:`Activation`.
        k: states, (P, 3) rows (k11, k12, k22), or (P, 1) for the 1-D state, where the result
            is Var[φ(u)²], u ~ N(0, k11).
        nodes: Gauss–Hermite nodes per axis (probabilists' weight).

    Returns:
        (P, 3, 3), or (P, 1, 1) for the 1-D state: Σ_m w_m (g_a − μ_a)(g_b − μ_b) with
        g = (φ(u)², φ(u)φ(v), φ(v)²) at the nodes of u = √k11 z1,
        v = √k22 (ρ z1 + √(1 − ρ²) z2), ρ = k12/√(k11 k22) (0 when k11 k22 = 0).
    """
    act = get_activation(act)
    k = k.detach().to(torch.float64)
    if act.name == "relu" and k.shape[1] == 3:
        return _relu_fourth_moment_covariance(k)
    z, w = _hermite_rule(nodes)
    if k.shape[1] == 1:
        g = act.fn(torch.sqrt(k.clamp_min(0.0)) * z).to(torch.float64) ** 2  # (P, M)
        mu = g @ w
        return (((g - mu[:, None]) ** 2) @ w)[:, None, None]
    out = []
    for start in range(0, k.shape[0], _PAIR_CHUNK):
        k11, k12, k22 = k[start:start + _PAIR_CHUNK].unbind(1)
        rho = _correlation(k11, k12, k22)
        z1, z2 = z[:, None], z[None, :]  # grid (M, M)
        u = torch.sqrt(k11.clamp_min(0.0))[:, None, None] * z1
        v = torch.sqrt(k22.clamp_min(0.0))[:, None, None] * (rho[:, None, None] * z1
                                                            + torch.sqrt(1.0 - rho * rho)[:, None, None] * z2)
        fu, fv = act.fn(u).to(torch.float64), act.fn(v).to(torch.float64)
        fu = fu.expand_as(fv)
        g = torch.stack([fu * fu, fu * fv, fv * fv], dim=1)  # (p, 3, M, M)
        ww = w[:, None] * w[None, :]
        mu = (g * ww).sum(dim=(-2, -1))
        c = g - mu[..., None, None]
        out.append(torch.einsum("pamn,pbmn,mn->pab", c, c, ww))
    return torch.cat(out)


def _correlation(k11: Tensor, k12: Tensor, k22: Tensor) -> Tensor:
    """ρ = k12/√(k11 k22), clamped to [−1, 1]; 0 where a variance is 0."""
    prod = k11 * k22
    return torch.where(prod > 0, k12 / torch.sqrt(torch.where(prod > 0, prod, torch.ones_like(prod))),
                       torch.zeros_like(prod)).clamp(-1.0, 1.0)


def _relu_polar_grid(k: Tensor):
    """The polar-coordinate rule of relu's joint moments for states k (P, 3): with
    θ = arccos ρ, the Gauss–Legendre nodes α of [θ − π/2, π/2] (where both cosines are
    positive), returns (cos α, cos(α − θ), the rule's weights times its half-length (P, Q)·(Q,)
    folded as ``weights`` (P, Q)), so that ∫ g(α) dα ≈ Σ_q weights[p, q] g(α_q)."""
    x, wl = np.polynomial.legendre.leggauss(RELU_ANGLE_NODES)
    x, wl = torch.tensor(x, dtype=torch.float64), torch.tensor(wl, dtype=torch.float64)
    k11, k12, k22 = k.unbind(1)
    theta = torch.arccos(_correlation(k11, k12, k22))
    half = 0.5 * (math.pi - theta)  # the range's half-length, (π − θ)/2 ≥ 0
    alpha = (theta - 0.5 * math.pi + half)[:, None] + half[:, None] * x  # (P, Q)
    cu, cv = torch.cos(alpha).clamp_min(0.0), torch.cos(alpha - theta[:, None]).clamp_min(0.0)
    return cu, cv, half[:, None] * wl


def _relu_fourth_moment_covariance(k: Tensor) -> Tensor:
    """C(k) for relu, (P, 3) -> (P, 3, 3), in polar coordinates (exact to rounding).

    With z = r (cos α, sin α), u = √k11 r cos α and v = √k22 r cos(α − θ), θ = arccos ρ ∈ [0, π].
    relu is positively homogeneous, so for a + b = 2p

        E[relu(u)^a relu(v)^b] = k11^{a/2} k22^{b/2} E[r^{2p}]/(2π) ∫_{θ−π/2}^{π/2} cos^a α cos^b(α − θ) dα,

    E[r²] = 2, E[r⁴] = 8 (r² ~ χ²₂), a, b ≥ 1, the range being where both cosines are positive
    (for b = 0: E[relu(u)²] = k11/2, E[relu(u)⁴] = 3k11²/2, and the same for a = 0). The
    integrand is an entire function of α, so ``RELU_ANGLE_NODES``-point Gauss–Legendre is exact
    to rounding; no kink is left inside the range, unlike the Gauss–Hermite grid.
    """
    k11, _, k22 = k.unbind(1)
    cu, cv, weights = _relu_polar_grid(k)
    r1, r2 = torch.sqrt(k11.clamp_min(0.0)), torch.sqrt(k22.clamp_min(0.0))

    def moment(a: int, b: int) -> Tensor:
        if a == 0 or b == 0:  # one variable: E[relu(u)²] = k/2, E[relu(u)⁴] = 3k²/2
            q, p = (k22, b // 2) if a == 0 else (k11, a // 2)
            return 0.5 * q if p == 1 else 1.5 * q * q
        radial = {2: 2.0, 4: 8.0}[a + b]
        angular = ((cu ** a) * (cv ** b) * weights).sum(1) / (2.0 * math.pi)
        return r1 ** a * r2 ** b * radial * angular

    powers = [(2, 0), (1, 1), (0, 2)]
    second = [moment(a, b) for a, b in powers]
    out = k.new_empty(k.shape[0], 3, 3)
    for i, (a1, b1) in enumerate(powers):
        for j, (a2, b2) in enumerate(powers):
            out[:, i, j] = moment(a1 + a2, b1 + b2) - second[i] * second[j]
    return out


def _propagate(act: Activation, k: Tensor, depth: int, w2: float, b2: float):
    """Run the (K, m, S) recursion for a batch of states k = Σ¹, (P, D); returns (K, m, S) at
    layer depth + 1: (P, D), (P, D), (P, D, D)."""
    p, dim = k.shape
    m = k.new_zeros(p, dim)
    s = k.new_zeros(p, dim, dim)
    for _ in range(depth):
        f, jac, hess = _jacobian_hessian(act, k, w2, b2)
        c = fourth_moment_covariance(act, k)
        m = torch.einsum("pia,pa->pi", jac, m) + 0.5 * torch.einsum("piab,pab->pi", hess, s)
        s = w2 * w2 * c + jac @ s @ jac.transpose(1, 2)
        k = f
    return k, m, s


def checked_inputs(x1: Tensor, x2: Optional[Tensor], depth) -> Tuple[Tensor, Tensor]:
    """(x1, x2) as float64 (N, d) tensors (x2 None: x1), after checking depth ≥ 1 and the shapes."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    x1 = torch.as_tensor(x1).detach().to(torch.float64)
    x2 = x1 if x2 is None else torch.as_tensor(x2).detach().to(torch.float64)
    if x1.dim() != 2 or x2.dim() != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1, x2 must be (N, d) with the same d, got {tuple(x1.shape)}, {tuple(x2.shape)}")
    return x1, x2


def pairwise(x1: Tensor, x2: Optional[Tensor], w2: float, b2: float, propagate) -> list[Tensor]:
    """Run ``propagate(k)`` over every pair (x1_i, x2_j) and scatter its outputs into (N1, N2)
    tensors: identical inputs as the 1-D state k = (Σ¹(x, x)) (P, 1), taking the outputs' entry
    [0] (or [0, 0]); distinct ones as (Σ¹11, Σ¹12, Σ¹22) (P, 3), taking [1] (or [1, 1], the
    cross entry). With x2 None only the pairs above the diagonal run, mirrored.

    ``propagate`` maps states (P, D) to a tuple of (P,) values, or (P, D) / (P, D, D) tensors
    over the state's entries; x1, x2 are float64 (N, d) (:func:`checked_inputs`)."""
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    d = x1.shape[1]
    q1, q2 = w2 * (x1 * x1).sum(1) / d + b2, w2 * (x2 * x2).sum(1) / d + b2
    q12 = w2 * (x1 @ x2.T) / d + b2
    same = (x1[:, None, :] == x2[None, :, :]).all(-1)
    distinct = ~same & (torch.ones_like(same).triu(1) if symmetric else True)
    results = None
    for mask, k, index in ((same, lambda r, c: q1[r, None], 0),
                           (distinct, lambda r, c: torch.stack([q1[r], q12[r, c], q2[c]], dim=1), 1)):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        if not rows.numel():
            continue
        outputs = propagate(k(rows, cols))
        if results is None:
            results = [torch.full((len(x1), len(x2)), float("nan"), dtype=torch.float64) for _ in outputs]
        for result, value in zip(results, outputs):
            if value.dim() > 1:  # a state's entries: its cross entry (or the 1-D one)
                value = value[:, index] if value.dim() == 2 else value[:, index, index]
            result[rows, cols] = value
            if symmetric and index == 1:
                result[cols, rows] = value
    return results


def nngp_finite_width_corrections(x1: Tensor, x2: Optional[Tensor] = None, *,
                                  activation: str | Activation = "relu", depth: int,
                                  w_std: float = 1.0, b_std: float = 0.0) -> Dict[str, Tensor]:
    """The O(1/n) mean and the variance of the width-n MLP's NNGP at initialization.

    For the empirical NNGP K̂^{depth+1}(x, x') (module docstring) of the ``ntk``-parameterized
    MLP of width n:

        E[K̂(x, x')]   = Σ^{depth+1}(x, x') + m(x, x')/n + O(1/n²)
        n·Var[K̂(x, x')] = V(x, x') + O(1/n)

    with m = m_12 and V = S_{12,12} of the recursion m^{l+1} = J m^l + ½ H:S^l,
    S^{l+1} = σ_w⁴ C(K^l) + J S^l Jᵀ (Roberts, Yaida & Hanin 2022, ch. 4, as a delta method).
    Pairs with x = x' (identical rows) use the 1-D state.

    Args:
        x1: inputs, (N1, d); x2: (N2, d) or None for x1.
        activation: a name or :class:`Activation`; relu, gelu (own differentiable closed forms),
            erf (the library dual) and the Hermite-series activations (tanh, ...).
        depth: hidden layers (≥ 1). w_std, b_std: σ_w, σ_b in every layer.

    Returns:
        dict with float64 (N1, N2) tensors ``nngp`` (Σ^{depth+1}), ``nngp_mean_correction`` (m)
        and ``nngp_variance`` (V). Loops over the N1·N2 pairs in batches: meant for N ≲ 64.

    Raises:
        ValueError: depth < 1, mismatched inputs, or a non-finite correction (relu on distinct
            inputs that are parallel at some layer, where the expansion is singular).
    """
    act = get_activation(activation)
    x1, x2 = checked_inputs(x1, x2, depth)
    n1, d = x1.shape
    n2 = x2.shape[0]
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2
    q1 = w2 * (x1 * x1).sum(1) / d + b2
    q2 = w2 * (x2 * x2).sum(1) / d + b2
    q12 = w2 * (x1 @ x2.T) / d + b2
    same = (x1[:, None, :] == x2[None, :, :]).all(-1)  # (N1, N2): identical inputs

    nngp = torch.empty(n1, n2, dtype=torch.float64)
    mean = torch.empty_like(nngp)
    var = torch.empty_like(nngp)
    rows, cols = torch.nonzero(same, as_tuple=True)
    if rows.numel():
        k, m, s = _propagate(act, q1[rows, None], depth, w2, b2)
        nngp[rows, cols], mean[rows, cols], var[rows, cols] = k[:, 0], m[:, 0], s[:, 0, 0]
    rows, cols = torch.nonzero(~same, as_tuple=True)
    if rows.numel():
        k0 = torch.stack([q1[rows], q12[rows, cols], q2[cols]], dim=1)
        k, m, s = _propagate(act, k0, depth, w2, b2)
        nngp[rows, cols], mean[rows, cols], var[rows, cols] = k[:, 1], m[:, 1], s[:, 1, 1]
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise ValueError("non-finite 1/n correction: for relu, distinct inputs that are parallel "
                         "(|ρ| = 1) at some layer make the expansion singular")
    return {"nngp": nngp, "nngp_mean_correction": mean, "nngp_variance": var}
