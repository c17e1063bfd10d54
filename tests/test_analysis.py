"""The analysis stage on synthetic run folders with known power laws.

The folders are written with :mod:`ntk_lab.records`, exactly as the trainer writes them,
so these tests need no training: each metric follows a chosen law c · width^slope times
small seeded noise, and the fits must give the slopes back.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ntk_lab.analysis import analyze_sweep, collect_sweep, fit_power_law, fit_sweep
from ntk_lab.analysis.kernel_plots import plot_jacot_fig1
from ntk_lab.analysis.plots import plot_kappa_vs_output_scale, plot_kappa_vs_width_by_parameterization
from ntk_lab.analyze import main
from ntk_lab.records import save_kernels, write_metrics, write_summary

WIDTHS = (64, 128, 256, 512, 1024)
SEEDS = (0, 1, 2)
STEPS = (0, 10, 100)
NOISE = 0.02  # relative, multiplicative, drawn per run and metric from a seeded generator
# 2 % noise over the 16× width range moves a fitted slope by ~0.01 (one σ); 0.05 is ~5σ and
# still well below the 0.2 that separates the slopes these tests tell apart.
SLOPE_TOL = 0.05
# A nominal 95 % interval over 400 draws: binomial σ ≈ 0.011, so 0.90 sits ~4.5σ below the
# nominal rate and ~4.5σ above the 0.85 that plain percentile resampling of 3 seeds gives.
COVERAGE_DRAWS = 400
MIN_COVERAGE = 0.90
# One seed and 2 % noise give an OLS interval ~±0.03 wide; 0.3 flags a broken standard error.
MAX_OLS_CI_WIDTH = 0.3

NTK_ERR_PREFACTOR, NTK_ERR_SLOPE = 3.0, -0.5
KAPPA_PREFACTOR = 2.0
KAPPA_SLOPE_BY_DEPTH = {1: -0.8, 2: -0.6}
INPUT_SLOPE, HIDDEN_SLOPE, READOUT_SLOPE = -0.5, -1.0, -0.5
N_PROBE = 16

MAIN_FIGURES = (
    "ntk_err_inf_vs_width.png", "kappa_vs_width.png", "jacot_fig1.png", "kappa_vs_step.png",
    "param_change_layers_vs_width.png", "kappa_heatmap_depth_lr.png",
)


# ---------------------------------------------------------------- synthetic run folders


def summary_for(width, depth, seed, *, status="ok", **extra):
    summary = {
        "width": width, "depth": depth, "lr": 0.1, "seed": seed, "activation": "relu",
        "parameterization": "ntk", "w_std": 1.0, "b_std": 0.0, "dataset": "circle",
        "n_train": 16, "n_probe": N_PROBE, "ntk_method": "auto", "device": "cpu",
        "dtype": "float64", "steps": STEPS[-1], "out_dim": 1, "output_scale": 1.0,
        "center": False, "batch_size": None, "status": status, "message": "",
        "wall_time_s": 1.0, "diverged_step": None, "versions": {"torch": torch.__version__},
    }
    summary.update(extra)
    return summary


def metric_rows(width, depth, seed, *, kappa_slope=None, kappa_prefactor=KAPPA_PREFACTOR):
    """Checkpoint rows whose step-0 and last-step values follow the chosen power laws."""
    rng = np.random.default_rng([width, depth, seed])

    def law(prefactor, slope):
        return prefactor * width ** slope * (1 + NOISE * rng.standard_normal())

    kappa_slope = KAPPA_SLOPE_BY_DEPTH[depth] if kappa_slope is None else kappa_slope
    final = {
        "kappa": law(kappa_prefactor, kappa_slope), "param_change": law(0.5, -0.5),
        "jac_change": law(0.7, -0.5), "param_change_layer1": law(0.5, INPUT_SLOPE),
        f"param_change_layer{depth + 1}": law(0.4, READOUT_SLOPE),
        **{f"param_change_layer{l}": law(0.3, HIDDEN_SLOPE) for l in range(2, depth + 1)},
    }
    ntk_err_inf = law(NTK_ERR_PREFACTOR, NTK_ERR_SLOPE)
    rows = []
    for step in STEPS:
        frac = step / STEPS[-1]
        rows.append({
            "step": step, "time": 0.1 * step, "train_loss": 1.0 - 0.5 * frac,
            "test_loss": 1.2 - 0.4 * frac, "kernel_distance": 0.1 * frac * width ** -1.0,
            "ntk_err_inf": ntk_err_inf * (1 + frac), **{k: v * frac for k, v in final.items()},
        })
    return rows


def circle_kernels(width, seed):
    """Θ_∞(γ, γ') = 1 + cos(γ − γ') and finite-width kernels scattered around it."""
    gen = torch.Generator().manual_seed(1000 * width + seed)
    angles = torch.arange(N_PROBE, dtype=torch.float64) * (2 * math.pi / N_PROBE)
    theta_inf = 1 + torch.cos(angles[:, None] - angles[None, :])
    noise = torch.randn(len(STEPS), N_PROBE, N_PROBE, generator=gen, dtype=torch.float64)
    theta = theta_inf + (noise + noise.transpose(1, 2)) / math.sqrt(width)
    return {"probe_x": torch.stack([angles.cos(), angles.sin()], 1), "probe_angle": angles,
            "theta_inf": theta_inf, "nngp_inf": theta_inf / 2,
            "steps": torch.tensor(STEPS), "theta": theta}


def write_run(run_dir: Path, summary: dict, rows=None, kernels=None) -> Path:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("width: ???\n")
    write_summary(run_dir, summary)
    if rows is not None:
        write_metrics(run_dir, rows)
    if kernels is not None:
        save_kernels(run_dir, kernels)
    return run_dir


def write_multirun(root: Path, jobs) -> Path:
    """A Hydra-style multirun folder: multirun.yaml and numbered job folders."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for index, (summary, rows, kernels) in enumerate(jobs):
        write_run(root / str(index), summary, rows, kernels)
    return root


