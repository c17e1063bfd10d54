"""Coordinate check: its statistics against a forward pass and a gradient step run by hand,
the slope fits against known power laws, the figures and the study's folder."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from ntk_lab.studies.coord_check import (
    TABLE_COLUMNS, coord_check_run, fit_slopes, run_coord_check, write_study,
)
from ntk_lab.data import make_dataset
from ntk_lab.models import MLP

F64 = torch.float64
# Means of a few dozen O(1) float64 values after one step: round-off ~1e-16; 1e-12 catches
# any wrong layer, missing factor or a measurement taken before the step.
HAND_ATOL = 1e-12
# Exact power laws (no noise) are fitted to float64 round-off.
SLOPE_ATOL = 1e-9


def hand_activations(params: list[tuple[torch.Tensor, torch.Tensor]], scales, x):
    """φ(z¹) … φ(z^depth), f of an MLP (relu) from explicit weights: docs/conventions.md by hand."""
    out, h = [], x
    for i, ((w, b), (m_w, m_b)) in enumerate(zip(params, scales)):
        z = m_w * h @ w.T + m_b * b
        h = torch.relu(z) if i < len(params) - 1 else z
        out.append(h)
    return out


@pytest.mark.parametrize("parameterization", ["ntk", "mup", "standard"])
def test_statistics_match_a_forward_pass_and_steps_by_hand(parameterization):
    """Two GD steps by hand: θ ← θ − η ∇L with L = 1/(2N) Σ‖f − y‖² from torch.autograd.grad
    on the hand-written forward, then mean |h_t| and mean |h_t − h_0| on the fixed batch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    x_fixed = torch.randn(4, 3, generator=g, dtype=F64)
    net = MLP(3, 5, 2, out_dim=2, parameterization=parameterization, b_std=0.3, seed=1, dtype=F64)
    scales = [(l.weight_multiplier, l.bias_multiplier) for l in net.layers]
    params = [(l.weight.detach().clone().requires_grad_(), l.bias.detach().clone().requires_grad_())
              for l in net.layers]
    lr, steps = 0.3, 2
    rows = coord_check_run(copy.deepcopy(net), x, y, x_fixed, steps=steps, lr=lr)

    initial = [h.detach() for h in hand_activations(params, scales, x_fixed)]
    expected = []
    for step in range(steps + 1):
        if step > 0:
            f = hand_activations(params, scales, x)[-1]
            loss = 0.5 * (f - y).pow(2).sum() / len(x)
            grads = torch.autograd.grad(loss, [t for pair in params for t in pair])
            with torch.no_grad():
                for t, grad in zip([t for pair in params for t in pair], grads):
                    t -= lr * grad
        with torch.no_grad():
            acts = hand_activations(params, scales, x_fixed)
        expected += [(step, i, h.abs().mean().item(), (h - h0).abs().mean().item())
                     for i, (h, h0) in enumerate(zip(acts, initial), start=1)]
    got = [(r["step"], r["layer"], r["l1"], r["l1_delta"]) for r in rows]
    assert [(s, l) for s, l, _, _ in got] == [(s, l) for s, l, _, _ in expected]
    np.testing.assert_allclose([v[2:] for v in got], [v[2:] for v in expected], atol=HAND_ATOL,
                               rtol=0)
    assert all(r["l1_delta"] == 0.0 for r in rows if r["step"] == 0)
    assert any(r["l1_delta"] > 0 for r in rows if r["step"] == steps)


def power_law_table(slopes: dict, seeds=(0, 1)) -> pd.DataFrame:
    """l1_delta = c·width^slope (c varies by seed, so the bootstrap has spread to resample
    but every seed shares the slope); l1 = width^0."""
    rows = []
    for param, slope in slopes.items():
        for width in (64, 256, 1024):
            for seed in seeds:
                for step in (0, 1):
                    for layer in (1, 2, 3):
                        delta = 0.0 if step == 0 else (1 + seed) * width**slope
                        rows.append({"width": width, "parameterization": param, "seed": seed,
                                     "step": step, "layer": layer, "l1": 0.5 + 0.1 * seed,
                                     "l1_delta": delta})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def test_fit_slopes_recovers_known_power_laws_and_states_predictions():
    fits = fit_slopes(power_law_table({"ntk": -0.5, "mup": 0.0}))
    delta = fits[fits["metric"] == "l1_delta"]
    assert set(delta["step"]) == {1}  # step 0 (no move yet) is not fitted
    for param, slope in (("ntk", -0.5), ("mup", 0.0)):
        rows = delta[delta["parameterization"] == param]
        assert np.allclose(rows["slope"], slope, atol=SLOPE_ATOL)
        # the readout (layer depth + 1 = 3) has no stated prediction; hidden layers do
        assert np.allclose(rows[rows["layer"] < 3]["predicted"], slope)
        assert rows[rows["layer"] == 3]["predicted"].isna().all()
        assert (rows["ci_method"] == "bootstrap").all()
    assert np.allclose(fits[fits["metric"] == "l1"]["slope"], 0.0, atol=SLOPE_ATOL)


def test_fit_slopes_leaves_out_blown_up_runs():
    table = power_law_table({"standard": 1.0})
    blown = (table["width"] == 1024) & (table["step"] == 1)
    table.loc[blown, ["l1", "l1_delta"]] = np.nan
    fits = fit_slopes(table)
    assert (fits["n_widths"] == 2).all()
    assert np.allclose(fits[fits["metric"] == "l1_delta"]["slope"], 1.0, atol=SLOPE_ATOL)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_grid_writes_the_study_folder(tmp_path):
    data = make_dataset("sphere_teacher", n_train=16, n_test=8, n_probe=8, in_dim=3)
    table = run_coord_check(data, widths=[8, 16], parameterizations=["ntk", "mup"], seeds=[0, 1],
                            depth=2, steps=2, lr=0.5)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 2 * 2 * 2 * 3 * 3  # widths × params × seeds × steps 0..2 × layers
    report = write_study(table, fit_slopes(table), tmp_path, {"lr": 0.5})
    for name in ("coord_check.csv", "fits.csv", "coord_check_l1_delta.png", "coord_check_l1.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "l1_delta" in report.read_text()
