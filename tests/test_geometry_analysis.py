"""The kernel-geometry part of the analysis on synthetic run folders with known power laws:
derived columns, fits.csv rows, theory text, figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ntk_lab.analysis import analyze_sweep, collect_sweep
from ntk_lab.analysis.geometry_fits import (
    ALIGNMENT_CHANGE, ROTATION, add_geometry_columns, geometry_final_metrics,
)
from tests.test_analysis import summary_for, write_multirun

WIDTHS = (64, 256, 1024)
SEEDS = (0, 1)
STEPS = (0, 5, 50)
N_PROBE = 8
DEPTH = 2
# The laws each parameterization follows for every geometry metric (lazy vs rich).
SLOPES = {"ntk": -0.5, "mup": 0.0}
NOISE = 0.02  # relative, seeded per run
# 2 % noise over a 16× width range moves a slope by ~0.01; 0.05 is ~5σ, far below the 0.5
# separating the two laws.
SLOPE_TOL = 0.05
ALIGNMENT_0 = 0.3
NNGP_ERR_SLOPE = -0.5
GEOMETRY_FIGURES = ("alignment_vs_step.png", "ntk_spectrum.png",
                    "eig_overlap_init_vs_width.png", "kappa_layers_vs_width.png")


def geometry_rows(width: int, seed: int, param: str) -> list[dict]:
    rng = np.random.default_rng([width, seed, len(param)])
    law = lambda c: c * width ** SLOPES[param] * (1 + NOISE * rng.standard_normal())  # noqa: E731
    final = {"alignment_change": law(0.1), "rotation": law(0.2), "ck_kappa": law(0.3),
             **{f"kappa_layer{i}": law(0.1 * i) for i in range(1, DEPTH + 2)}}
    nngp_err = 2.0 * width ** NNGP_ERR_SLOPE * (1 + NOISE * rng.standard_normal())
    rows = []
    for step in STEPS:
        frac = step / STEPS[-1]
        rows.append({
            "nngp_err_inf": nngp_err * (1 + frac),
            "step": step, "time": 0.1 * step, "train_loss": 1.0 - 0.5 * frac,
            "test_loss": 1.0, "kappa": final["ck_kappa"] * frac,
            "alignment": ALIGNMENT_0 + frac * final["alignment_change"],
            "eig_overlap_init": 1.0 - frac * final["rotation"], "eff_rank": 3.0,
            "ck_kappa": final["ck_kappa"] * frac,
            **{k: v * frac for k, v in final.items() if k.startswith("kappa_layer")},
        })
    return rows


def geometry_kernels(width: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(width + seed)
    x = torch.randn(N_PROBE, 3, generator=gen, dtype=torch.float64)
    theta_inf = x @ x.T + 1
    eig = torch.linalg.eigvalsh(theta_inf).flip(0)
    return {"probe_x": x, "theta_inf": theta_inf, "steps": torch.tensor(STEPS),
            "eigvals": torch.stack([eig * (1 + 0.1 * k / width) for k in range(len(STEPS))])}


@pytest.fixture(scope="module")
def geometry_sweep(tmp_path_factory):
    jobs = [(summary_for(w, DEPTH, s, parameterization=p, steps=STEPS[-1]),
             geometry_rows(w, s, p), geometry_kernels(w, s))
            for p in SLOPES for w in WIDTHS for s in SEEDS]
    root = write_multirun(tmp_path_factory.mktemp("geometry") / "multirun", jobs)
    return root, analyze_sweep(root)


def test_derived_columns_by_hand(geometry_sweep):
    root, _ = geometry_sweep
    sweep = add_geometry_columns(collect_sweep(root))
    final = sweep.at_final()
    assert np.allclose(final[ALIGNMENT_CHANGE], final["alignment"] - ALIGNMENT_0)
    assert np.allclose(final[ROTATION], 1 - final["eig_overlap_init"])
    assert (sweep.at_init()[ALIGNMENT_CHANGE] == 0).all()
    assert geometry_final_metrics(sweep.metric_columns) == [
        ALIGNMENT_CHANGE, ROTATION, "ck_kappa", "kappa_layer1", "kappa_layer2", "kappa_layer3"]


def test_fits_recover_the_laws_and_report_states_the_theory(geometry_sweep):
    _, out = geometry_sweep
    fits = pd.read_csv(out / "fits.csv")
    for metric in (ALIGNMENT_CHANGE, ROTATION, "ck_kappa", "kappa_layer1", "kappa_layer3"):
        for param, slope in SLOPES.items():
            row = fits[(fits["metric"] == metric) & (fits["parameterization"] == param)]
            assert len(row) == 1, (metric, param)
            assert abs(row["slope"].iloc[0] - slope) < SLOPE_TOL, (metric, param)
    init = fits[(fits["metric"] == "nngp_err_inf") & (fits["step"].astype(str) == "0")]
    assert len(init) == 2 and np.allclose(init["slope"], NNGP_ERR_SLOPE, atol=SLOPE_TOL)
    report = (out / "report.md").read_text()
    assert "≈ 0 (feature learning)" in report and "< 0 (lazy" in report
    assert "one_minus_eig_overlap_init" in (out / "runs.csv").read_text().splitlines()[0]


def test_geometry_figures_are_drawn(geometry_sweep):
    _, out = geometry_sweep
    report = (out / "report.md").read_text()
    for name in GEOMETRY_FIGURES:
        assert (out / name).stat().st_size > 0, name
        assert f"![{name}]" in report
