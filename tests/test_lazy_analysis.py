"""The lazy-training figures and fits on synthetic run folders with known power laws.

Run folders are written with :mod:`ntk_lab.records` as the trainer writes them, with the
columns ``lazy=full`` adds: ``*_lin`` / ``*_inf`` losses, ``lin_gap`` / ``inf_gap`` (NaN at
step 0), ``test_loss_kernel_regression`` and, on the last row only, ``kappa_hessian`` and
``hessian_norm``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntk_lab.analysis import analyze_sweep, collect_sweep, fit_sweep
from ntk_lab.analysis.lazy_plots import (
    plot_lazy_gaps_vs_width, plot_lee2019_training_curves, selected_widths,
)
from ntk_lab.records import write_metrics, write_summary

WIDTHS = (64, 256, 1024, 4096)
SEEDS = (0, 1, 2)
STEPS = (0, 1, 3, 10, 32, 100)
NOISE = 0.02  # relative, multiplicative, per run and metric, from a seeded generator
# 2 % noise over the 64× width range moves a fitted slope by ~0.005 (one σ); 0.05 is ~10σ
# and still far below the 0.5 between the ntk and mup slopes told apart here.
SLOPE_TOL = 0.05

LAWS = {  # metric: (prefactor, slope) at the last step
    "lin_gap": (0.5, -0.5),
    "inf_gap": (0.8, -0.5),
    "kappa_hessian": (2.0, -0.5),
    "jac_change": (0.7, -0.5),
    "kappa": (1.0, -0.7),
}
MUP_SLOPE = 0.0  # under mup nothing falls with width (feature learning)

LAZY_FIGURES = ("lee2019_training_curves.png", "lazy_gaps_vs_width.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summary_for(width: int, seed: int, parameterization: str = "ntk") -> dict:
    return {
        "width": width, "depth": 2, "lr": 0.5, "seed": seed, "activation": "relu",
        "parameterization": parameterization, "w_std": 1.0, "b_std": 0.0,
        "dataset": "gaussian", "n_train": 32, "n_probe": 8, "ntk_method": "auto",
        "device": "cpu", "dtype": "float64", "steps": STEPS[-1], "out_dim": 1,
        "output_scale": 1.0, "center": False, "batch_size": None, "status": "ok",
        "message": "", "wall_time_s": 1.0, "diverged_step": None,
        "last_step": STEPS[-1], "versions": {"torch": "test"},
    }


def metric_rows(width: int, seed: int, *, lazy: bool = True, slope_shift: float = 0.0):
    """Checkpoint rows; the last row's metrics follow :data:`LAWS` (slopes + slope_shift)."""
    rng = np.random.default_rng([width, seed, int(100 * slope_shift)])

    def law(metric):
        prefactor, slope = LAWS[metric]
        return prefactor * width ** (slope + slope_shift) * (1 + NOISE * rng.standard_normal())

    final = {m: law(m) for m in LAWS}
    kernel_regression = 0.3 * (1 + NOISE * rng.standard_normal())
    rows = []
    for step in STEPS:
        frac = step / STEPS[-1]
        decay = math.exp(-3 * frac)
        row = {
            "step": step, "time": 0.5 * step, "train_loss": 0.5 * decay,
            "test_loss": 0.3 + 0.4 * decay, "kernel_distance": 0.01 * frac,
            "ntk_err_inf": 1.0 / math.sqrt(width), "param_change": 0.1 * frac,
            "kappa": final["kappa"] * frac, "jac_change": final["jac_change"] * frac,
        }
        if lazy:
            row.update({
                "train_loss_lin": 0.5 * decay * 1.05, "test_loss_lin": 0.3 + 0.42 * decay,
                "train_loss_inf": 0.5 * decay * 0.95, "test_loss_inf": 0.3 + 0.38 * decay,
                # ‖f − f_0‖ = 0 at step 0, so the gaps are NaN there, as the trainer writes.
                "lin_gap": math.nan if step == 0 else final["lin_gap"],
                "inf_gap": math.nan if step == 0 else final["inf_gap"],
                "test_loss_kernel_regression": kernel_regression,
            })
            if step == STEPS[-1]:  # lazy.kappa_hessian: measured at the last step only
                row["kappa_hessian"] = final["kappa_hessian"]
                row["hessian_norm"] = 3.0 / math.sqrt(width)
        rows.append(row)
    return rows


def write_sweep(root: Path, jobs) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for index, (summary, rows) in enumerate(jobs):
        run_dir = root / str(index)
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("width: ???\n")
        write_summary(run_dir, summary)
        write_metrics(run_dir, rows)
    return root


def fit_row(fits: pd.DataFrame, metric: str, **group) -> pd.Series:
    rows = fits[(fits["metric"] == metric) & (fits["x"] == "width")]
    for key, value in group.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.fixture(scope="module")
def lazy_sweep(tmp_path_factory):
    """12 runs (4 widths × 3 seeds) with every lazy column, analysed once."""
    jobs = [(summary_for(w, s), metric_rows(w, s)) for w in WIDTHS for s in SEEDS]
    root = write_sweep(tmp_path_factory.mktemp("lazy") / "multirun", jobs)
    return root, analyze_sweep(root)


# ---------------------------------------------------------------- fits


@pytest.mark.parametrize("metric", ["lin_gap", "inf_gap", "kappa_hessian", "jac_change"])
def test_fits_recover_lazy_gap_slopes_at_the_last_step(lazy_sweep, metric):
    _, out = lazy_sweep
    row = fit_row(pd.read_csv(out / "fits.csv"), metric)
    _, true_slope = LAWS[metric]
    assert row["slope"] == pytest.approx(true_slope, abs=SLOPE_TOL)
    assert str(row["step"]) == str(STEPS[-1])
    assert (row["n_runs"], row["n_widths"]) == (len(WIDTHS) * len(SEEDS), len(WIDTHS))
    assert row["ci_method"] == "bootstrap"


