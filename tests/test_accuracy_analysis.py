"""A CNN-vs-MLP sweep (the shape of mnist_cnn_drift's) on synthetic run folders: the fits keep
the two networks apart, and the accuracy figure is drawn from the measured accuracies only.

The summaries are written as the trainer writes them: a CNN run carries its own knobs
(``kernel_size``, ``padding``, ``readout``), an MLP run does not — the case in which a
grouping by every config column would split or merge the runs wrongly.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ntk_lab.analysis import collect_sweep, fit_sweep
from ntk_lab.analysis.accuracy_plots import accuracy_band, plot_accuracy_vs_width
from tests.test_lazy_analysis import PNG_MAGIC, fit_row, write_sweep

WIDTHS = (32, 128, 512)
SEEDS = (0, 1)
STEPS = (0, 10, 100)
KAPPA_LAWS = {"cnn": (0.5, -1.0), "mlp": (2.0, -0.5)}  # (prefactor, slope) of the final kappa
NOISE = 0.01  # relative, per run, seeded
# 1 % noise over a 16× width range moves a fitted slope by ~0.005 (one σ); 0.05 is ~10σ and
# far below the 0.5 between the two networks' slopes that a merged fit would blur.
SLOPE_TOL = 0.05


def summary_for(model: str, width: int, seed: int) -> dict:
    arch = {"kernel_size": 3, "padding": "same", "readout": "flatten"} if model == "cnn" else {}
    return {
        "width": width, "depth": 1, "lr": 1.0, "seed": seed, "activation": "relu",
        "parameterization": "ntk", "w_std": 1.0, "b_std": 0.1, "dataset": "mnist",
        "n_train": 128, "n_probe": 32, "ntk_method": "auto", "device": "cpu",
        "dtype": "float32", "steps": STEPS[-1], "out_dim": 1, "output_scale": 1.0,
        "center": False, "batch_size": None, "model": model, **arch, "status": "ok",
        "message": "", "wall_time_s": 1.0, "diverged_step": None, "last_step": STEPS[-1],
        "versions": {"torch": "test"},
    }


def final_test_acc(model: str, width: int, seed: int) -> float:
    """A known accuracy per run: 0 for the narrowest MLP of seed 0 (a measured 0, not missing)."""
    if (model, width, seed) == ("mlp", WIDTHS[0], 0):
        return 0.0
    return 0.9 - 0.1 * SEEDS.index(seed) + (0.05 if model == "cnn" else 0.0)


def metric_rows(model: str, width: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([width, seed, len(model)])
    prefactor, slope = KAPPA_LAWS[model]
    kappa = prefactor * width ** slope * (1 + NOISE * rng.standard_normal())
    rows = []
    for step in STEPS:
        frac = step / STEPS[-1]
        rows.append({
            "step": step, "time": float(step), "train_loss": 0.5 * math.exp(-3 * frac),
            "test_loss": 0.3 + 0.4 * math.exp(-3 * frac), "kappa": kappa * frac,
            "ntk_err_inf": 1.0 / math.sqrt(width), "train_acc": 0.5 + 0.5 * frac,
            "test_acc": 0.5 + frac * (final_test_acc(model, width, seed) - 0.5),
            "test_acc_inf": 0.5 + frac * (0.85 - 0.5),
        })
    return rows


@pytest.fixture(scope="module")
def cnn_mlp_sweep(tmp_path_factory):
    jobs = [(summary_for(m, w, s), metric_rows(m, w, s))
            for m in KAPPA_LAWS for w in WIDTHS for s in SEEDS]
    return collect_sweep(write_sweep(tmp_path_factory.mktemp("cnn_mlp") / "multirun", jobs))


def test_fits_keep_the_cnn_and_the_mlp_apart(cnn_mlp_sweep):
    assert cnn_mlp_sweep.group_keys == ["model"]  # readout & co. (CNN only) split nothing
    fits = fit_sweep(cnn_mlp_sweep).table
    for model, (_, slope) in KAPPA_LAWS.items():
        row = fit_row(fits, "kappa", model=model)
        assert row["slope"] == pytest.approx(slope, abs=SLOPE_TOL)
        assert (row["n_runs"], row["n_widths"]) == (len(WIDTHS) * len(SEEDS), len(WIDTHS))


def test_accuracy_band_is_the_mean_min_max_over_seeds_and_keeps_zero(cnn_mlp_sweep):
    final = cnn_mlp_sweep.at_final()
    band = accuracy_band(final[final["model"] == "mlp"], "test_acc")
    narrow = band[band["x"] == WIDTHS[0]].iloc[0]  # seeds: 0.0 (measured) and 0.8
    assert (narrow["low"], narrow["high"], narrow["n"]) == (0.0, pytest.approx(0.8), 2)
    assert narrow["mean"] == pytest.approx(0.4)
    wide = band[band["x"] == WIDTHS[-1]].iloc[0]
    assert wide["mean"] == pytest.approx((0.9 + 0.8) / 2)


def test_accuracy_figure_drawn_only_with_accuracies(cnn_mlp_sweep, tmp_path):
    fits = fit_sweep(cnn_mlp_sweep)
    assert plot_accuracy_vs_width(cnn_mlp_sweep, fits, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == PNG_MAGIC
    # regression data (no accuracy columns): nothing drawn, nothing written
    regression = dataclasses.replace(cnn_mlp_sweep, runs=cnn_mlp_sweep.runs.drop(
        columns=["test_acc", "test_acc_inf", "train_acc"]))
    assert not plot_accuracy_vs_width(regression, fits, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
