"""The 1/n corrections of the finite-width NNGP (ntk_lab.kernels.finite_width).

Unit checks (infinite-width state, depth 1 exact, C(k) against dblquad and closed forms, the
pair state against the 1-D state), then brute-force Monte Carlo: many independent width-n MLPs
with explicit weight matrices, the empirical NNGP K̂ = σ_b² + σ_w² φ(z)ᵀφ(z)/n of each, and
n·(E K̂ − Σ_∞) → m, n·Var K̂ → V checked within a few standard errors, extrapolated in 1/n.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import dblquad
from scipy.special import erf as np_erf

from ntk_lab.kernels import infinite_width_kernels
from ntk_lab.kernels.finite_width import (
    _propagate, fourth_moment_covariance, nngp_finite_width_corrections,
)
from ntk_lab.layers.activations import get_activation
from ntk_lab.layers.gaussian import gaussian_expectations

W_STD, B_STD = 1.5, 0.3
# Three inputs in R^4 with different norms (0.6, 1.7, 2.3) and no two parallel.
X = torch.tensor([[0.5, 0.25, -0.15, 0.1], [0.3, -1.2, 0.8, 0.5], [-1.5, 0.7, 1.1, -0.9]],
                 dtype=torch.float64)
PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]

ROUNDING_RTOL = 1e-12
"""Same formula, different order of float64 operations (the infinite-width state against
infinite_width_kernels; batched against single-pair autograd)."""
SYMMETRY_RTOL = 1e-7
"""m(x, x') against m(x', x) (and V), relative to the largest entry: the pair state is built in
the other order, so the Hessian comes from a different evaluation. Measured ≤ 3e-16 for relu and
gelu, 1e-10 for erf (autograd through the clamps of the library dual), 4.5e-9 for tanh (Hermite
series truncated at 1e-10 relative per expectation, then differentiated twice)."""
DBLQUAD_RTOL = 1e-6
"""C(k) against scipy dblquad (epsrel 1e-10 on ±9 standard deviations, truncation < 1e-17):
measured 6e-8 for relu (dblquad's own error on the kinked integrand: its Var[relu(v)²] is off
the exact 5k22²/4 by 2e-8 relative) and 2e-15 for erf. 1e-6 is 15× the worst measured error and
4 orders below what the tensor-product Gauss–Hermite rule gives relu (2.6e-4), so it fails
if relu falls back to that rule."""
Z_TOL = 4.0
"""Allowed |prediction − Monte-Carlo estimate| in standard errors. There are 6 pairs × 2
quantities per case, 48 comparisons in all at depth 2–3; at 4σ a correct prediction fails one of
them with probability ≈ 48 × 6e-5 ≈ 0.3% (and the seed is fixed)."""
WIDTHS = (32, 64, 128)
NETWORKS = {32: 16000, 64: 8000, 128: 4000}
"""Networks per width: the cost of one network is ∝ n² per hidden weight matrix, so this keeps
each width's share of the time equal (≈ 2 s per width at depth 3 on one core). The standard
errors it gives (printed by the tests with -s) are 1-3% of V and ≤ 0.03 on m."""


def _relu_np(t):
    return max(t, 0.0)


def _dblquad_covariance(fn, k):
    """C(k) from the eight moments E[φ(u)^a φ(v)^b], each by scipy dblquad in z ~ N(0, I₂)."""
    rho = k[1] / math.sqrt(k[0] * k[2])
    a11, a22, c = math.sqrt(k[0]), math.sqrt(k[2]), math.sqrt(1.0 - rho * rho)

    def moment(a, b):
        def f(z2, z1):
            u, v = a11 * z1, a22 * (rho * z1 + c * z2)
            return fn(u) ** a * fn(v) ** b * math.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2.0 * math.pi)
        return dblquad(f, -9.0, 9.0, -9.0, 9.0, epsabs=0.0, epsrel=1e-10)[0]

    powers = [(2, 0), (1, 1), (0, 2)]
    second = [moment(a, b) for a, b in powers]
    return np.array([[moment(a1 + a2, b1 + b2) - second[i] * second[j]
                      for j, (a2, b2) in enumerate(powers)] for i, (a1, b1) in enumerate(powers)])


# --------------------------------------------------------------------------- unit checks
@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh"])
@pytest.mark.parametrize("depth", [1, 3])
def test_infinite_width_state_matches_library(activation, depth):
    out = nngp_finite_width_corrections(X, activation=activation, depth=depth, w_std=W_STD, b_std=B_STD)
    nngp, _ = infinite_width_kernels(X, activation=activation, depth=depth, w_std=W_STD, b_std=B_STD)
    torch.testing.assert_close(out["nngp"], nngp, rtol=ROUNDING_RTOL, atol=0.0)
    for key in ("nngp_mean_correction", "nngp_variance"):
        assert out[key].dtype == torch.float64 and out[key].shape == (3, 3)
        scale = out[key].abs().max().item()
        torch.testing.assert_close(out[key], out[key].T, rtol=0.0, atol=SYMMETRY_RTOL * scale)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_depth_one_is_exact(activation):
    """At depth 1, K̂² is a mean of n i.i.d. terms: m = 0 and V = σ_w⁴ C(Σ¹) exactly."""
    out = nngp_finite_width_corrections(X, activation=activation, depth=1, w_std=W_STD, b_std=B_STD)
    assert bool((out["nngp_mean_correction"] == 0).all())
    w2, b2 = W_STD ** 2, B_STD ** 2
    q = w2 * (X * X).sum(1) / 4 + b2
    gram = w2 * X @ X.T / 4 + b2
    for i, j in PAIRS:
        k = torch.tensor([[q[i], q[i] if i == j else gram[i, j], q[j]]], dtype=torch.float64)
        expected = w2 * w2 * fourth_moment_covariance(activation, k if i != j else k[:, :1])[0]
        got = out["nngp_variance"][i, j]
        assert abs(got - expected[1, 1] if i != j else got - expected[0, 0]) <= ROUNDING_RTOL * abs(got)
    if activation == "relu":  # Var[relu(u)²] = E relu⁴ − (E relu²)² = 3q²/2 − q²/4 = 5q²/4
        torch.testing.assert_close(out["nngp_variance"].diagonal(), w2 * w2 * 1.25 * q * q,
                                   rtol=ROUNDING_RTOL, atol=0.0)


@pytest.mark.parametrize("activation,fn", [("relu", _relu_np), ("erf", np_erf)])
def test_fourth_moments_against_dblquad(activation, fn):
    k = (1.0, 0.3, 2.0)
    got = fourth_moment_covariance(activation, torch.tensor([k], dtype=torch.float64))[0].numpy()
    want = _dblquad_covariance(fn, k)
    assert np.abs(got - want).max() <= DBLQUAD_RTOL * np.abs(want).max()


def test_relu_fourth_moments_closed_form():
    """E[relu(u)² relu(v)²] = s²/(2π) J₂(θ), J₂ = 3 sin θ cos θ + (π − θ)(1 + 2 cos² θ) (Cho &
    Saul 2009, arc-cosine kernel of degree 2), and Var[relu(u)²] = 5 k11²/4, at several ρ."""
    for rho in (-0.9, -0.3, 0.0, 0.5, 0.95):
        k11, k22 = 0.7, 1.9
        k = torch.tensor([[k11, rho * math.sqrt(k11 * k22), k22]], dtype=torch.float64)
        c = fourth_moment_covariance("relu", k)[0]
        theta = math.acos(rho)
        j2 = 3 * math.sin(theta) * math.cos(theta) + (math.pi - theta) * (1 + 2 * math.cos(theta) ** 2)
        cross = k11 * k22 / (2 * math.pi) * j2 - (k11 / 2) * (k22 / 2)  # Cov[relu(u)², relu(v)²]
        assert c[0, 2].item() == pytest.approx(cross, rel=ROUNDING_RTOL)
        assert c[0, 0].item() == pytest.approx(1.25 * k11 ** 2, rel=ROUNDING_RTOL)
        assert c[2, 2].item() == pytest.approx(1.25 * k22 ** 2, rel=ROUNDING_RTOL)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_pair_state_diagonal_matches_one_dimensional_state(activation):
    """The (11) entries of the pair recursion depend on K̂11 alone: they must equal the 1-D
    recursion's (this checks the batched Jacobian/Hessian layout), and batching must not matter."""
    w2, b2 = W_STD ** 2, B_STD ** 2
    q = w2 * (X * X).sum(1) / 4 + b2
    gram = w2 * X @ X.T / 4 + b2
    pairs = torch.stack([q[[0, 1, 0]], gram[[0, 1, 0], [1, 2, 2]], q[[1, 2, 2]]], dim=1)
    k, m, s = _propagate(get_activation(activation), pairs, 3, w2, b2)
    k1, m1, s1 = _propagate(get_activation(activation), q[[0, 1, 0], None], 3, w2, b2)
    torch.testing.assert_close(m[:, 0], m1[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s[:, 0, 0], s1[:, 0, 0], rtol=1e-10, atol=1e-12)
    _, m_one, s_one = _propagate(get_activation(activation), pairs[1:2], 3, w2, b2)
    torch.testing.assert_close(m_one[0], m[1], rtol=ROUNDING_RTOL, atol=1e-14)
    torch.testing.assert_close(s_one[0], s[1], rtol=ROUNDING_RTOL, atol=1e-14)
    assert not bool(torch.isclose(s[:, 1, 1], s[:, 0, 0]).any())  # off-diagonal V is its own


def test_relu_parallel_distinct_inputs_raise():
    x = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # parallel, b = 0: |ρ| = 1
    with pytest.raises(ValueError, match="non-finite"):
        nngp_finite_width_corrections(x, activation="relu", depth=2)


# --------------------------------------------------------------------------- Monte Carlo
def _layer_kernels(phi, x, width, depth, n_networks, generator, chunk=1000):
    """Empirical kernels K̂^l, l = 2..depth+1, of n_networks independent MLPs with explicit
    weights: a list of (n_networks, P, P) tensors (K̂¹ = Σ¹ is deterministic)."""
    w2, b2 = W_STD ** 2, B_STD ** 2
    d = x.shape[1]
    out = [[] for _ in range(depth)]
    for start in range(0, n_networks, chunk):
        b = min(chunk, n_networks - start)
        z = (W_STD * torch.randn(b, width, d, generator=generator, dtype=torch.float64) @ x.T / math.sqrt(d)
             + B_STD * torch.randn(b, width, 1, generator=generator, dtype=torch.float64))
        for layer in range(depth):
            h = phi(z)
            out[layer].append(b2 + w2 * h.transpose(1, 2) @ h / width)
            if layer + 1 < depth:
                w = torch.randn(b, width, width, generator=generator, dtype=torch.float64)
                z = (W_STD * torch.bmm(w, h) / math.sqrt(width)
                     + B_STD * torch.randn(b, width, 1, generator=generator, dtype=torch.float64))
    return [torch.cat(k) for k in out]


def _state_map_library(act, k):
    """F(K̂) = σ_b² + σ_w² E[φ(u)φ(v)] entrywise on a batch of P × P kernels, by the library's
    gaussian_expectations (not the code under test)."""
    diag = k.diagonal(dim1=1, dim2=2)
    e, _ = gaussian_expectations(act, diag[:, :, None], k, diag[:, None, :])
    return B_STD ** 2 + W_STD ** 2 * e


def _estimates(act, width, depth, n_networks, seed):
    """Per pair: n·(E K̂ − Σ_∞) with control variates, n·Var K̂, and their standard errors.

    Two estimates of the mean: the plain one, ȳ for y = n(K̂ − Σ_∞), which assumes nothing,
    and one with control variates. The innovations ε^{l+1} = K̂^{l+1} − F(K̂^l), l = 1..depth,
    have mean exactly 0 at every width (given layer l, the units of z^{l+1} are i.i.d.
    N(0, K̂^{l+1}) and K̂^{l+1} is their mean; the tests check their sample means). They carry
    the O(1/√n) noise; regressing y on them (intercept = ȳ − β̂ᵀε̄) keeps the mean and removes
    that noise: the standard error of the O(1) mean drops from √(nV/B) to O(1/√B).

    Returns ({pair: (plain, plain_se, cv, cv_se, var, var_se)}, z-scores of the controls' means).
    """
    generator = torch.Generator().manual_seed(seed)
    kernels = _layer_kernels(act.fn, X, width, depth, n_networks, generator)
    nngp_inf, _ = infinite_width_kernels(X, activation=act, depth=depth, w_std=W_STD, b_std=B_STD)
    w2, b2 = W_STD ** 2, B_STD ** 2
    first = w2 * X @ X.T / X.shape[1] + b2
    previous = [first.expand_as(kernels[0])] + kernels[:-1]
    controls = torch.cat([(k - _state_map_library(act, kp)).reshape(n_networks, -1)
                          for k, kp in zip(kernels, previous)], dim=1) * math.sqrt(width)
    iu = torch.triu_indices(3, 3)
    controls = controls.reshape(n_networks, depth, 3, 3)[:, :, iu[0], iu[1]].reshape(n_networks, -1)
    design = torch.cat([torch.ones(n_networks, 1, dtype=torch.float64), controls], dim=1)
    gram_inv = torch.linalg.inv(design.T @ design)
    control_z = controls.mean(0) / (controls.std(0) / math.sqrt(n_networks))
    result = {}
    for i, j in PAIRS:
        y = width * (kernels[-1][:, i, j] - nngp_inf[i, j])
        beta = gram_inv @ (design.T @ y)
        resid = y - design @ beta
        sigma2 = (resid @ resid) / (n_networks - design.shape[1])
        cv, cv_se = beta[0].item(), math.sqrt(sigma2 * gram_inv[0, 0])
        plain, plain_se = y.mean().item(), y.std().item() / math.sqrt(n_networks)
        centred = (y - y.mean()) ** 2 / width  # n·(K̂ − mean)²
        var = centred.mean().item() * n_networks / (n_networks - 1)
        var_se = centred.std().item() / math.sqrt(n_networks)
        result[(i, j)] = (plain, plain_se, cv, cv_se, var, var_se)
    return result, control_z


def _extrapolate(widths, values, errors):
    """Weighted least squares of value = a + b/n; returns (a, standard error of a)."""
    design = torch.tensor([[1.0, 1.0 / n] for n in widths], dtype=torch.float64)
    weight = torch.tensor([1.0 / e ** 2 for e in errors], dtype=torch.float64)
    cov = torch.linalg.inv(design.T @ (weight[:, None] * design))
    coef = cov @ (design.T @ (weight * torch.tensor(values, dtype=torch.float64)))
    return coef[0].item(), math.sqrt(cov[0, 0].item())


def _check(pred, estimate, se, scale, what):
    """|pred − estimate| ≤ Z_TOL·se + ROUNDING_RTOL·scale (the floor matters only where the
    control-variate residual is identically 0, see test_corrections_against_monte_carlo)."""
    assert abs(estimate - pred) <= Z_TOL * se + ROUNDING_RTOL * scale, (what, pred, estimate, se)


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_depth_one_monte_carlo(activation):
    """Depth 1 is exact at every width: n·(E K̂ − Σ_∞) = 0 and n·Var K̂ = σ_w⁴ C(Σ¹)."""
    torch.set_num_threads(1)
    act = get_activation(activation)
    pred = nngp_finite_width_corrections(X, activation=act, depth=1, w_std=W_STD, b_std=B_STD)
    est, control_z = _estimates(act, 32, 1, 20000, seed=11)
    assert float(control_z.abs().max()) <= Z_TOL  # E[K̂² − F(Σ¹)] = 0: the conditional mean
    for pair, (plain, plain_se, _, _, var, var_se) in est.items():
        _check(0.0, plain, plain_se, 0.0, (pair, "mean"))
        _check(pred["nngp_variance"][pair].item(), var, var_se, 0.0, (pair, "variance"))


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation,depth", [("relu", 2), ("erf", 2), ("relu", 3), ("erf", 3)])
def test_corrections_against_monte_carlo(activation, depth):
    """m and V against brute-force networks at widths 32, 64, 128, extrapolated to 1/n → 0.

    The mean is checked twice: by the plain estimate (no assumption, weak: its standard error
    is √(nV/B)) and by the control-variate one (strong, assuming E[ε] = 0, which is checked on
    the same samples). Where y is itself a linear combination of the innovations (relu's
    diagonal: F11 = σ_b² + σ_w² k11/2 is linear, so K̂11 is a martingale and m11 = 0), the
    control-variate estimate is 0 to rounding, consistent with the prediction m = 0.
    """
    torch.set_num_threads(1)
    act = get_activation(activation)
    pred = nngp_finite_width_corrections(X, activation=act, depth=depth, w_std=W_STD, b_std=B_STD)
    per_width = {}
    for n in WIDTHS:
        per_width[n], control_z = _estimates(act, n, depth, NETWORKS[n], seed=100 * depth + n)
        assert float(control_z.abs().max()) <= Z_TOL, (n, control_z)

    def extrapolated(pair, index):
        return _extrapolate(WIDTHS, [per_width[n][pair][index] for n in WIDTHS],
                            [max(per_width[n][pair][index + 1], 1e-300) for n in WIDTHS])

    resolved = 0
    for pair in PAIRS:
        m_pred, v_pred = pred["nngp_mean_correction"][pair].item(), pred["nngp_variance"][pair].item()
        (plain, plain_se), (cv, cv_se), (v_mc, v_se) = (extrapolated(pair, i) for i in (0, 2, 4))
        print(f"{activation} depth {depth} pair {pair}: m {m_pred:+.4f} | plain {plain:+.4f} ± {plain_se:.4f}"
              f" | cv {cv:+.4f} ± {cv_se:.4f} || V {v_pred:.4f} | {v_mc:.4f} ± {v_se:.4f}")
        _check(m_pred, plain, plain_se, v_pred, (pair, "mean, plain"))
        _check(m_pred, cv, cv_se, v_pred, (pair, "mean, control variates"))
        _check(v_pred, v_mc, v_se, v_pred, (pair, "variance"))
        resolved += abs(m_pred) > 2 * Z_TOL * cv_se
    # the check has power: some predicted mean correction is far outside the band around 0
    assert resolved >= 1