def width_depth_jobs(depths=(1, 2), seeds=SEEDS, with_kernels=True):
    return [(summary_for(w, d, s), metric_rows(w, d, s),
             circle_kernels(w, s) if with_kernels else None)
            for d in depths for w in WIDTHS for s in seeds]


@pytest.fixture(scope="module")
def main_sweep(tmp_path_factory):
    """30 runs (2 depths × 5 widths × 3 seeds) on the circle, analysed once."""
    root = write_multirun(tmp_path_factory.mktemp("sweep") / "multirun", width_depth_jobs())
    return root, analyze_sweep(root)


def fit_row(fits: pd.DataFrame, metric: str, x: str = "width", **group) -> pd.Series:
    rows = fits[(fits["metric"] == metric) & (fits["x"] == x)]
    for key, value in group.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def assert_recovers(row: pd.Series, true_slope: float, *, check_interval: bool = True) -> None:
    """The fitted slope is within SLOPE_TOL and, if asked, its interval holds the truth.

    A 95 % interval misses one fit in twenty by design, so only the headline laws of each
    sweep (one fixed noise draw) check it; the coverage itself is tested over many draws in
    test_bootstrap_interval_covers_the_true_slope_at_its_nominal_rate.
    """
    assert row["slope"] == pytest.approx(true_slope, abs=SLOPE_TOL)
    if check_interval:
        assert row["ci_low"] <= true_slope <= row["ci_high"], row


# ---------------------------------------------------------------- tables and fits


def test_runs_csv_has_one_row_per_run_and_checkpoint(main_sweep):
    root, out = main_sweep
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 30 * len(STEPS)
    for column in ("run_dir", "status", "width", "depth", "seed", "lr", "step", "kappa",
                   "ntk_err_inf", "param_change_layer1", "param_change_layer3"):
        assert column in runs.columns
    assert set(runs["status"]) == {"ok"}
    assert sorted(runs["run_dir"].astype(str).unique(), key=int) == [str(i) for i in range(30)]


def test_fits_recover_ntk_err_inf_slope_with_bootstrap_ci(main_sweep):
    _, out = main_sweep
    fits = pd.read_csv(out / "fits.csv")
    for depth in (1, 2):
        row = fit_row(fits, "ntk_err_inf", depth=depth)
        assert_recovers(row, NTK_ERR_SLOPE)
        assert str(row["step"]) == "0"
        assert row["ci_method"] == "bootstrap"
        assert (row["n_runs"], row["n_widths"]) == (len(WIDTHS) * len(SEEDS), len(WIDTHS))
        assert math.log(NTK_ERR_PREFACTOR) == pytest.approx(row["intercept"], abs=5 * SLOPE_TOL)


@pytest.mark.parametrize("depth", sorted(KAPPA_SLOPE_BY_DEPTH))
def test_fits_recover_final_kappa_slope_per_depth(main_sweep, depth):
    _, out = main_sweep
    row = fit_row(pd.read_csv(out / "fits.csv"), "kappa", depth=depth)
    assert_recovers(row, KAPPA_SLOPE_BY_DEPTH[depth])
    assert str(row["step"]) == str(STEPS[-1])


