"""The residual MLP's NNGP corrections against independent computations: the lab's Θ_∞ code,
the one-layer MLP's exact values (β → 0), and brute-force ensembles of residual MLPs."""

from __future__ import annotations

import math

import pytest
import torch

import ntk_lab.kernels.finite_width_residual as residual
from ntk_lab.kernels import infinite_width_kernels, nngp_finite_width_corrections, resmlp_nngp_corrections
from ntk_lab.layers.activations import get_activation
from ntk_lab.models import ResMLP
from tests.test_finite_width import _extrapolate

X = torch.tensor([[0.5, 0.25, -0.15, 0.1], [0.3, -1.2, 0.8, 0.5], [-1.5, 0.7, 1.1, -0.9]], dtype=torch.float64)
PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
B_STD = 0.1

ROUNDING_RTOL = 1e-12
SMALL_BETA = 1e-4
SMALL_BETA_RTOL = 1e-6
"""At β = 1e-4 the network is a one-hidden-layer MLP up to O(β²) = 1e-8 relative; the rule's
own error for erf is < 1e-9."""
NODE_RTOL = 1e-4
"""erf's nested Gauss–Hermite rule at 32 against 40 nodes per axis, relative to the largest
entry: measured 2e-5 on the mean (the integration-by-parts weight z² − 1 reaches into the
tails), 6e-7 on the variance; 40 against 56: 1e-6 and 3e-8."""
WIDTH_64_BIAS_RTOL = 0.02
"""n·Var at width 64 against its 1/n → 0 limit V: the O(1/n) term, measured with 10⁵ networks
at ≤ 1.5% of V for erf at depth 2 (the (x1, x2) entry: 0.1659 against 0.1684)."""
Z_TOL = 4.0
"""Standard errors allowed between a prediction and the extrapolated Monte Carlo: 12
comparisons per case; a correct prediction lands beyond 3 SE in ~3% of them, beyond 4 in 0.1%."""


def _ensemble(act, x, width, depth, beta, n_networks, generator, chunk=2000):
    """Ĝ = σ_b² + σ_w² φ(h^{L+1})ᵀφ(h^{L+1})/n of n_networks residual MLPs (σ_w = 1), written
    out with explicit weights (not the lab's ResMLP module): (n_networks, P, P)."""
    d = x.shape[1]
    out = []
    for start in range(0, n_networks, chunk):
        b = min(chunk, n_networks - start)
        h = (torch.randn(b, width, d, generator=generator, dtype=torch.float64) @ x.T / math.sqrt(d)
             + B_STD * torch.randn(b, width, 1, generator=generator, dtype=torch.float64))
        for _ in range(depth):
            w = torch.randn(b, width, width, generator=generator, dtype=torch.float64)
            h = h + beta * (torch.bmm(w, act.fn(h)) / math.sqrt(width)
                            + B_STD * torch.randn(b, width, 1, generator=generator, dtype=torch.float64))
        p = act.fn(h)
        out.append(B_STD ** 2 + p.transpose(1, 2) @ p / width)
    return torch.cat(out)


# --------------------------------------------------------------------------- exact checks
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_limit_is_the_lab_resmlp_nngp(activation):
    got = resmlp_nngp_corrections(X, activation=activation, depth=3, b_std=B_STD, branch_scale=0.6, nodes=8)
    model = ResMLP(4, 8, 3, activation=activation, b_std=B_STD, branch_scale=0.6, dtype=torch.float64)
    nngp, _ = infinite_width_kernels(X, model=model)
    assert torch.allclose(got["nngp"], nngp.double(), rtol=ROUNDING_RTOL, atol=0.0)


def test_small_branch_scale_is_the_one_layer_mlp():
    """β → 0: h^{L+1} = h¹, so Ĝ is a one-hidden-layer MLP's: m = 0 and V = σ_w⁴ C(Σ¹), exact
    at every width (the MLP module's own closed forms)."""
    got = resmlp_nngp_corrections(X, activation="erf", depth=2, b_std=B_STD, branch_scale=SMALL_BETA, nodes=16)
    mlp = nngp_finite_width_corrections(X, activation="erf", depth=1, b_std=B_STD)
    assert torch.allclose(got["nngp_variance"], mlp["nngp_variance"], rtol=SMALL_BETA_RTOL, atol=0.0)
    assert got["nngp_mean_correction"].abs().max() < SMALL_BETA_RTOL * mlp["nngp_variance"].abs().max()


