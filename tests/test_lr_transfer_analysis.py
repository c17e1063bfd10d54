"""The learning-rate transfer analysis on synthetic loss surfaces with a known optimum: the η*
estimator (exact for a loss that is a parabola in ln η), its fit against width, the transfer
regret, diverged rates, and the tables and figures the analysis writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ntk_lab.analysis import analyze_sweep, collect_sweep
from ntk_lab.analysis import lr_transfer
from tests.test_lazy_analysis import PNG_MAGIC, write_sweep

WIDTHS = (64, 256, 1024)
SEEDS = (0, 1)
RATES = tuple(2.0 ** k for k in range(-12, -1))  # 11 log2-spaced rates
CURVATURE = 0.4  # ln loss = ln L0 + CURVATURE·(ln η − ln η*)²
DIVERGE_ABOVE = 2.0 ** -3  # rates above this diverge at every width
EXACT_TOL = 1e-6
"""The synthetic losses are exact parabolas in ln η, so the estimator and the fits recover the
true optima and exponents up to rounding (~1e-12); 1e-6 leaves room for the bootstrap's OLS."""


def eta_star(parameterization: str, width: int, seed: int) -> float:
    """standard: η* ∝ 1/width (× a seed jitter of ±5 %); mup: η* fixed — off-grid on purpose."""
    base = 2.0 ** -6.3
    jitter = 1.05 if seed else 0.95
    return base * jitter * ((64 / width) if parameterization == "standard" else 1.0)


def loss(parameterization, width, rate, seed) -> float:
    return 0.1 * math.exp(CURVATURE * math.log(rate / eta_star(parameterization, width, seed)) ** 2)


def jobs():
    for parameterization in ("standard", "mup"):
        for width in WIDTHS:
            for rate in RATES:
                for seed in SEEDS:
                    status = "diverged" if rate > DIVERGE_ABOVE else "ok"
                    final = loss(parameterization, width, rate, seed) if status == "ok" else float("nan")
                    summary = {"width": width, "depth": 2, "lr": rate, "seed": seed,
                               "parameterization": parameterization, "activation": "relu",
                               "dataset": "digits", "steps": 10, "optimizer": "adam",
                               "model": "mlp", "status": status, "message": "",
                               "wall_time_s": 1.0, "last_step": 10, "versions": {"torch": "t"}}
                    rows = [{"step": 0, "time": 0.0, "train_loss": 1.0, "test_loss": 1.0,
                             "kappa": 0.0, "lambda_max_train": 2.0},
                            {"step": 10, "time": 10 * rate, "train_loss": final, "test_loss": final,
                             "kappa": 0.01 * rate * width, "lambda_max_train": 1.5}]
                    yield summary, rows


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("transfer") / "multirun", list(jobs()))


def test_the_optimum_of_a_parabola_in_log_rate_is_found_exactly():
    rates = np.array(RATES)
    for target in (2.0 ** -6.3, 2.0 ** -8.75, 2.0 ** -4.1):
        losses = np.exp(CURVATURE * np.log(rates / target) ** 2)
        eta, grid, edge = lr_transfer.optimum(rates, losses)
        assert eta == pytest.approx(target, rel=EXACT_TOL) and not edge
        assert abs(math.log2(grid) - math.log2(target)) <= 0.5


def test_an_optimum_at_the_edge_or_beside_a_diverged_rate_is_the_grid_point_flagged():
    rates = np.array(RATES)
    rising = np.exp(np.log(rates / rates[0]) ** 2)  # best at the smallest rate
    assert lr_transfer.optimum(rates, rising) == (rates[0], rates[0], True)
    losses = np.exp(0.4 * np.log(rates / rates[5]) ** 2)
    losses[6] = np.inf  # the right neighbour diverged
    assert lr_transfer.optimum(rates, losses) == (rates[5], rates[5], True)


def test_the_fit_recovers_minus_one_for_standard_and_zero_for_mup(sweep_root):
    fits = lr_transfer.transfer_fits(collect_sweep(sweep_root)).set_index("parameterization")
    assert fits.loc["standard", "slope"] == pytest.approx(-1.0, abs=EXACT_TOL)
    assert fits.loc["mup", "slope"] == pytest.approx(0.0, abs=EXACT_TOL)
    assert fits.loc["mup", "n_points"] == len(WIDTHS) * len(SEEDS)


def test_the_regret_is_one_under_perfect_transfer_and_known_otherwise(sweep_root):
    table = lr_transfer.optima(collect_sweep(sweep_root))
    mup = table[table["parameterization"] == "mup"]
    assert np.allclose(mup["regret"], 1.0)
    standard = table[table["parameterization"] == "standard"].set_index("width")
    # width 1024's own best grid rate is 16× below width 64's; the mean loss there is known
    rate64, rate1024 = standard.loc[64, "eta_grid"], standard.loc[1024, "eta_grid"]
    mean_loss = lambda rate: np.mean([loss("standard", 1024, rate, s) for s in SEEDS])  # noqa: E731
    assert standard.loc[1024, "regret"] == pytest.approx(mean_loss(rate64) / mean_loss(rate1024))
    assert standard.loc[1024, "regret"] > 2.0 and standard.loc[64, "regret"] == 1.0
    assert standard.loc[64, "lambda_max_0"] == 2.0 and standard.loc[64, "lambda_max_T"] == 1.5


def test_the_analysis_writes_tables_figures_and_report_lines(sweep_root):
    out = analyze_sweep(sweep_root)
    for name in ("lr_transfer_loss_vs_lr.png", "lr_transfer_optimum_vs_width.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert len(pd.read_csv(out / "lr_transfer.csv")) == 2 * len(WIDTHS)
    report = (out / "report.md").read_text()
    assert "lr transfer (parameterization=mup)" in report and "moves by 0 grid step(s)" in report


def test_across_depth_the_branch_scales_are_compared(tmp_path):
    """At a fixed width, depths × rates × branch scales: the axis is depth and the groups are the
    branch scales (the depth_transfer presets); η* ∝ depth^−1 with β = 1, fixed with 1/√depth."""
    jobs = []
    for scale in ("1.0", "inv_sqrt_depth"):
        for depth in (2, 8, 32):
            target = 2.0 ** -6.3 * ((2 / depth) if scale == "1.0" else 1.0)
            for rate in RATES:
                for seed in SEEDS:
                    final = 0.1 * math.exp(CURVATURE * math.log(rate / target) ** 2)
                    summary = {"width": 256, "depth": depth, "lr": rate, "seed": seed,
                               "branch_scale": scale if scale != "1.0" else 1.0, "model": "resmlp",
                               "status": "ok", "message": "", "wall_time_s": 1.0,
                               "last_step": 10, "versions": {"torch": "t"}}
                    rows = [{"step": 0, "time": 0.0, "train_loss": 1.0, "test_loss": 1.0},
                            {"step": 10, "time": 1.0, "train_loss": final, "test_loss": final}]
                    jobs.append((summary, rows))
    sweep = collect_sweep(write_sweep(tmp_path / "depth", jobs))
    assert lr_transfer.axes(sweep) == ("depth", "branch_scale")
    fits = lr_transfer.transfer_fits(sweep).set_index("branch_scale")
    assert fits.loc["1.0", "slope"] == pytest.approx(-1.0, abs=EXACT_TOL)
    assert fits.loc["inv_sqrt_depth", "slope"] == pytest.approx(0.0, abs=EXACT_TOL)
    assert "η* by depth" in " ".join(lr_transfer.report_lines(sweep))