def test_fits_recover_per_layer_slopes(main_sweep):
    _, out = main_sweep
    fits = pd.read_csv(out / "fits.csv")
    for metric, depth, true_slope in (("param_change_layer1", 2, INPUT_SLOPE),
                                      ("param_change_layer2", 2, HIDDEN_SLOPE),
                                      ("param_change_layer3", 2, READOUT_SLOPE),
                                      ("param_change_layer2", 1, READOUT_SLOPE)):
        assert_recovers(fit_row(fits, metric, depth=depth), true_slope, check_interval=False)
    assert set(fits.columns[:3]) == {"metric", "step", "x"}
    assert list(fits.columns[-7:]) == ["slope", "intercept", "ci_low", "ci_high", "n_runs",
                                       "n_widths", "ci_method"]


def test_fits_are_deterministic(main_sweep):
    root, out = main_sweep
    again = fit_sweep(collect_sweep(root)).table.to_csv(index=False)
    assert again == (out / "fits.csv").read_text()


def test_one_seed_uses_ols_with_a_sane_interval(tmp_path):
    root = write_multirun(tmp_path / "one_seed",
                          width_depth_jobs(depths=(2,), seeds=(7,), with_kernels=False))
    fits = fit_sweep(collect_sweep(root)).table
    for metric, true_slope in (("ntk_err_inf", NTK_ERR_SLOPE),
                               ("kappa", KAPPA_SLOPE_BY_DEPTH[2])):
        row = fit_row(fits, metric)
        assert row["ci_method"] == "ols-t"
        assert_recovers(row, true_slope)
        assert 0 < row["ci_high"] - row["ci_low"] < MAX_OLS_CI_WIDTH
    assert "depth" not in fits.columns  # depth is not swept, so it groups nothing


def test_fit_power_law_is_exact_on_an_exact_law_and_has_no_interval_on_two_points():
    x = np.array([10.0, 100.0, 1000.0])
    fit = fit_power_law(x, 5.0 * x ** -0.75)
    assert fit.slope == pytest.approx(-0.75, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(5.0), abs=1e-12)
    two = fit_power_law(x[:2], x[:2] ** -1.0)
    assert two.ci_method == "none" and math.isnan(two.ci_low)
    with pytest.raises(ValueError):
        fit_power_law([10.0, 10.0], [1.0, 2.0])


def test_bootstrap_interval_covers_the_true_slope_at_its_nominal_rate():
    widths = np.repeat(np.array(WIDTHS, dtype=float), len(SEEDS))
    rng = np.random.default_rng(2024)
    covered = [
        fit_power_law(widths, widths ** -0.5 * np.exp(NOISE * rng.standard_normal(len(widths))),
                      seed=draw).contains(-0.5)
        for draw in range(COVERAGE_DRAWS)
    ]
    assert np.mean(covered) >= MIN_COVERAGE


def test_non_positive_values_are_ignored_with_a_note(tmp_path):
    jobs = width_depth_jobs(depths=(2,), seeds=(0, 1), with_kernels=False)
    jobs[0][1][-1]["kappa"] = 0.0
    fits = fit_sweep(collect_sweep(write_multirun(tmp_path / "zero", jobs)))
    assert fit_row(fits.table, "kappa")["n_runs"] == len(WIDTHS) * 2 - 1
    assert any("kappa" in note and "non-positive" in note for note in fits.notes)


# ---------------------------------------------------------------- figures and report


def test_main_sweep_draws_its_figures_and_only_those(main_sweep):
    _, out = main_sweep
    report = (out / "report.md").read_text()
    for name in MAIN_FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    # Neither output_scale nor parameterization was swept: no figure from made-up data.
    assert not (out / "kappa_vs_output_scale.png").exists()
    assert not (out / "kappa_vs_width_by_parameterization.png").exists()
    assert "| depth | 1, 2 |" in report


def test_output_scale_and_parameterization_sweeps(tmp_path):
    widths, alphas = (128, 512), (0.5, 1.0, 2.0, 4.0)
    kappa_slope = {"ntk": -0.6, "mup": 0.0}
    jobs = [(summary_for(w, 2, s, parameterization=param, output_scale=alpha,
                         dataset="gaussian"),
             metric_rows(w, 2, s, kappa_slope=kappa_slope[param], kappa_prefactor=0.3 / alpha),
             None)
            for param in kappa_slope for alpha in alphas for w in widths for s in SEEDS]
    sweep = collect_sweep(write_multirun(tmp_path / "alpha", jobs))
    assert set(sweep.knobs) == {"parameterization", "output_scale"}
    fits = fit_sweep(sweep)
    for param in kappa_slope:
        for width in widths:
            row = fit_row(fits.table, "kappa", x="output_scale", parameterization=param,
                          width=width)
            assert_recovers(row, -1.0)
            assert row["n_widths"] == sum(a >= 1 for a in alphas)  # α < 1 is not lazy
        row = fit_row(fits.table, "kappa", parameterization=param, output_scale=2.0)
        assert_recovers(row, kappa_slope[param], check_interval=False)
    # The figures straight from their functions: the full analysis would also draw one
    # panel per (parameterization, α) in the step and per-layer figures, ~5 s on 2 cores.
    for name, draw in (("kappa_vs_output_scale.png", plot_kappa_vs_output_scale),
                       ("kappa_vs_width_by_parameterization.png",
                        plot_kappa_vs_width_by_parameterization)):
        assert draw(sweep, fits, tmp_path / name) and (tmp_path / name).exists()
    assert not plot_jacot_fig1(sweep, fits, tmp_path / "jacot_fig1.png")  # no circle runs
    assert not (tmp_path / "jacot_fig1.png").exists()


