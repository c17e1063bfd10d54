"""μTransfer measured on a small sweep (slow: ~2 min on a 2-core CPU): with Adam, the best
learning rate moves with width under the standard parameterization and stays put under μP
(Yang et al. 2022, Tensor Programs V). The full study is experiments/lr_transfer/."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

RATES = [2.0 ** k for k in range(-13, 1, 2)]  # 7 rates, a factor 4 apart
WIDTHS = (64, 1024)


def test_the_best_adam_rate_moves_with_width_under_standard_and_not_under_mup(workdir):
    sweep = workdir / "sweep"
    result = run_cli(["-m", "experiment=lr_transfer_cpu", "data=digits", "data.classes=null", "data.n_train=128",
                      "data.n_test=64", "train.steps=60",
                      f"width={','.join(map(str, WIDTHS))}", f"lr={','.join(map(str, RATES))}",
                      "seed=0", f"hydra.sweep.dir={sweep}"], workdir, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(sweep / "analysis" / "lr_transfer.csv")
    steps = {}
    for parameterization, rows in table.groupby("parameterization"):
        grid = rows.set_index("width")["eta_grid"]
        steps[parameterization] = math.log(grid[WIDTHS[0]] / grid[WIDTHS[-1]], 4.0)
    # 16× wider: standard's optimum moves down by ≥ 1 step of 4× (theory: 16× = 2 steps), μP's by ≤ 1
    assert steps["standard"] >= 1.0, steps
    assert abs(steps["mup"]) <= 1.0, steps
    regret = table.set_index(["parameterization", "width"])["regret"]
    assert regret[("mup", WIDTHS[-1])] < regret[("standard", WIDTHS[-1])]