def test_kappa_hessian_on_the_last_row_only_is_the_final_value(lazy_sweep):
    root, _ = lazy_sweep
    sweep = collect_sweep(root)
    assert sweep.runs["kappa_hessian"].notna().sum() == len(WIDTHS) * len(SEEDS)
    final = sweep.at_final()
    assert len(final) == len(WIDTHS) * len(SEEDS)
    assert set(final["step"]) == {STEPS[-1]}
    assert final["kappa_hessian"].notna().all() and final["lin_gap"].notna().all()
    # summary.json's config never picks up a metric name as a knob
    assert "kappa_hessian" not in sweep.config_columns and not sweep.knobs


# ---------------------------------------------------------------- figures


def test_lazy_figures_are_drawn_and_listed_in_the_report(lazy_sweep):
    _, out = lazy_sweep
    report = (out / "report.md").read_text()
    for name in LAZY_FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in report
        assert f"`{name}` failed" not in report


def test_parameterization_sweep_separates_ntk_from_mup(tmp_path):
    shift = {"ntk": 0.0, "mup": MUP_SLOPE - LAWS["lin_gap"][1]}  # mup: slope 0
    jobs = [(summary_for(w, s, param), metric_rows(w, s, slope_shift=shift[param]))
            for param in shift for w in WIDTHS for s in SEEDS]
    sweep = collect_sweep(write_sweep(tmp_path / "param", jobs))
    assert set(sweep.knobs) == {"parameterization"}
    fits = fit_sweep(sweep)
    for param, true_slope in (("ntk", LAWS["lin_gap"][1]), ("mup", MUP_SLOPE)):
        row = fit_row(fits.table, "lin_gap", parameterization=param)
        assert row["slope"] == pytest.approx(true_slope, abs=SLOPE_TOL)
        assert fits.lookup("lin_gap", "width", {"parameterization": param}) is not None
    for name, draw in zip(LAZY_FIGURES, (plot_lee2019_training_curves,
                                         plot_lazy_gaps_vs_width)):
        assert draw(sweep, fits, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_only_the_infinite_width_columns_still_draw_both(tmp_path):
    """lazy.infinite_width alone (the default): no *_lin, no kappa_hessian."""
    jobs = []
    for w in WIDTHS[:2]:
        for s in SEEDS[:2]:
            rows = metric_rows(w, s)
            for row in rows:
                for key in ("train_loss_lin", "test_loss_lin", "lin_gap", "kappa_hessian",
                            "hessian_norm"):
                    row.pop(key, None)
            jobs.append((summary_for(w, s), rows))
    sweep = collect_sweep(write_sweep(tmp_path / "inf_only", jobs))
    assert "lin_gap" not in sweep.metric_columns
    fits = fit_sweep(sweep)
    assert set(fits.table["metric"]) >= {"inf_gap", "jac_change"}
    assert not {"lin_gap", "kappa_hessian"} & set(fits.table["metric"])
    for name, draw in zip(LAZY_FIGURES, (plot_lee2019_training_curves,
                                         plot_lazy_gaps_vs_width)):
        assert draw(sweep, fits, tmp_path / name), name


def test_sweep_without_lazy_columns_draws_neither_and_still_analyses(tmp_path):
    jobs = [(summary_for(w, s), metric_rows(w, s, lazy=False)) for w in WIDTHS for s in SEEDS]
    root = write_sweep(tmp_path / "plain", jobs)
    out = analyze_sweep(root)
    for name in LAZY_FIGURES:
        assert not (out / name).exists(), name
    report = (out / "report.md").read_text()
    for name in LAZY_FIGURES:
        assert f"`{name}` — needs" in report
    assert " failed: " not in report  # no figure raised
    assert (out / "kappa_vs_width.png").exists()
    fits = pd.read_csv(out / "fits.csv")
    assert not {"lin_gap", "inf_gap", "kappa_hessian"} & set(fits["metric"])
    assert fit_row(fits, "kappa")["slope"] == pytest.approx(LAWS["kappa"][1], abs=SLOPE_TOL)
    # jac_change is there, but a gaps figure of jac_change alone would repeat nothing lazy
    sweep = collect_sweep(root)
    assert not plot_lazy_gaps_vs_width(sweep, fit_sweep(sweep), tmp_path / "gaps.png")
    assert not (tmp_path / "gaps.png").exists()


def test_a_stale_lazy_figure_is_removed_when_no_longer_supported(tmp_path):
    jobs = [(summary_for(w, 0), metric_rows(w, 0, lazy=False)) for w in WIDTHS[:2]]
    root = write_sweep(tmp_path / "stale", jobs)
    out = root / "analysis"
    out.mkdir()
    for name in LAZY_FIGURES:
        (out / name).write_bytes(PNG_MAGIC)
    analyze_sweep(root)
    assert not any((out / name).exists() for name in LAZY_FIGURES)


@pytest.mark.parametrize("widths, expected", [
    ((64, 128), [64, 128]),
    ((64, 128, 256, 512), [64, 128, 256, 512]),
    ((16, 32, 64, 128, 256, 512, 1024), [16, 64, 256, 1024]),
    ((8, 16, 32, 64, 128), [8, 16, 64, 128]),
])
def test_selected_widths_keep_the_ends_and_space_the_rest(widths, expected):
    assert selected_widths(list(reversed(widths))) == expected