def test_symmetric_and_converged_in_the_nodes():
    a = resmlp_nngp_corrections(X[:2], activation="erf", depth=2, b_std=B_STD, branch_scale=0.7)
    flipped = resmlp_nngp_corrections(X[:2].flip(0), activation="erf", depth=2, b_std=B_STD, branch_scale=0.7)
    for key in ("nngp_mean_correction", "nngp_variance"):
        assert torch.allclose(a[key], a[key].T, rtol=ROUNDING_RTOL, atol=0.0)
        # the symmetric square roots mirror the rule: swapping the inputs changes only rounding
        assert torch.allclose(flipped[key], a[key].flip(0, 1), rtol=1e-9, atol=0.0)
    coarser = resmlp_nngp_corrections(X[:2], activation="erf", depth=2, b_std=B_STD, branch_scale=0.7, nodes=32)
    for key in ("nngp_mean_correction", "nngp_variance"):
        assert torch.allclose(coarser[key], a[key], rtol=0.0, atol=NODE_RTOL * a[key].abs().max())


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        resmlp_nngp_corrections(X, depth=0)


def test_variance_against_a_small_ensemble():
    """n·Var[Ĝ] of 8000 width-64 networks against V (erf, depth 2): within 4 SE plus the
    O(1/n) term (WIDTH_64_BIAS_RTOL)."""
    act = get_activation("erf")
    pred = resmlp_nngp_corrections(X, activation=act, depth=2, b_std=B_STD, branch_scale=0.7,
                                   nodes=24)["nngp_variance"]  # 2e-5 of the 40-node values
    g = _ensemble(act, X, 64, 2, 0.7, 8000, torch.Generator().manual_seed(5))
    centred = 64 * (g - g.mean(0)) ** 2
    est, se = centred.mean(0), centred.std(0) / math.sqrt(len(g))
    assert ((est - pred).abs() <= Z_TOL * se + WIDTH_64_BIAS_RTOL * pred).all(), (est, pred, se)


# --------------------------------------------------------------------------- Monte Carlo
@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation,depth,beta", [("erf", 2, 0.7), ("relu", 2, 1.0), ("tanh", 3, 0.5)])
def test_corrections_against_monte_carlo(activation, depth, beta, monkeypatch):
    """m and V against 60 000 residual MLPs at widths 16, 32, 64, n·(mean − Σ_∞) and n·Var
    extrapolated to 1/n → 0; and the check has power: the prediction without the self term
    (a unit's own influence on the layer averages it later reads) fails the same test on some
    entry (measured: erf's (x2, x2) by 6.9 SE, relu's by 5.9, tanh's (x2, x2) by 5.5)."""
    torch.set_num_threads(1)
    act = get_activation(activation)
    pred = resmlp_nngp_corrections(X, activation=act, depth=depth, b_std=B_STD, branch_scale=beta)
    widths, n_networks = (16, 32, 64), 60000
    generator = torch.Generator().manual_seed(17 + depth)
    per_width = {}
    for n in widths:
        g = _ensemble(act, X, n, depth, beta, n_networks, generator)
        y = n * (g - pred["nngp"])
        centred = n * (g - g.mean(0)) ** 2
        per_width[n] = (y.mean(0), y.std(0) / math.sqrt(n_networks), centred.mean(0),
                        centred.std(0) / math.sqrt(n_networks))
    monkeypatch.setattr(residual, "_pair_with_matrix",
                        lambda hess, coef: hess.new_zeros(hess.shape[0], hess.shape[1]))
    no_self = resmlp_nngp_corrections(X, activation=act, depth=depth, b_std=B_STD, branch_scale=beta)
    refuted = 0
    for pair in PAIRS:
        (m, m_se), (v, v_se) = (_extrapolate(widths, [per_width[n][k][pair].item() for n in widths],
                                             [per_width[n][k + 1][pair].item() for n in widths]) for k in (0, 2))
        m_pred, v_pred = pred["nngp_mean_correction"][pair].item(), pred["nngp_variance"][pair].item()
        print(f"{activation} L{depth} β{beta} {pair}: m {m_pred:+.4f} | {m:+.4f} ± {m_se:.4f} || "
              f"V {v_pred:.4f} | {v:.4f} ± {v_se:.4f}")
        assert abs(m - m_pred) <= Z_TOL * m_se, (pair, "mean", m_pred, m, m_se)
        assert abs(v - v_pred) <= Z_TOL * v_se, (pair, "variance", v_pred, v, v_se)
        refuted += abs(m - no_self["nngp_mean_correction"][pair].item()) > Z_TOL * m_se
    assert refuted >= 1
