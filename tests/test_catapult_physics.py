"""The three learning-rate phases of Lewkowycz et al. 2020 measured on small runs (CI's physics
tier): with learning rates in units of η_crit = 2/λ_max(Θ_0/N) (train.lr_unit=crit), a ReLU MLP
on the bundled digits is lazy below η_crit (κ falls with width), catapults above it (the loss
spikes, then falls below its start; η·λ_max(Θ_T/N) ends below 2; κ stays of order one at every
width) and diverges far above. ~15 s on a 2-core CPU."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ntk_lab.config import validate
from ntk_lab.experiment import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.physics]

WIDTHS = (128, 1024)
LAZY, CATAPULT, DIVERGENT = 0.35, 1.5, 16.0  # η/η_crit; measured here: η_max/η_crit ≈ 1.5–2
LAZY_SLOPE_MAX = -0.7      # the lazy exponent (Dyer & Gur-Ari: −1); measured −1.2 on this setup
CATAPULT_SLOPE_MIN = -0.25  # the catapult's kernel keeps moving at every width; measured −0.1


def run(tmp_path, width, rate):
    config = validate({
        "model": {"name": "mlp", "width": width, "depth": 1, "activation": "relu",
                  "parameterization": "ntk", "w_std": 1.0, "b_std": 0.0, "out_dim": None,
                  "output_scale": 1.0, "center": False},
        "data": {"name": "digits", "n_train": 64, "n_test": 64, "n_probe": 8, "seed": 0},
        "train": {"steps": 60, "lr": rate, "batch_size": None, "seed": 0, "lr_unit": "crit"},
        "ntk": {"method": "auto", "checkpoints": 12, "memory_budget_mb": 256},
        "lazy": {"linearized": False, "kappa_hessian": False, "infinite_width": False},
        "precision": "float32", "device": "cpu", "resume": False, "progress": False,
    })
    folder = tmp_path / f"w{width}_lr{rate}"
    outcome = run_experiment(config, folder)
    return outcome.status, pd.read_csv(folder / "metrics.csv")


def slope(kappas: dict[int, float]) -> float:
    (w1, k1), (w2, k2) = sorted(kappas.items())
    return math.log(k2 / k1) / math.log(w2 / w1)


def test_lazy_below_the_critical_rate_catapult_above_it_divergence_far_above(tmp_path):
    lazy, catapult = {}, {}
    for width in WIDTHS:
        status, m = run(tmp_path, width, LAZY)
        assert status == "ok"
        assert m["eta_lambda"].iloc[0] == pytest.approx(2 * LAZY, rel=1e-5)
        lazy[width] = m["kappa"].iloc[-1]

        status, m = run(tmp_path, width, CATAPULT)
        assert status == "ok"
        loss = m["train_loss"].to_numpy()
        peak = loss.argmax()
        assert loss[peak] > loss[0] and loss[peak:].min() < loss[0], loss  # spike, then recovery
        assert m["eta_lambda"].iloc[-1] < 2.0 < m["eta_lambda"].iloc[0]  # λ_max fell below the edge
        catapult[width] = m["kappa"].iloc[-1]

        assert run(tmp_path, width, DIVERGENT)[0] == "diverged"
    assert slope(lazy) <= LAZY_SLOPE_MAX, lazy
    assert slope(catapult) >= CATAPULT_SLOPE_MIN and min(catapult.values()) > 0.1, catapult
