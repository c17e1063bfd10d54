"""lazy.infinite_width=monte_carlo in runs: Θ_∞ estimated from networks built like the run's,
for a built-in network (checked against its closed form within the recorded standard error) and
for a user's module (which has no closed form); the estimate's record in summary.json."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from ntk_lab.config import ConfigError, validate
from ntk_lab.experiment import run_experiment
from ntk_lab.kernels import infinite_width_kernels
from ntk_lab.records import load_kernels, read_run

SE_FACTOR = 4.0
"""‖Θ_MC − Θ_∞‖_F within this many ‖SE‖_F: E‖error‖²_F = ‖SE‖²_F for an unbiased estimate
(a one-hidden-layer network: E[Θ_0] = Θ_∞ at any width), so 4 is far in the tail."""


def config(model=None, lazy=None, ntk=None, data=None):
    model = model or {"name": "mlp", "width": 64, "depth": 1, "activation": "relu",
                      "parameterization": "ntk", "w_std": 1.0, "b_std": 0.1}
    return validate({
        "model": {"out_dim": None, "output_scale": 1.0, "center": False, **model},
        "data": {"name": "sphere_teacher", "n_train": 16, "n_test": 8, "n_probe": 6, "seed": 0,
                 **(data or {})},
        "train": {"steps": 4, "lr": 0.1, "batch_size": None, "seed": 1},
        "ntk": {"method": "auto", "checkpoints": 2, "memory_budget_mb": 64, **(ntk or {})},
        "lazy": {"linearized": False, "kappa_hessian": False, "infinite_width": "monte_carlo",
                 **(lazy or {})},
        "precision": "float64", "device": "cpu", "resume": False, "progress": False,
    })


def test_a_built_in_network_gets_an_estimate_within_its_standard_error(tmp_path):
    run_experiment(config(ntk={"mc_width": 512, "mc_samples": 24}), tmp_path)
    summary = read_run(tmp_path).summary
    record = summary["theta_inf"]
    assert record["estimate"] == "monte_carlo" and record["width"] == 512 and record["samples"] == 24
    kernels = load_kernels(tmp_path)
    exact = infinite_width_kernels(kernels["probe_x"].double(), activation="relu", depth=1,
                                   w_std=1.0, b_std=0.1)[1]
    error = (kernels["theta_inf"] - exact).norm() / exact.norm()
    assert 0 < error <= SE_FACTOR * record["ntk_relative_se"]
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["ntk_err_inf"].notna().all() and metrics["inf_gap"].iloc[1:].notna().all()


def test_a_custom_module_gets_theta_inf_and_the_prediction(tmp_path):
    custom = {"name": "custom", "width": 16, "depth": 1, "target": "ntk_lab.examples.custom_net:build"}
    run_experiment(config(model=custom, ntk={"mc_samples": 4},
                          data={"name": "digits", "n_train": 16, "n_test": 8, "n_probe": 4}), tmp_path)
    summary = read_run(tmp_path).summary
    assert summary["status"] == "ok" and summary["theta_inf"]["width"] == 16  # the run's own width
    assert "infinite_width" not in summary  # the prediction was made
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["ntk_err_inf"].map(math.isfinite).all()
    assert metrics["test_loss_inf"].map(math.isfinite).all()


@pytest.mark.parametrize("key, value, allowed", [
    ("infinite_width", "montecarlo", "monte_carlo"),
])
def test_bad_lazy_values_name_monte_carlo(key, value, allowed):
    with pytest.raises(ConfigError, match=allowed):
        config(lazy={key: value})


def test_too_few_samples_for_a_standard_error_are_refused():
    with pytest.raises(ConfigError, match="ntk.mc_samples"):
        config(ntk={"mc_samples": 1})
