"""Gaussian moments of one hidden unit, for the finite-width NTK recursions.

For a pair state k = (k11, k12, k22) (or the 1-D state k of an input with itself) and
(u, v) ~ N(0, [[k11, k12], [k12, k22]]) — one unit's pre-activations on the two inputs — these
are the expectations that :mod:`ntk_lab.kernels.finite_width_ntk` combines into V_Θ and Θ^(1):

* :func:`unit_moments`: mean and covariance of the unit term g = (σ_b² + σ_w² φφ…, φ'(u)φ'(v))
  whose layer average moves the shared kernels;
* :func:`derivative_gradient`, :func:`derivative_hessian`: ∇Ḃ and ∇²Ḃ of Ḃ(k) = E[φ'(u)φ'(v)]
  by central differences of its closed form (or the library's Hermite series);
* :func:`correlation_moments`: E[φ(w_α)φ(w_β)φ'(u)φ'(v)] and the Stein coefficients
  E[φ(w_α)φ'(u)(K⁻¹w)_γ], E[φ(w_β)φ'(v)(K⁻¹w)_δ] (w = (u, v)), which carry the O(1/n)
  correlation between a unit's NTK entries and its own pre-activations.

relu is computed exactly in polar coordinates (its kink defeats a tensor-product rule); the
others by a tensor-product midpoint rule (:func:`ntk_lab.kernels.finite_width.scaled_rule`) whose
spacing follows the largest variance in the batch, at least ``NODES`` per axis: a derivative
keeps its own scale in u, so a fixed rule in z = u/√k loses it as k grows (a 48-node
Gauss–Hermite rule, used here before, gave erf's E[φ'(u)⁴] 19 % low at k = 5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ntk_lab.kernels.finite_width import (
    _correlation, _PAIR_CHUNK, _relu_polar_grid, scaled_rule, symmetric_root_nodes,
)
from ntk_lab.layers.activations import Activation
from ntk_lab.layers.gaussian import gaussian_expectations

NODES = 48
"""Fewest nodes per axis of the unit moments' rule (more where a variance exceeds ~0.4: the
spacing in u is at most ``UNIT_SPACING``). A run computes V_Θ on every pair of its probe set, and
the 2-D rule's cost grows as the nodes squared (128 points at depth 3 with erf, all variances
≲ 1: 2.3 s)."""


def _rule(k: Tensor):
    """(z, w, pairs per chunk) for the states k (P, D): the rule resolves the largest variance."""
    diagonal = k[:, [0, -1]] if k.shape[1] == 3 else k[:, :1]
    z, w = scaled_rule(float(diagonal.max()) if k.numel() else 1.0, NODES)
    return z, w, max(1, int(_PAIR_CHUNK * (NODES / len(z)) ** 2))
FD_STEP = 1e-5
"""Relative step of the central differences that give ∇Ḃ (∂E[φ'φ']/∂k): the truncation error
is ~step² relative (1e-10), far below the Monte-Carlo precision any check of V reaches."""
HESSIAN_STEP = 1e-4
"""Relative step of the second differences that give ∇²Ḃ: truncation ~step² (1e-8) and
rounding ~1e-16/step² (1e-8) balance here; both far below the Monte-Carlo precision of Θ^(1)."""


# --------------------------------------------------------------------------- unit moments
def unit_moments(act: Activation, k: Tensor, w2: float, b2: float):
    """Mean and covariance of the unit term g under N(0, k), per state.

    k: (P, 3) pair states, g = (b2 + w2 φ(u)², b2 + w2 φ(u)φ(v), b2 + w2 φ(v)², φ'(u)φ'(v)); or
    (P, 1), g = (b2 + w2 φ(u)², φ'(u)²). Returns (mean (P, D), cov (P, D, D), e4 (P,), b11, b22)
    with e4 = E[φ'(u)² φ'(v)²] and b11, b22 = E[φ'(u)²], E[φ'(v)²].
    """
    if act.name == "relu":
        return _relu_unit_moments(k, w2, b2)
    z, w, chunk = _rule(k)
    means, covs, e4s, b11s, b22s = [], [], [], [], []
    for start in range(0, k.shape[0], chunk):
        kk = k[start:start + chunk]
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
    """:func:`unit_moments` for relu, exact: E[relu(u)^a relu(v)^b 1(u>0) 1(v>0)] in polar
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


def _bdot(act: Activation, k: Tensor, rule) -> Tensor:
    """Ḃ(k) = E[φ'(u)φ'(v)] per state: (P, 3) -> (P,), or the 1-D (P, 1) -> (P,).

    The 1-D state takes a 1-D Gauss–Hermite rule of E[φ'(u)²], not the pair dual at ρ = 1: there
    the duals of kinked activations (relu's arccos ρ) turn the rounding of ρ = k/√(k·k) into
    ~1e-9 noise, which second differences amplify to O(1). An even rule is exact for the kinked
    ones (φ'² piecewise constant, no node at the kink) and converges fast for the smooth ones."""
    if k.shape[1] == 1:
        z, w, _ = rule
        u = torch.sqrt(k[:, :1].clamp_min(0.0)) * z
        return act.derivative(u).double().pow(2) @ w
    if act.dual is None:  # no closed form: the tensor-product rule (the Hermite series re-derives
        return _bdot_grid(act, k, rule)  # its coefficients per call, ~30× slower under differences)
    return gaussian_expectations(act, k[:, 0], k[:, 1], k[:, 2])[1]


def _bdot_grid(act: Activation, k: Tensor, rule) -> Tensor:
    """Ḃ(k) for pair states (P, 3) by the tensor-product ``rule``: a smooth function of k (the
    nodes move with k), so its central differences are accurate to ~step²."""
    z, w, chunk = rule
    ww = w[:, None] * w[None, :]
    out = k.new_empty(k.shape[0])
    for start in range(0, k.shape[0], chunk):
        u, v = symmetric_root_nodes(*k[start:start + chunk].unbind(1), z)  # swap-symmetric rule
        out[start:start + chunk] = (act.derivative(u).double() * act.derivative(v).double() * ww).sum((1, 2))
    return out


def _steps(k: Tensor, rel: float) -> Tensor:
    """One step per state, ``rel`` times its largest entry (P,)."""
    return rel * k.abs().max(1).values.clamp_min(1e-300)


def derivative_gradient(act: Activation, k: Tensor) -> Tensor:
    """∇Ḃ(k), Ḃ = E[φ'(u)φ'(v)], by central differences: (P, 3) -> (P, 3); (P, 1) -> (P, 1)."""
    grad = torch.empty_like(k)
    h = _steps(k, FD_STEP)
    rule = _rule(k)  # one rule for every shifted state: the differences see no change of nodes
    for a in range(k.shape[1]):
        step = torch.zeros_like(k)
        step[:, a] = h
        grad[:, a] = (_bdot(act, k + step, rule) - _bdot(act, k - step, rule)) / (2.0 * h)
    return grad


def derivative_hessian(act: Activation, k: Tensor) -> Tensor:
    """∇²Ḃ(k) by central second differences: (P, 3) -> (P, 3, 3); (P, 1) -> (P, 1, 1)."""
    dim = k.shape[1]
    h = _steps(k, HESSIAN_STEP)
    unit = [torch.zeros_like(k) for _ in range(dim)]
    for a in range(dim):
        unit[a][:, a] = h
    hess = k.new_empty(k.shape[0], dim, dim)
    rule = _rule(k)
    center = _bdot(act, k, rule)
    for a in range(dim):
        hess[:, a, a] = (_bdot(act, k + unit[a], rule) - 2.0 * center + _bdot(act, k - unit[a], rule)) / (h * h)
        for b in range(a + 1, dim):
            plus, minus = unit[a] + unit[b], unit[a] - unit[b]
            hess[:, a, b] = hess[:, b, a] = (_bdot(act, k + plus, rule) - _bdot(act, k + minus, rule)
                                             - _bdot(act, k - minus, rule) + _bdot(act, k - plus, rule)) / (4.0 * h * h)
    return hess


# --------------------------------------------------------------------------- correlation moments
def correlation_moments(act: Activation, k: Tensor):
    """The moments that carry a unit's O(1/n) NTK–pre-activation correlation.

    For a pair state k (P, 3), w = (u, v) ~ N(0, K), K = [[k11, k12], [k12, k22]]:

        e4[p, α, β] = E[φ(w_α) φ(w_β) φ'(u) φ'(v)]                       (P, 2, 2)
        left[p, α, γ] = E[φ(w_α) φ'(u) (K⁻¹w)_γ],  right[p, β, δ] = E[φ(w_β) φ'(v) (K⁻¹w)_δ]

    (by Stein's lemma left = E[∂_γ(φ(w_α)φ'(u))] where φ is smooth). For the 1-D state (P, 1),
    u = v ~ N(0, k): e4 = E[φ(u)²φ'(u)²] and left = right = E[φ(u)φ'(u)u]/k, each (P, 1, 1).
    """
    if k.shape[1] == 1:
        q = k[:, 0]
        if act.name == "relu":
            e4, stein = 0.5 * q, torch.full_like(q, 0.5)  # E[relu²·1] = k/2; E[relu·u]/k = 1/2
        else:
            z, w, _ = _rule(k)
            u = torch.sqrt(q.clamp_min(0.0))[:, None] * z
            fu, du = act.fn(u).double(), act.derivative(u).double()
            e4 = (fu * fu * du * du) @ w
            stein = (fu * du * u) @ w / q
        return e4[:, None, None], stein[:, None, None], stein[:, None, None]
    raw = _relu_correlation_moments(k) if act.name == "relu" else _smooth_correlation_moments(act, k)
    e4, m_left, m_right = raw  # m[p, α, γ] = E[f_α(w) w_γ]
    k11, k12, k22 = k.unbind(1)
    det = k11 * k22 - k12 * k12
    inv = torch.stack([torch.stack([k22, -k12], 1), torch.stack([-k12, k11], 1)], 1) / det[:, None, None]
    return e4, m_left @ inv, m_right @ inv


def _smooth_correlation_moments(act: Activation, k: Tensor):
    """(e4, E[φ(w_α)φ'(u) w_γ], E[φ(w_β)φ'(v) w_δ]) by the tensor-product rule :func:`_rule`."""
    z, w, chunk = _rule(k)
    ww = (w[:, None] * w[None, :]).flatten()
    out = []
    for start in range(0, k.shape[0], chunk):
        k11, k12, k22 = k[start:start + chunk].unbind(1)
        rho = _correlation(k11, k12, k22)
        z1, z2 = z[:, None], z[None, :]
        u = (torch.sqrt(k11.clamp_min(0.0))[:, None, None] * z1).expand(-1, len(z), len(z)).flatten(1)
        v = (torch.sqrt(k22.clamp_min(0.0))[:, None, None] * (
            rho[:, None, None] * z1 + torch.sqrt(1.0 - rho * rho)[:, None, None] * z2)).flatten(1)
        f = torch.stack([act.fn(u).double(), act.fn(v).double()], 1)  # (p, 2, M²): φ(w_α)
        du, dv = act.derivative(u).double(), act.derivative(v).double()
        wv = torch.stack([u, v], 1)  # (p, 2, M²)
        e4 = torch.einsum("pam,pbm,m->pab", f, f * (du * dv)[:, None], ww)
        left = torch.einsum("pam,pgm,m->pag", f * du[:, None], wv, ww)
        right = torch.einsum("pam,pgm,m->pag", f * dv[:, None], wv, ww)
        out.append((e4, left, right))
    return tuple(torch.cat(parts) for parts in zip(*out))


def _relu_correlation_moments(k: Tensor):
    """:func:`_smooth_correlation_moments` for relu, exact: every entry is E[u^a v^b] over the
    quadrant u, v > 0 (polar rule) or a one-variable moment (E[relu(u) u] = k11/2,
    E[relu(u) v] = k12/2 by Stein's lemma)."""
    k11, k12, k22 = k.unbind(1)
    cu, cv, weights = _relu_polar_grid(k)
    r1, r2 = torch.sqrt(k11.clamp_min(0.0)), torch.sqrt(k22.clamp_min(0.0))

    def quadrant(a: int, b: int) -> Tensor:  # E[u^a v^b 1(u>0) 1(v>0)], a + b = 2
        return r1 ** a * r2 ** b * 2.0 * ((cu ** a) * (cv ** b) * weights).sum(1) / (2.0 * math.pi)

    q20, q11, q02 = quadrant(2, 0), quadrant(1, 1), quadrant(0, 2)
    e4 = torch.stack([torch.stack([q20, q11], 1), torch.stack([q11, q02], 1)], 1)
    # f_1 = relu(u) (1(u>0) is implied), f_2 = relu(v) 1(u>0); g_1 = relu(u) 1(v>0), g_2 = relu(v)
    left = torch.stack([torch.stack([0.5 * k11, 0.5 * k12], 1), torch.stack([q11, q02], 1)], 1)
    right = torch.stack([torch.stack([q20, q11], 1), torch.stack([0.5 * k12, 0.5 * k22], 1)], 1)
    return e4, left, right