def test_damaged_and_unfinished_runs_are_listed_not_fatal(tmp_path):
    root = tmp_path / "messy"
    for index, width in enumerate((64, 256)):
        write_run(root / f"ok{index}", summary_for(width, 1, 0), metric_rows(width, 1, 0))
    write_run(root / "failed", summary_for(64, 1, 1, status="failed",
                                           message="RuntimeError: CUDA out of memory"))
    diverged = metric_rows(128, 1, 0)
    diverged[-1]["train_loss"] = float("nan")
    write_run(root / "diverged", summary_for(128, 1, 0, status="diverged", diverged_step=37,
                                             message="loss is nan"), diverged)
    write_run(root / "interrupted", summary_for(128, 1, 2, status="interrupted",
                                                message="KeyboardInterrupt"),
              metric_rows(128, 1, 2)[:2])
    write_run(root / "killed", summary_for(512, 1, 0, status="running"))
    corrupt = write_run(root / "corrupt", summary_for(512, 1, 1))
    (corrupt / "summary.json").write_text('{"width": 512, "sta')
    half = write_run(root / "half_csv", summary_for(1024, 1, 0))  # circle, no kernels.pt
    (half / "metrics.csv").write_text("step,time,kappa,ntk_err_inf\n0,0.0,0.0,0.1\n100,10.0,")
    (root / "hydra_only" / ".hydra").mkdir(parents=True)
    (root / "listish").mkdir()
    (root / "listish" / "summary.json").write_text("[1, 2]")

    out = analyze_sweep(root)

    report = (out / "report.md").read_text()
    for folder, status in (("failed", "failed"), ("diverged", "diverged"),
                           ("interrupted", "interrupted"), ("killed", "incomplete"),
                           ("corrupt", "incomplete"), ("hydra_only", "incomplete"),
                           ("listish", "incomplete")):
        assert f"| `{folder}` | {status} |" in report, folder
    assert "diverged at step 37" in report
    assert "CUDA out of memory" in report
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["run_dir"]) == {"ok0", "ok1", "diverged", "interrupted", "half_csv"}
    fits = pd.read_csv(out / "fits.csv")
    assert fit_row(fits, "ntk_err_inf")["n_runs"] == 3  # ok0, ok1 and half_csv's step 0


def test_empty_folder_writes_a_report_saying_so(tmp_path):
    out = analyze_sweep(tmp_path, tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere"
    assert "No run folders were found" in (out / "report.md").read_text()
    assert pd.read_csv(out / "fits.csv").empty
    assert not list(out.glob("*.png"))


def test_progress_bars_count_the_runs_read_and_the_figures(tmp_path, capsys):
    """progress=True shows a bar over the run folders (its total is the number of runs) and
    one over the figures; progress=False (the default) prints nothing."""
    root = write_multirun(tmp_path / "bars", width_depth_jobs(depths=(1,), seeds=(0,), with_kernels=False))
    analyze_sweep(root, tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    analyze_sweep(root, tmp_path / "bars_out", progress=True)
    err = capsys.readouterr().err
    assert f"reading runs:   0%|          | 0/{len(WIDTHS)}" in err  # the bar's first frame
    assert "figures:   0%" in err


# ---------------------------------------------------------------- command line


def test_cli_writes_the_analysis(tmp_path, capsys):
    root = write_multirun(tmp_path / "cli",
                          width_depth_jobs(depths=(1,), seeds=(0,), with_kernels=False))
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"report: {tmp_path / 'out' / 'report.md'}",
                                                    f"html:   {tmp_path / 'out' / 'report.html'}"]
    assert (tmp_path / "out" / "fits.csv").exists()


def test_cli_missing_dir_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "no_such_sweep"
    done = subprocess.run([sys.executable, "-m", "ntk_lab.analyze", str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "no_such_sweep" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
