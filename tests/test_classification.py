"""Classification runs end to end: accuracy at every checkpoint, the cross-entropy and momentum
Θ_∞ predictions, Adam's NaN with its reason, the schedule's clock, one-line errors for every
bad setting, and the CLI on files in MNIST's format."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from ntk_lab.data import make_dataset
from ntk_lab.experiment import build_model, run_experiment
from ntk_lab.kernels import infinite_width_kernels
from ntk_lab.config import ConfigError, validate
from ntk_lab.data import generated_files as synthetic
from ntk_lab.training.optimizers import elapsed_time
from ntk_lab.records import read_run
from tests.conftest import run_cli

# float32 network outputs against the float64 prediction started from the same f_0: at step 0
# they agree to float32 round-off of O(1) losses.
STEP0_TOL = 1e-5


def config(**overrides):
    cfg = {
        "model": {"width": 32, "depth": 2, "activation": "relu", "parameterization": "ntk",
                  "w_std": 1.0, "b_std": 0.1, "out_dim": None, "output_scale": 1.0, "center": False},
        "data": {"name": "digits", "n_train": 40, "n_test": 30, "n_probe": 6, "seed": 0},
        "train": {"steps": 10, "lr": 0.5, "batch_size": None, "seed": 1},
        "ntk": {"method": "auto", "checkpoints": 4, "memory_budget_mb": 64, "jac_change": True},
        "precision": "float32", "device": "cpu", "resume": False, "progress": False,
    }
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return validate(cfg)


def _metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")



# The run's f_t against scipy's matrix exponential of the same float64 kernel: both are exact
# solutions of one linear ODE; they differ by the eigendecomposition's round-off (~1e-13 on
# these O(1) losses).
CLOSED_FORM_RTOL = 1e-9


def test_the_infinite_width_prediction_follows_the_mse_gradient_flow_at_every_checkpoint(tmp_path):
    """test_loss_inf and train_loss_inf at every checkpoint of an MSE run against an independent
    solve of gradient flow on Θ_∞ from the network's own f_0:
    f_t(X) = y + e^{−tΘ(X,X)/N}(f_0(X) − y),
    f_t(x*) = f_0(x*) + Θ(x*,X) Θ(X,X)⁻¹ (I − e^{−tΘ(X,X)/N})(y − f_0(X)), t = η·step."""
    cfg = config(**{"train.loss": "mse", "train.optimizer": "sgd"})
    assert run_experiment(cfg, tmp_path).status == "ok"
    m = _metrics(tmp_path)
    data = make_dataset("digits", n_train=40, n_test=30, n_probe=6, seed=0)
    x = torch.cat([data.x_train, data.x_test]).double()
    _, theta = infinite_width_kernels(x, x[:40], activation="relu", depth=2, w_std=1.0, b_std=0.1)
    net = build_model(cfg, data, torch.float32, "cpu")
    with torch.no_grad():
        f0 = net(x.float()).double().numpy()
    y, y_test = data.y_train.numpy(), data.y_test.numpy()
    k_train, k_test = theta[:40].numpy(), theta[40:].numpy()
    for step, time, got_test, got_train in zip(m.step, m.time, m.test_loss_inf, m.train_loss_inf):
        decay = scipy.linalg.expm(-time * k_train / 40)
        f_train = y + decay @ (f0[:40] - y)
        f_test = f0[40:] + k_test @ np.linalg.solve(k_train, (np.eye(40) - decay) @ (y - f0[:40]))
        want_test = 0.5 * ((f_test - y_test) ** 2).sum() / len(y_test)
        want_train = 0.5 * ((f_train - y) ** 2).sum() / len(y)
        assert got_test == pytest.approx(want_test, rel=CLOSED_FORM_RTOL), step
        assert got_train == pytest.approx(want_train, rel=CLOSED_FORM_RTOL), step
    assert m.test_loss_inf.iloc[-1] != pytest.approx(m.test_loss_inf.iloc[0], rel=1e-3)  # it moved

@pytest.mark.parametrize("loss,optimizer", [("cross_entropy", "momentum"), ("mse", "sgd")])
def test_accuracy_and_the_infinite_width_prediction_at_every_checkpoint(tmp_path, loss, optimizer):
    outcome = run_experiment(config(**{"train.loss": loss, "train.optimizer": optimizer}), tmp_path)
    assert outcome.status == "ok"
    m = _metrics(tmp_path)
    for column in ("train_acc", "test_acc", "test_acc_inf", "inf_gap", "test_loss_inf"):
        assert column in m, column
    assert m[["train_acc", "test_acc", "test_acc_inf"]].notna().all().all()
    assert ((m.test_acc >= 0) & (m.test_acc <= 1)).all()
    assert abs(m.test_loss_inf[0] - m.test_loss[0]) < STEP0_TOL  # both start at the network's f_0
    assert m.inf_gap.iloc[1:].notna().all() and m.train_loss.iloc[-1] < m.train_loss.iloc[0]
    # (the prediction's values: the test below for MSE, tests/test_flow.py for the flows)
    assert m.time.tolist() == pytest.approx([0.5 * s for s in m.step])
    summary = read_run(tmp_path).summary
    assert summary["loss"] == loss and summary["optimizer"] == optimizer
    assert "infinite_width" not in summary


def test_adam_records_nan_with_the_reason(tmp_path):
    outcome = run_experiment(config(**{"train.optimizer": "adam", "train.lr": 0.01}), tmp_path)
    assert outcome.status == "ok"
    m = _metrics(tmp_path)
    assert m[["inf_gap", "test_loss_inf", "train_loss_inf", "test_acc_inf"]].isna().all().all()
    assert m.kappa.iloc[-1] > 0 and m.test_acc.notna().all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "Adam" in summary["infinite_width"]


def test_the_cosine_schedule_sets_the_clock(tmp_path):
    run_experiment(config(**{"train.schedule": "cosine"}), tmp_path)
    m = _metrics(tmp_path)
    assert m.time.tolist() == pytest.approx([elapsed_time("cosine", 0.5, s, 10) for s in m.step])
    assert m.time.iloc[-1] == pytest.approx(0.5 * 5.5)  # Σ_k (1 + cos πk/10)/2 = 5.5


@pytest.mark.parametrize("overrides,match", [
    ({"train.loss": "hinge"}, "train.loss='hinge' is invalid: allowed: mse, cross_entropy"),
    ({"train.optimizer": "rmsprop"}, "train.optimizer='rmsprop' is invalid: allowed: sgd, momentum, adam"),
    ({"train.schedule": "step"}, "train.schedule='step' is invalid: allowed: constant, cosine"),
    ({"train.momentum": 1.0}, "train.momentum=1.0 is invalid: must be in"),
    ({"train.weight_decay": -1}, "train.weight_decay=-1 is invalid: must be >= 0"),
    ({"train.betas": [0.9]}, r"train.betas=\[0.9\] is invalid: must be two numbers"),
    ({"train.betas": [0.9, 1.0]}, r"train.betas=\[0.9, 1.0\] is invalid"),
    ({"train.eps": 0}, "train.eps=0 is invalid: must be > 0"),
    ({"train.loss": "cross_entropy", "data.name": "circle"}, "data=circle is not a classification"),
    ({"data.classes": [3, 5]}, "data.classes=.* is invalid: only for data=mnist"),
    ({"data.name": "mnist", "data.classes": [3]}, "at least two distinct"),
    ({"data.name": "mnist", "data.classes": [3, 3]}, "at least two distinct"),
    ({"data.name": "mnist", "data.classes": "3,5"}, "at least two distinct"),
    ({"data.name": "mnist", "data.download": "yes"}, "data.download='yes' is invalid: must be true or false"),
    ({"data.name": "mnist", "data.mirror": "example.org/x"}, "data.mirror='example.org/x' is invalid"),
    ({"train.loss": "cross_entropy", "lazy": {"linearized": True}}, "lazy.linearized=true is invalid"),
])
def test_bad_settings_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        config(**overrides)
    assert "\n" not in str(info.value)


@pytest.fixture
def mnist_root(tmp_path):
    synthetic.write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", 300, 100)  # torchvision's layout
    return tmp_path / "data"


CLI = ["width=32", "depth=1", "train.steps=8", "ntk.checkpoints=3", "data.n_train=40",
       "data.n_test=20", "data.n_probe=6", "lr=0.5", "progress=false"]


def test_cli_mnist_cross_entropy_momentum(workdir, mnist_root):
    result = run_cli(["data=mnist", f"data.root={mnist_root}", "data.classes=[3,5,8]",
                      "train.loss=cross_entropy", "train.optimizer=momentum", *CLI], workdir)
    assert result.returncode == 0, result.stderr
    run = next((workdir / "outputs").rglob("metrics.csv")).parent
    m = _metrics(run)
    assert m.test_acc.notna().all() and math.isfinite(m.inf_gap.iloc[-1])
    summary = read_run(run).summary
    assert summary["classes"] == [3, 5, 8] and summary["status"] == "ok"


def test_cli_missing_files_is_one_line(workdir, tmp_path):
    """(No network: test_image_download.py; both reach run.py as the same one-line DataError.)"""
    result = run_cli(["data=mnist", f"data.root={tmp_path / 'empty'}", *CLI], workdir)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "train-images-idx3-ubyte.gz" in line and str(tmp_path / "empty" / "mnist") in line
    assert "Traceback" not in result.stderr
