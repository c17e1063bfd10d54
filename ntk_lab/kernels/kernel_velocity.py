"""The velocity of a one-hidden-layer MLP's NTK at initialization under MSE gradient flow.

The network (``ntk`` parameterization, width n, one output, W, b, a, b_o ~ N(0, 1)):

    h_i(x) = σ_w w_i·x/√d + σ_b b_i,   f(x) = (σ_w/√n) Σ_i a_i φ(h_i(x)) + σ_b b_o,

trained by gradient flow on L = (1/2N) Σ_j (f(x_j) − y_j)² in the lab's time t (the summed
learning rate): dθ/dt = −∇L. Its NTK Θ = σ_b² + (1/n) Σ_i [σ_w²φ_i(x)φ_i(x') + a_i²σ_w²φ'_i(x)φ'_i(x')Σ¹(x, x')]
(Σ¹(x, x') = σ_w² x·x'/d + σ_b²) moves at t = 0 as

    dΘ(x, x')/dt = −(1/N) Σ_j (f_j − y_j) dH(x, x', x_j),   dH = ∇_θΘ(x, x')·∇_θ f(x_j) = n^{-3/2} Σ_i D_i,

a sum over units of D_i = a_i P_i + a_i³ Q_i (the dNTK of Roberts, Yaida & Hanin, *The
Principles of Deep Learning Theory* (2022), ch. 11, at one hidden layer), with, per unit,

    P(x, x', x_j) = σ_w³ [2φ'(x)φ'(x')Σ¹(x, x')φ(x_j) + φ'(x_j)(φ'(x)φ(x')Σ¹(x, x_j) + φ(x)φ'(x')Σ¹(x', x_j))],
    Q(x, x', x_j) = σ_w³ φ'(x_j) Σ¹(x, x') (φ''(x)φ'(x')Σ¹(x, x_j) + φ'(x)φ''(x')Σ¹(x', x_j)).

The units are i.i.d., so as n → ∞ the residuals u_j = f_j (+ −y_j) and T_j = n^{-1/2} Σ_i D_i(x_j) are
jointly Gaussian, with Cov[f_j, f_l] = K_jl (the NNGP), Cov[f_j, T_l] = M_jl = σ_w E[φ(x_j)(P_l + 3Q_l)]
and Cov[T_j, T_l] = S_jl = E[P_jP_l] + 3E[P_jQ_l + Q_jP_l] + 15E[Q_jQ_l] (E a² = 1, E a⁴ = 3,
E a⁶ = 15). dΘ/dt = −(1/(Nn)) Σ_j (f_j − y_j) T_j, so both its mean and its spread are O(1/n):

    n·E[dΘ/dt] = −(1/N) Σ_j M_jj,
    n²·E[(dΘ/dt)²] = (1/N²) [Σ_jl (K_jl + y_j y_l) S_jl + (Σ_j M_jj)² + Σ_jl M_jl M_lj]   (Isserlis).

The mean comes from the output's correlation with its own dNTK; the targets add a zero-mean
part of the same order, so the relative kernel change κ(t) = ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F at small t is
set by the second moment: its root mean square is t·√(Σ n²E[(dΘ/dt)²])/(n‖Θ_∞‖_F), not
t·‖E[dΘ/dt]‖/‖Θ_∞‖. Each S, M entry is a Gaussian expectation over one unit's pre-activations on
four inputs (x, x', x_j, x_l); all of them come from one quasi-Monte-Carlo rule over the unit's
pre-activations on every input at once (``SAMPLES`` scrambled Sobol points).

Only one hidden layer and twice-differentiable activations (erf, tanh, gelu, sigmoid, …): a kink
makes φ'' a delta function that a quadrature rule does not see.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.layers.activations import Activation, get_activation

SAMPLES = 2 ** 17
"""Scrambled Sobol points of one unit's pre-activations on all the inputs (a quasi-Monte-Carlo
rule: the moments couple four inputs, and a tensor Gauss–Hermite rule in 4-D misses erf's narrow
φ' once a variance is ≳ 2: 30 nodes per axis still gave 15 % low). Two scramblings differ by
≤ 1.0e-3 of the largest entry of n²E[(dΘ/dt)²] on unit-scale inputs; the Monte-Carlo checks
reach ~1 %."""
KINKED = ("relu", "leaky_relu", "abs")
MAX_POINTS = 64
"""Inputs (probe and training) the velocity takes: its cost is P²N²/2 · SAMPLES."""


def _second_derivative(act: Activation, h: Tensor) -> Tensor:
    """φ''(h) by autograd of φ twice (a user's activation's φ' carries no graph of its own);
    0 where φ is linear."""
    with torch.enable_grad():
        leaf = h.detach().requires_grad_(True)
        (first,) = torch.autograd.grad(act.fn(leaf).sum(), leaf, create_graph=True)
        if not first.requires_grad:
            return torch.zeros_like(h)
        (second,) = torch.autograd.grad(first.sum(), leaf, allow_unused=True)
    return torch.zeros_like(h) if second is None else second.detach()


def _unit_samples(sigma: Tensor, samples: int, seed: int) -> Tensor:
    """(samples, K) pre-activations of one unit on K inputs with covariance ``sigma`` (K, K):
    scrambled Sobol points mapped to N(0, I) and through the symmetric square root of sigma
    (exact for repeated inputs, whose covariance is singular)."""
    engine = torch.quasirandom.SobolEngine(sigma.shape[0], scramble=True, seed=seed)
    u = engine.draw(samples, dtype=torch.float64).clamp(1e-12, 1.0 - 1e-12)
    z = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
    vals, vecs = torch.linalg.eigh(sigma)
    return z @ (vecs @ torch.diag(vals.clamp_min(0.0).sqrt()) @ vecs.T)


def mlp_kernel_velocity(x: Tensor, x_train: Tensor, y_train: Tensor, *, activation: str | Activation,
                        w_std: float = 1.0, b_std: float = 0.0, samples: int = SAMPLES,
                        seed: int = 0) -> Dict[str, Tensor]:
    """The NTK's velocity at initialization of the width-n one-hidden-layer MLP trained by MSE
    gradient flow on (x_train, y_train), on the inputs x (module docstring).

    Args:
        x: (P, d) inputs the kernel is taken on (a run's probe set).
        x_train: (N, d) training inputs; y_train: (N,) or (N, 1) targets.
        activation: a twice-differentiable activation (not relu, leaky_relu or abs).
        w_std, b_std: σ_w, σ_b.
        samples, seed: the quasi-Monte-Carlo rule over one unit (``SAMPLES``).

    Returns:
        dict of float64 (P, P): ``velocity_mean`` n·E[dΘ/dt] (exact at every n),
        ``velocity_mean_square`` n²·E[(dΘ/dt)²] (its n → ∞ limit), and ``ntk`` Θ_∞.
        Cost ~ P²N² · samples / 2.

    Raises:
        ValueError: a kinked activation, more than MAX_POINTS inputs, or mismatched shapes.
    """
    act = get_activation(activation)
    if act.name in KINKED:
        raise ValueError(f"activation={act.name!r}: the kernel velocity needs a twice-differentiable "
                         f"activation (φ'' of a kink is a delta function); allowed: not {', '.join(KINKED)}")
    x, x_train = x.to(torch.float64), x_train.to(torch.float64)
    y = y_train.to(torch.float64).reshape(len(x_train), -1)
    if x.dim() != 2 or x_train.dim() != 2 or x.shape[1] != x_train.shape[1] or y.shape[1] != 1:
        raise ValueError("mlp_kernel_velocity: x (P, d), x_train (N, d) and one target per training input")
    if len(x) + len(x_train) > MAX_POINTS:
        raise ValueError(f"mlp_kernel_velocity: {len(x)} + {len(x_train)} inputs; at most MAX_POINTS = {MAX_POINTS}")
    points = torch.cat([x, x_train])
    p, n_train, s = len(x), len(x_train), float(w_std) ** 3
    sigma1 = float(w_std) ** 2 * points @ points.T / points.shape[1] + float(b_std) ** 2   # Σ¹ on all inputs
    nngp, ntk = infinite_width_kernels(points, activation=act, depth=1, w_std=w_std, b_std=b_std)
    weight = nngp[p:, p:].double() + y @ y.T                                           # K + yyᵀ (N, N)
    h = _unit_samples(sigma1, samples, seed)                                           # (M, P + N)
    phi, d1, d2 = act.fn(h).double(), act.derivative(h).double(), _second_derivative(act, h).double()
    tr, train = slice(p, p + n_train), sigma1[:p, p:]                                  # Σ¹(probe, train)
    mean_out, square_out = torch.zeros(p, p, dtype=torch.float64), torch.zeros(p, p, dtype=torch.float64)
    for a in range(p):
        for b in range(a, p):
            # per sample: P, Q (M, N) over the training inputs x_j, D = a P + a³ Q
            lin = s * (2.0 * (d1[:, a] * d1[:, b] * sigma1[a, b])[:, None] * phi[:, tr]
                       + d1[:, tr] * ((d1[:, a] * phi[:, b])[:, None] * train[a] + (phi[:, a] * d1[:, b])[:, None] * train[b]))
            cube = s * sigma1[a, b] * d1[:, tr] * ((d2[:, a] * d1[:, b])[:, None] * train[a]
                                                   + (d1[:, a] * d2[:, b])[:, None] * train[b])
            quad = lambda u, v: ((u @ weight) * v).sum(1).mean()  # noqa: E731  E[uᵀ W v]
            weighted = quad(lin, lin) + 3.0 * (quad(lin, cube) + quad(cube, lin)) + 15.0 * quad(cube, cube)
            cross = float(w_std) * phi[:, tr].T @ (lin + 3.0 * cube) / len(h)             # M_jl (N, N)
            trace = torch.diagonal(cross).sum()
            mean_out[a, b] = mean_out[b, a] = -trace / n_train
            square_out[a, b] = square_out[b, a] = (weighted + trace ** 2 + (cross * cross.T).sum()) / n_train ** 2
    return {"velocity_mean": mean_out, "velocity_mean_square": square_out, "ntk": ntk[:p, :p].double()}


def predicted_kappa(x: Tensor, x_train: Tensor, y_train: Tensor, *, t: float, width: int,
                    activation: str | Activation, w_std: float = 1.0, b_std: float = 0.0) -> float:
    """The root-mean-square κ(t) = ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F at small t of the width-n one-hidden-layer
    MLP: t·√(Σ n²E[(dΘ/dt)²])/(n‖Θ_∞‖_F) at leading order in t and 1/n."""
    got = mlp_kernel_velocity(x, x_train, y_train, activation=activation, w_std=w_std, b_std=b_std)
    return t * math.sqrt(got["velocity_mean_square"].sum().item()) / (width * got["ntk"].norm().item())
