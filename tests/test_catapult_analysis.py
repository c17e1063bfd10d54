"""The catapult analysis on synthetic run folders with known phases: η_max/η_crit per width from
the diverged runs, the per-phase κ-vs-width slopes (one intercept per rate), the spike-and-recover
signature, and the figures and tables the analysis writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ntk_lab.analysis import analyze_sweep, collect_sweep
from ntk_lab.analysis import catapult
from tests.test_lazy_analysis import PNG_MAGIC, write_sweep

WIDTHS = (64, 256, 1024)
SEEDS = (0, 1)
RATES = (0.25, 0.5, 1.0, 1.414, 2.0, 2.828, 4.0, 8.0)
ETA_MAX = {64: 4.0, 256: 2.828, 1024: 2.828}  # the largest rate that trains, per width
LAZY_SLOPE, CATAPULT_SLOPE = -1.0, -0.1
NOISE = 0.02  # relative, per run, seeded
# 2 % noise on 12 (lazy) or ~14 (catapult) points over a 16× width range moves the slope by ~0.01
# (one σ); 0.06 is several σ and far below the 0.9 between the two phases' slopes.
SLOPE_TOL = 0.06
STEPS = (0, 1, 2, 4, 8, 16)


def runs():
    for width in WIDTHS:
        for rate in RATES:
            for seed in SEEDS:
                yield width, rate, seed


def summary_for(width, rate, seed, status):
    return {"width": width, "depth": 1, "lr": rate, "lr_unit": "crit", "seed": seed,
            "activation": "relu", "parameterization": "ntk", "w_std": 1.0, "b_std": 0.0,
            "dataset": "digits", "n_train": 64, "n_probe": 8, "ntk_method": "auto",
            "device": "cpu", "dtype": "float32", "steps": STEPS[-1], "out_dim": 1,
            "output_scale": 1.0, "center": False, "batch_size": None, "model": "mlp",
            "status": status, "message": "", "wall_time_s": 1.0,
            "diverged_step": 2 if status == "diverged" else None, "last_step": STEPS[-1],
            "versions": {"torch": "test"}}


def metric_rows(width, rate, seed):
    """κ follows the phase's law; above η_crit the loss spikes ×3 at step 2 and ends at 0.1×, and
    η·λ_max falls from 2·rate to 1.5; below, the loss decays and η·λ stays 2·rate."""
    rng = np.random.default_rng([width, int(rate * 1000), seed])
    slope, prefactor = (LAZY_SLOPE, 5.0) if rate <= 1.0 else (CATAPULT_SLOPE, 0.5)
    kappa = prefactor * rate * width ** slope * (1 + NOISE * rng.standard_normal())
    rows = []
    for step in STEPS:
        frac = step / STEPS[-1]
        if rate > 1.0:
            loss = {0: 1.0, 1: 2.0, 2: 3.0}.get(step, 0.1 + 0.4 * (1 - frac))
            eta_lambda = 2 * rate if step < 2 else 1.5
        else:
            loss, eta_lambda = math.exp(-2 * frac), 2 * rate
        rows.append({"step": step, "time": float(step), "train_loss": loss, "test_loss": loss,
                     "kappa": kappa * frac, "ntk_err_inf": 0.1, "param_change": 0.01 * frac,
                     "lambda_max_train": eta_lambda, "eta_lambda": eta_lambda})
    return rows


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    jobs = []
    for width, rate, seed in runs():
        if rate > ETA_MAX[width]:
            rows = metric_rows(width, rate, seed)[:3]
            rows[-1]["train_loss"] = float("nan")
            jobs.append((summary_for(width, rate, seed, "diverged"), rows))
        else:
            jobs.append((summary_for(width, rate, seed, "ok"), metric_rows(width, rate, seed)))
    return write_sweep(tmp_path_factory.mktemp("catapult") / "multirun", jobs)


def test_eta_max_is_the_largest_rate_every_seed_survives(sweep_root):
    table = catapult.eta_max_table(collect_sweep(sweep_root)).set_index("width")
    for width, eta_max in ETA_MAX.items():
        assert table.loc[width, "eta_max"] == eta_max
        assert table.loc[width, "first_diverged"] == RATES[RATES.index(eta_max) + 1]


def test_one_diverged_seed_is_enough_to_end_the_stable_range(tmp_path):
    jobs = [(summary_for(64, rate, seed, "diverged" if (rate, seed) == (2.0, 1) else "ok"),
             metric_rows(64, rate, seed)) for rate in (0.5, 1.0, 2.0, 4.0) for seed in SEEDS]
    jobs += [(summary_for(256, 0.5, seed, "ok"), metric_rows(256, 0.5, seed)) for seed in SEEDS]
    table = catapult.eta_max_table(collect_sweep(write_sweep(tmp_path / "m", jobs))).set_index("width")
    assert table.loc[64, "eta_max"] == 1.0 and table.loc[64, "first_diverged"] == 2.0


def test_phase_fits_recover_each_phase_slope(sweep_root):
    fits = catapult.phase_fits(collect_sweep(sweep_root)).set_index("phase")
    assert fits.loc["lazy", "slope"] == pytest.approx(LAZY_SLOPE, abs=SLOPE_TOL)
    assert fits.loc["catapult", "slope"] == pytest.approx(CATAPULT_SLOPE, abs=SLOPE_TOL)
    for phase, slope in (("lazy", LAZY_SLOPE), ("catapult", CATAPULT_SLOPE)):
        assert fits.loc[phase, "ci_low"] <= slope <= fits.loc[phase, "ci_high"]
    assert fits.loc["lazy", "lr_values"] == "0.25 0.5"
    # the catapult phase of each width stops at its own η_max: width 64 also has the rate 4
    assert fits.loc["catapult", "n_runs"] == 2 * (4 + 3 + 3)  # rates 1.414 … η_max per width
    assert fits.loc["lazy", "n_runs"] == 2 * 2 * len(WIDTHS)


def test_a_common_slope_is_not_fooled_by_rate_dependent_prefactors():
    """κ ∝ rate·n^−1 with the rates spread unevenly over widths: a pooled fit without per-rate
    intercepts would mix the prefactor into the slope; the fixed-effects fit does not."""
    rows = [{"width": w, "lr": r, "kappa": r * 10.0 * w ** -1.0}
            for w, r in ((64, 0.25), (256, 0.25), (256, 0.5), (1024, 0.5), (1024, 0.35), (64, 0.35))]
    fit = catapult._fixed_effects_slope(pd.DataFrame(rows))
    assert fit["slope"] == pytest.approx(-1.0, abs=1e-12)


def test_the_spike_and_recovery_are_read_from_the_loss(sweep_root):
    signs = catapult.catapult_signatures(collect_sweep(sweep_root))
    assert len(signs) == 2 * (4 + 3 + 3) and signs["spiked_and_recovered"].all()
    assert (signs["eta_lambda_final"] == 1.5).all()


def test_the_analysis_writes_the_phase_tables_figures_and_report_lines(sweep_root):
    out = analyze_sweep(sweep_root)
    for name in ("catapult_phase_diagram.png", "catapult_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert len(pd.read_csv(out / "catapult.csv")) == len(WIDTHS)
    assert set(pd.read_csv(out / "catapult_fits.csv")["phase"]) == {"lazy", "catapult"}
    report = (out / "report.md").read_text()
    assert "η_max/η_crit = 4" in report and "in the lazy phase" in report


def test_a_sweep_in_absolute_rates_has_no_catapult_section(tmp_path):
    jobs = []
    for width in WIDTHS[:2]:
        for rate in (0.5, 1.0):
            summary = summary_for(width, rate, 0, "ok")
            summary["lr_unit"] = "absolute"
            jobs.append((summary, metric_rows(width, rate, 0)))
    out = analyze_sweep(write_sweep(tmp_path / "m", jobs))
    assert not (out / "catapult.csv").exists() and not (out / "catapult_phase_diagram.png").exists()
