"""The training loop and a run folder: κ at step 0, reproducibility, checkpoints, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from ntk_lab.experiment import run_experiment
from ntk_lab.config import validate
from ntk_lab.records import load_kernels, read_run
from ntk_lab.training.loop import checkpoint_steps


def tiny_config(**overrides):
    """A validated config small enough to train in about a second."""
    cfg = {
        "model": {"width": 32, "depth": 2, "activation": "relu", "parameterization": "ntk",
                  "w_std": 1.0, "b_std": 0.1, "out_dim": None, "output_scale": 1.0, "center": False},
        "data": {"name": "circle", "n_train": 4, "n_test": 16, "n_probe": 8, "seed": 0},
        "train": {"steps": 12, "lr": 1.0, "batch_size": None, "seed": 3},
        "ntk": {"method": "auto", "checkpoints": 5, "memory_budget_mb": 64, "jac_change": True},
        "precision": "float32", "device": "cpu", "resume": False, "progress": False,
    }
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return validate(cfg)


def test_checkpoint_steps_are_log_spaced_with_both_ends():
    steps = checkpoint_steps(200, 20)
    assert steps[0] == 0 and steps[-1] == 200
    assert steps == sorted(set(steps)) and 12 <= len(steps) <= 21
    assert checkpoint_steps(0, 5) == [0]
    assert checkpoint_steps(3, 10) == [0, 1, 2, 3]


def test_run_folder_has_the_output_contract_and_kappa_is_zero_at_step_0(tmp_path):
    outcome = run_experiment(tiny_config(), tmp_path)
    assert outcome.status == "ok"
    record = read_run(tmp_path)
    frame = record.metrics
    for column in ("step", "time", "train_loss", "test_loss", "kappa", "kernel_distance",
                   "ntk_err_inf", "param_change", "jac_change", "param_change_layer1",
                   "param_change_layer3"):
        assert column in frame.columns, column
    first = frame.iloc[0]
    assert first["step"] == 0
    assert first["kappa"] == 0.0 and first["param_change"] == 0.0 and first["jac_change"] == 0.0
    assert (frame["kappa"].iloc[1:] > 0).all()  # training moves the kernel
    assert frame["time"].tolist() == [1.0 * s for s in frame["step"]]  # t = η·step
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("width", "depth", "lr", "activation", "parameterization", "w_std", "b_std",
                "seed", "dataset", "n_train", "n_probe", "ntk_method", "device", "dtype",
                "status", "message", "wall_time_s", "final", "versions"):
        assert key in summary, key
    kernels = load_kernels(tmp_path)
    assert kernels["theta"].shape == (len(frame), 8, 8)
    assert kernels["theta_inf"].dtype == torch.float64 and kernels["theta_inf"].shape == (8, 8)
    assert kernels["steps"].tolist() == frame["step"].tolist()
    assert (tmp_path / "plots" / "loss_kappa.png").is_file()
    assert (tmp_path / "plots" / "ntk_circle.png").is_file()


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_experiment(tiny_config(), a)
    run_experiment(tiny_config(), b)
    run_experiment(tiny_config(**{"train.seed": 4}), c)
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert (a / "metrics.csv").read_bytes() != (c / "metrics.csv").read_bytes()


def test_minibatch_sgd_is_reproducible_too(tmp_path):
    cfg = lambda: tiny_config(**{"data.name": "sphere_teacher", "data.n_train": 20,  # noqa: E731
                                 "train.batch_size": 6, "train.lr": 0.5})
    run_experiment(cfg(), tmp_path / "a")
    run_experiment(cfg(), tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_a_diverging_run_is_recorded_as_diverged_with_its_step(tmp_path):
    outcome = run_experiment(tiny_config(**{"train.lr": 1e6, "train.steps": 50}), tmp_path)
    assert outcome.status == "diverged"
    summary = read_run(tmp_path).summary
    assert summary["status"] == "diverged" and isinstance(summary["diverged_step"], int)
    assert "step" in summary["message"]


def test_a_stop_request_ends_the_run_as_interrupted_with_loadable_files(tmp_path):
    calls = {"n": 0}

    def stop_after_five_steps():
        calls["n"] += 1
        return calls["n"] > 5

    outcome = run_experiment(tiny_config(**{"train.steps": 100}), tmp_path,
                             stop_requested=stop_after_five_steps)
    assert outcome.status == "interrupted"
    record = read_run(tmp_path)
    assert record.status == "interrupted" and record.metrics["step"].max() <= 5
    assert load_kernels(tmp_path)["theta"].shape[0] == len(record.metrics)


@pytest.mark.parametrize("dataset", ["sphere_teacher", "digits"])
def test_other_datasets_run(tmp_path, dataset):
    outcome = run_experiment(tiny_config(**{"data.name": dataset, "data.n_train": 32,
                                            "data.n_test": 40, "train.lr": 0.5}), tmp_path)
    assert outcome.status == "ok"
    summary = read_run(tmp_path).summary
    assert summary["out_dim"] == (10 if dataset == "digits" else 1)
