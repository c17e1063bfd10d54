"""The variance of a finite-width residual MLP's NTK at initialization: n·Var[Θ̂(x, x')] → V_Θ.

The residual MLP of :mod:`ntk_lab.kernels.finite_width_residual` (``ntk`` parameterization,
width n, β the branch scale, σ_w, σ_b in every Dense layer, W, b ~ N(0, 1)):

    h¹ = σ_w W⁰x/√d + σ_b b⁰,   h^{m+1} = h^m + β u^m,   u^m = σ_w W^m φ(h^m)/√n + σ_b b^m,
    f = σ_w w·φ(h^{L+1})/√n + σ_b b,        m = 1…L.

The NTK of the hidden state h^m (all parameters below it), Θ̂^m_ij, obeys, exactly at every width,

    Θ̂^{m+1}_ij = Θ̂^m_ij + (βσ_w/√n) [Σ_a W_ia φ'_a(x) Θ̂^m_aj + Σ_b W_jb φ'_b(x') Θ̂^m_ib]
                + (β²σ_w²/n) Σ_ab W_ia W_jb φ'_a(x) φ'_b(x') Θ̂^m_ab + β² δ_ij Ĝ^m_12,

Θ̂¹_ij = δ_ij Σ¹(x, x') (W^m is fresh: independent of everything at layers ≤ m), and the readout
Θ̂ = Ĝ^{L+1}_12 + (σ_w²/n) Σ_ab w_a w_b φ'_a φ'_b Θ̂^{L+1}_ab. At leading order in 1/n the
fluctuation of Θ̂ about Θ_∞ has three uncorrelated sources, as for the MLP
(:mod:`ntk_lab.kernels.finite_width_ntk`):

1. The shared layer averages. The mean diagonal T̂^m = (1/n) Σ_i Θ̂^m_ii moves as

       T̂^{m+1} = T̂^m (1 + β²σ_w² B̂^m) + β² Ĝ^m_12 + O(1/n),   T̂¹ = Σ¹_12,

   B̂^m = (1/n) Σ_j φ'(h^m_j(x)) φ'(h^m_j(x')): the terms linear in W^m average to O(1/n) (fresh
   weights), and a unit's own O(1/√n) diagonal noise averages out. So the shared part
   Φ = Ĝ^{L+1}_12 + σ_w² B̂^{L+1} T̂^{L+1} is a smooth functional of the units' empirical measure,
   like the residual NNGP, whose units persist along the skip path. Its fluctuation is the mean
   of one unit's influence function: with IF_m the NNGP's (the influence on Ĝ^m) and
   R_m = Σ_{k<m} IF_k,

       IF^B_m = e^B_m + β² ∇Ḃ(K^m)·R_m,   e^B_m = φ'φ'(h^m) − E[φ'φ'(h^m)],
       δT^{m+1} = δT^m (1 + β²σ_w² B^m) + β² (σ_w² T^m IF^B_m + IF_m,12),   δT¹ = 0,
       IF_Φ = IF_{L+1,12} + σ_w² (B^{L+1} δT^{L+1} + T^{L+1} IF^B_{L+1}),

   a linear combination of the unit's centred statistics e_m = (ψ(h^m), φ'φ'(h^m)) − E at
   m = 1…L+1, whose covariances across layers are those of the residual NNGP extended by the
   component φ'φ' (the same smoothing by the independent increments): n·Var[Φ] → Var[IF_Φ].
2. The readout's diagonal term D = (σ_w²/n) Σ_a (w_a² − 1) φ'_a φ'_a Θ̂^{L+1}_aa:
   n·Var[D] → 2σ_w⁴ E[φ'(u)²φ'(v)²] (T^{L+1})².
3. The off-diagonal entries A_ab = Θ̂^{L+1}_ab (a ≠ b), O(1/√n), through
   O = (σ_w²/n) Σ_{a≠b} w_a w_b φ'_a(x) φ'_b(x') A_ab:
   n·Var[O] → σ_w⁴ (E[φ'_a(x)² φ'_b(x')² 𝒮(a, b)] + E[φ'φ'_a φ'φ'_b 𝒮'(a, b)]) over two
   independent units, with 𝒮(a, b) = n·E[A_ab(x, x')² | a, b] and 𝒮' = n·E[A_ab A_ba | a, b].
   A residual block keeps A^m and adds terms linear in the fresh W^m: the entries
   W_ab φ'_b(x) T^m and W_ba φ'_a(x') T^m, and sums over the other units. Unlike an MLP's, a
   unit here keeps its slopes along the skip path, so A_ab stays correlated with the slopes
   φ'(h_b^i(x)), φ'(h_a^i(x')) at every earlier layer i, and through them with the readout's:

       𝒮(a, b) = α + Σ_i p_i φ'(h_b^i(x))² + Σ_i q_i φ'(h_a^i(x'))²,
       𝒮'(a, b) = α' + Σ_i r_i (φ'φ'(h_a^i) + φ'φ'(h_b^i)),

   each block adding β²σ_w²(T^m)² to the new p, q, r, multiplying the old by 1 + β²σ_w²E[s^m]
   (s = φ'(x)², φ'(x')², φ'φ') and moving α, α' by the averages over the other units, which
   need a unit's slope products across layers E[s(h^m) s(h^i)ᵀ] (the cross-layer rule of the
   NNGP, uncentred). The recursion with those products factorized (slopes independent across
   layers) misses V_Θ by 6 % on the diagonal (erf, depth 2) — 6 standard errors of a
   40 000-network ensemble.

V_Θ = Var[IF_Φ] + (n·Var[D] + n·Var[O])/O at layer L+1 (O outputs: the trace-mode NTK averages
the readout's own terms over them). As β → 0 this is the
one-hidden-layer MLP's V_Θ. These are the NTK-variance recursions of Roberts, Yaida & Hanin,
*The Principles of Deep Learning Theory* (2022), ch. 8, and Hanin & Nica (2019), carried to
residual blocks in the lab's conventions; checked against brute-force ensembles in the tests.

The NTK mean correction Θ^(1), from the same influences (:func:`residual_influences`), is in
:mod:`ntk_lab.kernels.finite_width_residual_mean`.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ntk_lab.kernels.finite_width import _jacobian_hessian, pairwise
from ntk_lab.kernels.finite_width_moments import derivative_gradient, unit_moments
from ntk_lab.kernels.finite_width_residual import NODES, _cross_moments, residual_arguments
from ntk_lab.layers.activations import Activation


def _unit_covariances(act: Activation, k: list, w2: float, b2: float, nodes: int, hessians: bool = False):
    """Cov[e_a, e_c] (P, D+1, D+1) of one unit's statistics e = (ψ, φ'φ') at layers a ≥ c: the
    same layer exactly (:func:`unit_moments`), across layers by the increments' smoothing; with
    ``hessians`` also E[∇²ẽ_a(y)_h e_c(y)] (P, D+1, H, D+1) for a > c (the mean's self terms)."""
    cov, hess = {}, {}
    for a in range(len(k)):
        cov[(a, a)] = unit_moments(act, k[a], w2, b2)[1]
        for c in range(a):
            cov[(a, c)], hess[(a, c)] = _cross_moments(act, k[c], k[a] - k[c], w2, nodes, "ntk", hessian=hessians)
    return cov, hess


def _slope_products(act: Activation, k: list, w2: float, nodes: int) -> dict:
    """E[s(h^a) s(h^c)ᵀ] (P, 3, 3) for layers a > c of one unit's slopes
    s = (φ'(u)², φ'(v)², φ'(u)φ'(v)) (u, v its pre-activations on x, x'); for the 1-D state the
    three coincide and the single moment fills the matrix."""
    raw = {}
    for a in range(len(k)):
        for c in range(a):
            got = _cross_moments(act, k[c], k[a] - k[c], w2, nodes, "slopes", centred=False,
                                 hessian=False)[0]
            raw[(a, c)] = got if got.shape[1] == 3 else got.expand(-1, 3, 3)
    return raw


def _off_diagonal_terms(slopes: list, raw: dict, t: list, e4: list, beta2: float, w2: float):
    """The two summands of n·Var[O]/σ_w⁴, the readout's off-diagonal term (part 3 of the module
    docstring), per state (P,) each.

    n·E[A_ab(x, x')² | units a, b] = α + Σ_i p_i φ'(h_b^i(x))² + Σ_i q_i φ'(h_a^i(x'))², and
    n·E[A_ab A_ba | a, b] = α' + Σ_i r_i (φ'φ'(h_a^i) + φ'φ'(h_b^i)), over earlier layers i:
    a residual unit keeps its slopes along the skip path, so the fresh W^m's entries W_ab φ'_b T
    leave A_ab correlated with the slopes both units have at the readout. ``slopes[j]`` =
    E[s(h^j)] (P, 3), ``raw`` the products of :func:`_slope_products`, ``t[j]`` = T^j, ``e4[j]`` =
    E[φ'(u)²φ'(v)²] at layer j."""
    alpha, alpha_swap = torch.zeros_like(t[0]), torch.zeros_like(t[0])
    p, q, r = [], [], []
    last = len(slopes) - 1
    for j in range(last + 1):
        mu0, mu1, mu2 = slopes[j].unbind(1)
        # E_c[s_x(h^j_c) 𝒮(c, b)]-type constants: Σ_i coefficient_i E[s(h^j) s(h^i)] entries
        from_q = sum((q[i] * raw[(j, i)][:, 0, 1] for i in range(j)), torch.zeros_like(alpha))
        from_p = sum((p[i] * raw[(j, i)][:, 1, 0] for i in range(j)), torch.zeros_like(alpha))
        from_r = sum((r[i] * raw[(j, i)][:, 2, 2] for i in range(j)), torch.zeros_like(alpha))
        readout = (alpha * mu0 * mu1 + mu0 * from_p + mu1 * from_q,
                   alpha_swap * mu2 * mu2 + 2.0 * mu2 * from_r)
        if j == last:
            return readout
        tt = t[j] * t[j]
        alpha = (alpha + beta2 * w2 * (alpha * (mu0 + mu1) + from_q + from_p)
                 + beta2 * beta2 * w2 * w2 * (e4[j] * tt + readout[0]))
        alpha_swap = (alpha_swap + 2.0 * beta2 * w2 * (alpha_swap * mu2 + from_r)
                      + beta2 * beta2 * w2 * w2 * (e4[j] * tt + readout[1]))
        p = [c * (1.0 + beta2 * w2 * mu0) for c in p] + [beta2 * w2 * tt]
        q = [c * (1.0 + beta2 * w2 * mu1) for c in q] + [beta2 * w2 * tt]
        r = [c * (1.0 + beta2 * w2 * mu2) for c in r] + [beta2 * w2 * tt]


def residual_influences(act: Activation, k1: Tensor, depth: int, w2: float, b2: float, beta: float,
                        nodes: int, hessians: bool = False) -> dict:
    """The infinite-width trajectory of one residual unit and its influence functions, per state
    k1 = Σ¹ (P, D), D = 3 (pairs) or 1 (an input with itself), at the layers j = 1…L+1 (lists
    indexed 0…L): ``k`` K^j, ``maps`` (G^j, ∂G/∂K, ∂²G/∂K²), ``t`` T^j, ``bdot`` B^j = E[φ'φ'],
    ``e4`` E[φ'(u)²φ'(v)²], ``slopes`` E[(φ'(u)², φ'(v)², φ'φ')]; and, as coefficients over the
    stacked centred statistics (e_1 … e_{L+1}), e_j = (ψ(h^j), φ'φ'(h^j)) − E (N = (L+1)(D+1)):
    ``influence`` IF_j (P, D, N), ``influence_b`` IF^B_j (P, N), ``delta_t`` δT^j (P, N) and
    ``run`` R_j = Σ_{i<j} IF_i (P, D, N) (module docstring, part 1); ``cov`` {(a, c): Cov[e_a, e_c]}
    for a ≥ c, and with ``hessians`` ``hess`` {(a, c): E[∇²ẽ_a e_c]} for a > c."""
    p, dim = k1.shape
    cross = 1 if dim == 3 else 0
    beta2, layers, size = beta * beta, depth + 1, dim + 1   # e_m = (ψ (D), φ'φ' (1))
    k, maps = [k1], []
    for _ in range(layers):  # K^m, (G^m, J_m, H_m) for m = 1…L+1
        maps.append(_jacobian_hessian(act, k[-1], w2, b2))
        if len(k) < layers:
            k.append(k[-1] + beta2 * maps[-1][0])
    cov_e, hess_e = _unit_covariances(act, k, w2, b2, nodes, hessians)
    basis = torch.eye(layers * size, dtype=torch.float64).expand(p, -1, -1)
    out = {key: [] for key in ("t", "bdot", "e4", "slopes", "influence", "influence_b", "delta_t", "run")}
    run = k1.new_zeros(p, dim, layers * size)                      # R_m = Σ_{k<m} IF_k
    delta_t = k1.new_zeros(p, layers * size)                       # δT^m
    t = k1[:, cross].clone()                                       # T¹ = Σ¹_12
    for m in range(layers):
        g, jac = maps[m][0], maps[m][1]
        mean, _, e4, b11, b22 = unit_moments(act, k[m], w2, b2)
        bdot = mean[:, -1]
        influence = basis[:, m * size:m * size + dim] + beta2 * jac @ run      # IF_m (P, D, ·)
        influence_b = basis[:, m * size + dim] + beta2 * torch.einsum(
            "pa,pac->pc", derivative_gradient(act, k[m]), run)                   # IF^B_m (P, ·)
        for key, value in (("t", t), ("bdot", bdot), ("e4", e4), ("slopes", torch.stack([b11, b22, bdot], 1)),
                           ("influence", influence), ("influence_b", influence_b), ("delta_t", delta_t),
                           ("run", run)):
            out[key].append(value)
        delta_t = delta_t * (1.0 + beta2 * w2 * bdot)[:, None] + beta2 * (
            w2 * t[:, None] * influence_b + influence[:, cross])
        t = t * (1.0 + beta2 * w2 * bdot) + beta2 * g[:, cross]
        run = run + influence
    out.update(k=k, maps=maps, cov=cov_e, hess=hess_e)
    return out


def stacked_covariance(state: dict) -> Tensor:
    """Cov of the stacked centred statistics (e_1 … e_{L+1}) of :func:`residual_influences`,
    (P, N, N): an influence a·e has variance aᵀ Σ a."""
    cov_e, layers = state["cov"], len(state["k"])
    return torch.cat([torch.cat([_cov(cov_e, a, c) for c in range(layers)], 2) for a in range(layers)], 1)


def residual_variance(act: Activation, state: dict, w2: float, beta: float, out_dim: int, nodes: int) -> Tensor:
    """V_Θ (P,) from the influences of :func:`residual_influences` (module docstring: the shared
    part, then the readout's own diagonal and off-diagonal terms over ``out_dim`` outputs)."""
    cross = 1 if state["k"][0].shape[1] == 3 else 0
    t, bdot, e4 = state["t"][-1], state["bdot"][-1], state["e4"][-1]
    shared = state["influence"][-1][:, cross] + w2 * (bdot[:, None] * state["delta_t"][-1]
                                                      + t[:, None] * state["influence_b"][-1])
    variance = torch.einsum("pa,pab,pb->p", shared, stacked_covariance(state), shared)
    same, swap = _off_diagonal_terms(state["slopes"], _slope_products(act, state["k"], w2, nodes), state["t"],
                                     state["e4"], beta * beta, w2)
    return variance + w2 * w2 * (2.0 * e4 * t * t + same + swap) / out_dim


def residual_limit(state: dict, w2: float) -> Tensor:
    """Θ_∞ (P,) = G^{L+1}_12 + σ_w² B^{L+1} T^{L+1} from :func:`residual_influences`."""
    cross = 1 if state["k"][0].shape[1] == 3 else 0
    return state["maps"][-1][0][:, cross] + w2 * state["bdot"][-1] * state["t"][-1]


def _propagate_residual_ntk(act: Activation, k1: Tensor, depth: int, w2: float, b2: float, beta: float,
                            out_dim: int, nodes: int):
    """(Θ_∞, V_Θ) per state k1 = Σ¹, (P, D) with D = 3 (pairs) or 1 (an input with itself)."""
    state = residual_influences(act, k1, depth, w2, b2, beta, nodes)
    return residual_limit(state, w2), residual_variance(act, state, w2, beta, out_dim, nodes)


def _cov(cov_e: dict, a: int, c: int) -> Tensor:
    return cov_e[(a, c)] if a >= c else cov_e[(c, a)].transpose(1, 2)


def resmlp_ntk_variance(x1: Tensor, x2: Optional[Tensor] = None, *, activation: str | Activation = "relu",
                        depth: int, w_std: float = 1.0, b_std: float = 0.0, branch_scale: float = 1.0,
                        out_dim: int = 1, nodes: int = NODES) -> Dict[str, Tensor]:
    """V_Θ(x, x') = lim n·Var[Θ̂(x, x')] of the width-n residual MLP at initialization
    (module docstring).

    Args:
        x1: (N1, d); x2: (N2, d) or None for x1.
        activation: a name or :class:`Activation` (relu, erf, gelu, tanh, …).
        depth: residual blocks L (≥ 1); w_std, b_std: σ_w, σ_b; branch_scale: β.
        out_dim: O, the outputs the trace-mode NTK averages over.
        nodes: Gauss–Hermite nodes per axis of the nested cross-layer rule.

    Returns:
        dict of float64 (N1, N2): ``ntk`` (Θ_∞) and ``ntk_variance`` (V_Θ). Cost ~ depth² ·
        nodes⁴ per distinct pair, as the residual NNGP's corrections.

    Raises:
        ValueError: depth < 1, mismatched inputs, or a non-finite result.
    """
    act, x1, x2, w2, b2, beta = residual_arguments(x1, x2, activation, depth, w_std, b_std, branch_scale)
    ntk, var = pairwise(x1, x2, w2, b2,
                        lambda k: _propagate_residual_ntk(act, k, depth, w2, b2, beta, out_dim, nodes))
    if not torch.isfinite(var).all():
        raise ValueError("non-finite NTK variance of the residual MLP (inputs parallel at some layer?)")
    return {"ntk": ntk, "ntk_variance": var}
