"""Finite-width fluctuations of Θ(x, x) at init: the batched estimator against a direct
per-network computation, the exact one-hidden-layer moments, and the rate fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ntk_lab.studies.fluctuations import (
    FluctuationResult, bootstrap_moment_ratios, fit_rate, fit_table, measure_grid,
    moment_ratio, ntk_diagonal_samples, percentile_interval,
)
from ntk_lab.kernels import empirical_ntk
from ntk_lab.models import MLP

F64 = torch.float64
# The batched structured computation against jacrev on the same float64 network: sums of a
# few hundred O(1) products in different orders agree to ~1e-15 relative.
DIRECT_REL_TOL = 1e-10
# A sample mean of S i.i.d. draws is within 4 standard errors of its expectation except with
# probability 6e-5 (the seeds are fixed, so the test is deterministic; 4σ keeps it from
# depending on a lucky draw while a wrong constant, e.g. 1 + 2/n, is off by > 10σ).
Z_MAX = 4.0
# A straight line through exact points is recovered to float64 round-off.
FIT_ATOL = 1e-10


@pytest.mark.parametrize("activation,parameterization,b_std,depth", [
    ("relu", "ntk", 0.0, 3), ("relu", "standard", 0.2, 2), ("tanh", "mup", 0.3, 2),
])
def test_batched_diagonal_equals_each_network_computed_directly(activation, parameterization,
                                                                 b_std, depth):
    """Seed s of the batched estimator is exactly MLP(seed=s): Θ(x, x) by jacrev per network.
    A tiny memory budget forces one seed per chunk, so chunking is exercised too."""
    x = torch.tensor([0.3, -1.2, 0.8], dtype=F64)
    seeds = [0, 1, 5, 11]
    kwargs = dict(width=9, depth=depth, activation=activation, parameterization=parameterization,
                  w_std=1.3, b_std=b_std)
    direct = torch.stack([
        empirical_ntk(MLP(3, out_dim=1, seed=s, dtype=F64, **kwargs), x[None], method="jacrev")[0, 0]
        for s in seeds])
    for budget in (1, 1 << 20):
        batched = ntk_diagonal_samples(x, seeds=seeds, memory_budget_bytes=budget, **kwargs)
        assert ((batched - direct).norm() / direct.norm()).item() < DIRECT_REL_TOL
    assert moment_ratio(batched) == pytest.approx(moment_ratio(direct.numpy()), rel=DIRECT_REL_TOL)


@pytest.mark.physics
def test_one_hidden_layer_moments_match_the_exact_identity():
    """One hidden ReLU layer of width n, NTK parameterization, σ_b = 0, input with
    ‖x‖²/d = q, one output: f = (σ_w/√n) Σ_i v_i φ(z_i), z_i = (σ_w/√d) w_i·x ~ N(0, s²)
    i.i.d. with s² = σ_w² q, v_i ~ N(0, 1). The biases are multiplied by σ_b = 0, so

        ∂f/∂v_i = (σ_w/√n) φ(z_i),   ‖∂f/∂w_i‖² = (σ_w²/n) v_i² φ'(z_i)² σ_w² ‖x‖²/d,

    and Θ(x, x) = (1/n) Σ_i T_i with T_i = σ_w² s² 1[g_i > 0](g_i² + v_i²), g_i = z_i/s.
    With g, v ~ N(0, 1) independent: E[1[g>0](g² + v²)] = ½ + ½ = 1 and
    E[1[g>0](g² + v²)²] = ½(E g⁴ + 2E g²v² + E v⁴) = ½(3 + 2 + 3) = 4, so Var = 3 and

        E[Θ] = σ_w² s² = σ_w⁴ q,   E[Θ²] = E[Θ]² (1 + 3/n),   E[Θ²]/E[Θ]² = 1 + 3/n

    exactly at every width (σ_w = √2, q = 1: E[Θ] = 4 = Θ_∞(x, x)). The sample moments of
    8000 seeds at n = 2 must be within Z_MAX standard errors of these values."""
    n, d = 2, 3
    x = torch.ones(d, dtype=F64)  # q = 1
    theta = ntk_diagonal_samples(x, width=n, depth=1, seeds=range(8000)).numpy()
    mean_exact = 4.0
    second_exact = mean_exact**2 * (1 + 3 / n)
    se = lambda v: v.std(ddof=1) / math.sqrt(len(v))  # noqa: E731
    assert abs(theta.mean() - mean_exact) < Z_MAX * se(theta)
    assert abs((theta**2).mean() - second_exact) < Z_MAX * se(theta**2)
    low, high = percentile_interval(bootstrap_moment_ratios(theta))
    assert low < 1 + 3 / n < high
    assert not low < 1 + 2 / n < high  # the interval is narrow enough to tell the constant


def synthetic_result(rate: float, intercept: float) -> FluctuationResult:
    """A grid whose log moment ratios lie exactly on intercept + rate·β, with bootstrap
    replicates shifted by a constant per replicate (so every refit has the same slope)."""
    rows = [{"width": w, "depth": d, "beta": d / w, "n_seeds": 10,
             "moment_ratio": math.exp(intercept + rate * d / w)}
            for w in (16, 32) for d in (1, 2, 4)]
    table = pd.DataFrame(rows)
    shifts = np.linspace(-0.01, 0.01, 5)
    replicates = table["moment_ratio"].to_numpy()[:, None] * np.exp(shifts)[None, :]
    return FluctuationResult(table, replicates)


def test_rate_fit_recovers_a_known_line():
    result = synthetic_result(rate=5.0, intercept=0.02)
    fit = fit_rate(result)
    assert fit["rate"] == pytest.approx(5.0, abs=FIT_ATOL)
    assert fit["intercept"] == pytest.approx(0.02, abs=FIT_ATOL)
    assert fit["ci_low"] == pytest.approx(5.0, abs=FIT_ATOL)
    assert fit["ci_high"] == pytest.approx(5.0, abs=FIT_ATOL)
    table = fit_table(result)
    assert list(table["scope"]) == ["all", "width=16", "width=32"]
    assert np.allclose(table["rate"], 5.0, atol=FIT_ATOL)


def test_measure_grid_table_columns_and_theta_inf():
    """A tiny grid: the contract columns, β = L/n, an interval around each ratio, and the
    one-hidden-layer mean near Θ_∞(x, x) = 4 (He init, ‖x‖²/d = 1)."""
    result = measure_grid([4, 8], [1, 2], n_seeds=300, in_dim=3)
    t = result.table
    assert list(t.columns[:7]) == ["width", "depth", "beta", "n_seeds", "moment_ratio",
                                   "ci_low", "ci_high"]
    assert np.allclose(t["beta"], t["depth"] / t["width"])
    assert (t["ci_low"] <= t["moment_ratio"]).all() and (t["moment_ratio"] <= t["ci_high"]).all()
    one = t[t["depth"] == 1]
    assert np.allclose(one["theta_inf"], 4.0)
    # E[Θ] = Θ_∞(x, x) exactly for one hidden layer (see the identity test above)
    assert (abs(one["mean_theta"] - one["theta_inf"]) < Z_MAX * one["mean_theta_se"]).all()
    assert result.replicates.shape[0] == len(t)
