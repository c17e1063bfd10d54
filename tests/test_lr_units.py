"""train.lr_unit=crit: the learning rate in units of η_crit = 2/λ_max(Θ_0/N) on the training set,
checked against an explicit eigendecomposition of the training-set NTK at initialization, and
the per-checkpoint curvature columns (lambda_max_train, eta_lambda)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ntk_lab.config import ConfigError, validate
from ntk_lab.data import make_dataset
from ntk_lab.experiment import build_model, data_settings, network_inputs, run_experiment
from ntk_lab.kernels import empirical_ntk
from ntk_lab.records import read_run

CRIT_RTOL = 1e-6
"""η_crit from Lanczos on NTK-vector products against eigvalsh of the explicit kernel: the
iteration stops at a relative change of 1e-6 (kernel_curvature.EIG_TOL) from below, and in
float64 on a 24-point training set it converges in a handful of products."""


def config(data=None, **train):
    return validate({
        "model": {"name": "mlp", "width": 64, "depth": 2, "activation": "relu",
                  "parameterization": "ntk", "w_std": 1.0, "b_std": 0.1, "out_dim": None,
                  "output_scale": 1.0, "center": False},
        "data": {"name": "sphere_teacher", "n_train": 24, "n_test": 8, "n_probe": 4, "seed": 0,
                 **(data or {})},
        "train": {"steps": 6, "lr": 0.5, "batch_size": None, "seed": 1, **train},
        "ntk": {"method": "auto", "checkpoints": 3, "memory_budget_mb": 64},
        "lazy": {"linearized": False, "kappa_hessian": False, "infinite_width": False},
        "precision": "float64", "device": "cpu", "resume": False, "progress": False,
    })


def explicit_lambda_max(cfg) -> float:
    """λ_max(Θ_0/N): the same network at initialization, its full training-set kernel, eigvalsh."""
    data = network_inputs(cfg.model.name, make_dataset(cfg.data.name, **data_settings(cfg.data)))
    data = data.to(torch.float64, torch.device("cpu"))
    model = build_model(cfg, data, torch.float64, "cpu")
    theta = empirical_ntk(model, data.x_train, method="jacrev")  # (N, N), one output
    return torch.linalg.eigvalsh(theta / len(data.x_train)).max().item()


def test_lr_unit_crit_sets_the_rate_from_the_training_set_kernel(tmp_path):
    cfg = config(lr_unit="crit", lr=0.5)
    expected = explicit_lambda_max(cfg)
    run_experiment(cfg, tmp_path)
    summary = read_run(tmp_path).summary
    assert summary["lr"] == 0.5 and summary["lr_unit"] == "crit"
    assert summary["lambda_max_train_0"] == pytest.approx(expected, rel=CRIT_RTOL)
    assert summary["eta_crit"] == pytest.approx(2.0 / expected, rel=CRIT_RTOL)
    assert summary["lr_absolute"] == pytest.approx(0.5 * 2.0 / expected, rel=CRIT_RTOL)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    # at step 0 η·λ_max(Θ_0/N) is the multiple × 2 by construction; the time axis is η·step
    assert metrics["eta_lambda"].iloc[0] == pytest.approx(1.0, rel=CRIT_RTOL)
    assert metrics["lambda_max_train"].iloc[0] == pytest.approx(expected, rel=CRIT_RTOL)
    last = metrics.iloc[-1]
    assert last["time"] == pytest.approx(summary["lr_absolute"] * last["step"])


def test_absolute_is_todays_behaviour_and_records_no_curvature(tmp_path):
    run_experiment(config(lr=0.5), tmp_path)
    summary = read_run(tmp_path).summary
    assert summary["lr_unit"] == "absolute" and "eta_crit" not in summary
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert "lambda_max_train" not in metrics and metrics["time"].iloc[-1] == pytest.approx(0.5 * 6)


def test_the_curvature_columns_can_be_asked_for_alone(tmp_path):
    cfg = config(lr=0.5)
    cfg.ntk.lambda_max = True
    run_experiment(cfg, tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["eta_lambda"].tolist() == pytest.approx((0.5 * metrics["lambda_max_train"]).tolist())
    assert metrics["lambda_max_train"].gt(0).all()


@pytest.mark.parametrize("train, named", [
    (dict(optimizer="adam"), "train.optimizer=adam"),
    (dict(optimizer="momentum"), "train.optimizer=momentum"),
    (dict(loss="cross_entropy", data={"name": "digits"}), "train.loss=cross_entropy"),
])
def test_crit_outside_gradient_descent_on_mse_is_one_line(train, named):
    with pytest.raises(ConfigError) as err:
        config(lr_unit="crit", **train)
    message = str(err.value)
    assert "\n" not in message and "train.lr_unit=crit" in message and named in message


def test_an_unknown_unit_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="train.lr_unit.*absolute, crit"):
        config(lr_unit="critical")
