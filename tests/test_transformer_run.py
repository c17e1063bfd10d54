"""The transformer and Serial networks in real runs: digits cut into patches and sequences
from a file end to end (Θ_∞ on the probe set, every drift column), the settings without a
closed form (NaN with the reason), μP Adam's per-tensor rates, the coordinate check on a
transformer, and each bad input's one-line error."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ntk_lab.config import ConfigError, validate
from ntk_lab.experiment import run_experiment
from ntk_lab.models import Transformer
from ntk_lab.models.serial import Dense, SelfAttention, Serial, TokenReadout
from ntk_lab.studies.coord_check import fit_slopes, run_coord_check
from ntk_lab.training.optimizers import OptimizerSettings, parameter_groups
from ntk_lab.data import make_dataset
from ntk_lab.models import network_inputs
from tests.conftest import run_cli
from tests.test_configs import composed

TINY_TRANSFORMER = ["model=transformer", "data=digits", "model.patch_size=4", "width=16", "depth=1",
                    "train.steps=3", "ntk.checkpoints=2", "data.n_probe=6", "data.n_train=16",
                    "data.n_test=16", "progress=false"]


def config_for(overrides: list[str]):
    return validate(composed([*TINY_TRANSFORMER, *overrides]))


def test_digits_as_patches_end_to_end(tmp_path):
    run_experiment(config_for(["lazy.infinite_width=true"]), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == "transformer"
    assert summary["patch_size"] == 4 and summary["mechanism"] == "softmax"
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for column in ("kappa", "ntk_err_inf", "jac_change", "param_change_layer1", "inf_gap"):
        assert metrics[column].iloc[1:].notna().all(), column
    assert 0 < metrics["ntk_err_inf"].iloc[0] < 2


def test_sequences_from_a_file(tmp_path):
    """data=file with x (N, T, d): the transformer takes the sequences as they are."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5, 3))
    np.savez(tmp_path / "seqs.npz", x=x, y=x[:, :, 0].mean(1, keepdims=True))
    config = validate(composed(["model=transformer", "data=file", f"data.path={tmp_path / 'seqs.npz'}",
                                "width=16", "depth=1", "train.steps=2", "ntk.checkpoints=2",
                                "data.n_probe=4", "progress=false"]))
    run_experiment(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert math.isfinite(summary["final"]["ntk_err_inf"])


def test_no_closed_form_is_nan_with_the_reason(tmp_path):
    run_experiment(config_for(["model.scaling=sqrt"]), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert "scaling='sqrt', mechanism='softmax'" in summary["theta_inf"]
    assert summary["final"]["ntk_err_inf"] is None or math.isnan(summary["final"]["ntk_err_inf"])
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["kappa"].iloc[1:].notna().all()


@pytest.mark.parametrize("overrides, message", [
    (["model.heads=3"], "model.heads=3 is invalid: must divide the width 16"),
    (["model.mechanism=sigmoid"], "model.mechanism='sigmoid' is invalid: allowed: softmax, identity, relu, abs"),
    (["model.scaling=cubic"], "model.scaling='cubic' is invalid: allowed: linear, sqrt"),
    (["model.pos_emb=rope"], "model.pos_emb='rope' is invalid"),
    (["model.patch_size=0"], "model.patch_size=0 is invalid"),
])
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        config_for(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.patch_size=3"], "model.patch_size=3 does not divide the image size 8×8: allowed: 1, 2, 4, 8"),
    (["model.patch_size=null"], "needs model.patch_size"),
    (["data=circle"], "model=transformer needs sequences (N, T, d)"),
])
def test_data_that_cannot_be_tokens_is_a_one_line_error(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        run_experiment(config_for(overrides), tmp_path / "run")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_says_one_line_and_exits_2(workdir):
    result = run_cli([*TINY_TRANSFORMER, "model.patch_size=3"], workdir)
    assert result.returncode == 2
    assert "ntk_lab: error: model.patch_size=3 does not divide" in result.stderr
    assert "Traceback" not in result.stderr


def test_mup_adam_rates_for_a_transformer():
    """μP Adam: the embedding is the input layer (η/√n), attention and MLP maps hidden (η/n,
    biases η/√n), the readout η/√n and its bias η; positional embeddings keep η."""
    n = 64
    net = Transformer(3, n, 1, parameterization="mup", pos_emb="sum", n_tokens=4, b_std=0.1)
    groups = parameter_groups(net, OptimizerSettings("adam", lr=1.0), "mup")
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    layers = net.layers
    assert rate[id(layers[0].weight)] == pytest.approx(n ** -0.5)
    attention = layers[1].branch[1]
    assert rate[id(attention.key.weight)] == pytest.approx(1 / n)
    assert rate[id(attention.out.bias)] == pytest.approx(n ** -0.5)
    assert rate[id(attention.pos_embedding)] == pytest.approx(1.0)
    assert rate[id(layers[-1].weight)] == pytest.approx(n ** -0.5)
    assert rate[id(layers[-1].bias)] == pytest.approx(1.0)
    assert len(rate) == sum(1 for p in net.parameters() if p.requires_grad)
    serial = Serial(Dense(3, n), SelfAttention(n, n), TokenReadout("gap"), Dense(n, 1), parameterization="mup")
    assert len(parameter_groups(serial, OptimizerSettings("adam", lr=1.0), "mup")) >= 4


def test_coordinate_check_on_a_transformer():
    """Hidden features move ∝ width^(−1/2) under ntk and ≈ width^0 under mup (digits as 4
    tokens of 16, 3 GD steps at lr 0.1, 2 seeds). Measured at widths 32…512: ntk −0.43 to
    −0.46, mup −0.03 to −0.06 (every hidden layer)."""
    data = network_inputs("transformer", make_dataset("digits", n_train=64, n_test=32, n_probe=16))
    in_shape = tuple(data.x_train.shape[1:])

    def build(width, parameterization, seed):
        return Transformer(16, width, 1, patch_size=4, parameterization=parameterization,
                           out_dim=data.out_dim, seed=seed)

    table = run_coord_check(data, widths=[32, 128, 512], parameterizations=["ntk", "mup"], seeds=[0, 1],
                            depth=1, steps=3, lr=0.1, build=build)
    assert in_shape == (1, 8, 8)
    fits = fit_slopes(table)
    hidden = fits[(fits["metric"] == "l1_delta") & (fits["step"] == 3) & fits["predicted"].notna()]
    ntk, mup = hidden[hidden["parameterization"] == "ntk"], hidden[hidden["parameterization"] == "mup"]
    assert len(ntk) >= 5 and len(mup) == len(ntk)
    assert ntk["slope"].between(-0.7, -0.3).all(), ntk[["layer", "slope"]]
    assert mup["slope"].between(-0.2, 0.2).all(), mup[["layer", "slope"]]


def test_the_readme_serial_example_runs_as_written():
    """The README's Serial example, executed from the README itself: an exact Θ_∞ beside the
    empirical NTK of a width-256 network (within 30 % at this width on 8 sequences)."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("from ntk_lab.models.serial import")
    block = readme[readme.rindex("```python", 0, start) + len("```python"):readme.index("```", start)]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    theta, theta_inf = scope["theta"], scope["theta_inf"]
    assert theta.shape == theta_inf.shape == (8, 8) and theta_inf.dtype == torch.float64
    assert float((theta.double() - theta_inf).norm() / theta_inf.norm()) < 0.3
