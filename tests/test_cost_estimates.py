"""Cost known before: Θ_∞'s time is estimated from the shapes before it is computed, written to
summary.json, announced when long, and ``lazy.infinite_width=auto`` (the default) skips the
infinite-width prediction — NaN columns, the reason in summary.json, one warning line — when
its kernels would take longer than ``lazy.max_minutes``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ntk_lab.config import ConfigError, validate
from ntk_lab.experiment import run_experiment
from ntk_lab.kernels import network_limit
from ntk_lab.models import NetworkSpec
from ntk_lab.records import read_run

N_TRAIN, N_TEST, N_PROBE = 12, 20, 6


def config(**lazy):
    return validate({
        "model": {"name": "mlp", "width": 64, "depth": 2, "activation": "relu",
                  "parameterization": "ntk", "w_std": 1.0, "b_std": 0.1, "out_dim": None,
                  "output_scale": 1.0, "center": False},
        "data": {"name": "sphere_teacher", "n_train": N_TRAIN, "n_test": N_TEST,
                 "n_probe": N_PROBE, "seed": 0},
        "train": {"steps": 8, "lr": 0.5, "batch_size": None, "seed": 1},
        "ntk": {"method": "auto", "checkpoints": 3, "memory_budget_mb": 64},
        "lazy": {"linearized": False, "kappa_hessian": False, **lazy},
        "precision": "float64", "device": "cpu", "resume": False, "progress": False,
    })


def test_auto_skips_a_prediction_longer_than_max_minutes_with_one_warning(tmp_path, capsys):
    outcome = run_experiment(config(infinite_width="auto", max_minutes=1e-9), tmp_path)
    assert outcome.status == "ok"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "lazy.infinite_width=true forces it" in warnings[0]
    summary = read_run(tmp_path).summary
    assert summary["infinite_width"].startswith("lazy.infinite_width=auto skipped")
    assert "lazy.max_minutes=1e-09" in summary["infinite_width"]
    cost = summary["cost_estimates"]["prediction_kernels"]
    # the blocks the prediction computes: train×train by its upper triangle, test×train
    assert cost["pairs"] == N_TRAIN * (N_TRAIN + 1) // 2 + N_TEST * N_TRAIN and cost["seconds"] > 0
    assert summary["cost_estimates"]["theta_inf_probe"]["pairs"] == N_PROBE * (N_PROBE + 1) // 2
    memory = summary["memory_preflight"]  # the preflight's numbers are kept beside the costs
    assert memory["refused"] is False and memory["estimate_bytes"] > 0 and memory["not_sized"] is None
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics[["inf_gap", "test_loss_inf"]].isna().all().all()
    assert metrics["ntk_err_inf"].notna().all()  # the probe set's Θ_∞ is always computed


@pytest.mark.parametrize("lazy", [dict(infinite_width="auto"),  # default 5 min: far above
                                  dict(infinite_width=True, max_minutes=1e-9)])  # forced
def test_the_prediction_is_made_when_cheap_enough_or_forced(tmp_path, lazy):
    assert run_experiment(config(**lazy), tmp_path).status == "ok"
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["test_loss_inf"].notna().all() and metrics["inf_gap"].iloc[1:].notna().all()
    assert "infinite_width" not in read_run(tmp_path).summary


def test_off_means_no_estimate_and_no_prediction(tmp_path):
    assert run_experiment(config(infinite_width=False), tmp_path).status == "ok"
    summary = read_run(tmp_path).summary
    assert set(summary["cost_estimates"]) == {"theta_inf_probe"}
    assert "test_loss_inf" not in pd.read_csv(tmp_path / "metrics.csv")


@pytest.mark.parametrize("key,value,allowed", [
    ("infinite_width", "maybe", "allowed: true, false, auto"),
    ("max_minutes", 0, "must be a number of minutes > 0"),
])
def test_bad_lazy_settings_are_one_line(key, value, allowed):
    with pytest.raises(ConfigError, match=f"lazy.{key}=.* is invalid: {allowed}"):
        config(**{key: value})


def test_the_estimate_scales_the_timed_block_by_the_pairs(monkeypatch):
    """With a clock that charges 3 ms per pair computed (and nothing else), the calibration
    doubles its block until it has taken CALIBRATION_S with ≥ CALIBRATION_MIN_INPUTS inputs per
    side, and the estimate is exactly 3 ms per pair."""
    clock = [0.0]
    per_pair = 3e-3

    def fake_limit(x1, x2, progress):
        clock[0] += per_pair * len(x1) * len(x2)

    monkeypatch.setattr(network_limit, "_limit_function", lambda spec, in_shape: (
        None if spec.name == "custom" else fake_limit))
    monkeypatch.setattr(network_limit.time, "perf_counter", lambda: clock[0])
    cost = network_limit.estimate_limit_cost(NetworkSpec("mlp", 8, 1), torch.zeros(40, 3), 10_000)
    assert cost.seconds_per_pair == pytest.approx(per_pair) and cost.pairs == 10_000
    assert cost.seconds == pytest.approx(30.0)
    assert network_limit.estimate_limit_cost(NetworkSpec("custom", 8, 1), torch.zeros(4, 3), 9) is None
    assert network_limit.format_duration(7200 * 1.5) == "3.0 h"


def test_an_estimate_over_the_limit_is_calibrated_again_and_the_lowest_kept(monkeypatch):
    """A machine stall during the first calibration (100× slower) makes the estimate exceed the
    caller's limit; with confirm_above it is calibrated again and the true rate wins; without
    it the one draw stands. A computation that really is slow stays slow however often it is
    timed (CONFIRM_TRIES more calibrations, then the estimate stands)."""
    clock, slowdown, calls = [0.0], [1.0], [0]

    def fake_limit(x1, x2, progress):
        clock[0] += 1e-3 * len(x1) * len(x2) * slowdown[0]

    real_calibration = network_limit._seconds_per_pair

    def counted(limit, x):
        calls[0] += 1
        value = real_calibration(limit, x)
        slowdown[0] = stall_after[0]
        return value

    monkeypatch.setattr(network_limit, "_limit_function", lambda spec, in_shape: fake_limit)
    monkeypatch.setattr(network_limit, "_seconds_per_pair", counted)
    monkeypatch.setattr(network_limit.time, "perf_counter", lambda: clock[0])
    spec, x = NetworkSpec("mlp", 8, 1), torch.zeros(40, 3)
    stall_after = [1.0]
    cases = ((None, 100.0, 1.0, 0.1, 1),            # one stalled draw, no limit: it stands
             (60.0, 100.0, 1.0, 1e-3, 2),           # over the limit: calibrated again
             (60.0, 100.0, 100.0, 0.1, 1 + network_limit.CONFIRM_TRIES))  # really slow
    for confirm, first, after, expected, n_calibrations in cases:
        calls[0], slowdown[0], stall_after[0] = 0, first, after
        cost = network_limit.estimate_limit_cost(spec, x, 10_000, confirm_above=confirm)
        assert cost.seconds_per_pair == pytest.approx(expected)
        assert calls[0] == n_calibrations
