"""Conv, residual and custom networks in real runs: the three networks and the
worked example custom module end to end in one subprocess sweep, the config knobs, and each
bad input's one-line error."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ntk_lab.experiment import run_experiment
from ntk_lab.config import ConfigError, validate
from ntk_lab.data import DataError
from ntk_lab.models import CNN, CustomModuleError, NetworkSpec, build_network, parameter_layers
from ntk_lab.models.custom import check_output_shape, check_sample_independence
from ntk_lab.records import load_kernels
from tests.conftest import TINY, run_cli
from tests.test_configs import composed
from tests.test_analysis import write_multirun

TINY_DIGITS = ["data=digits", "width=8", "depth=2", "train.steps=2", "ntk.checkpoints=2",
               "data.n_probe=6", "data.n_train=16", "data.n_test=16", "progress=false"]

USER_MODULES = textwrap.dedent('''
    import torch
    from torch import nn

    def not_a_module(width, depth, in_shape, out_dim, seed):
        return "a string"

    def wrong_outputs(width, depth, in_shape, out_dim, seed):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(out_dim + 1))

    def batchnorm(width, depth, in_shape, out_dim, seed, momentum=0.1):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width, momentum=momentum),
                             nn.ReLU(), nn.Linear(width, out_dim))

    class Centering(nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)  # every sample's output depends on the batch

    def mixing(width, depth, in_shape, out_dim, seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, out_dim), Centering())
''')


@pytest.fixture
def user_modules(tmp_path, monkeypatch) -> Path:
    """A folder holding my_nets.py, importable (as it is from the folder a user runs in)."""
    (tmp_path / "my_nets.py").write_text(USER_MODULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def config_for(overrides: list[str]):
    return validate(composed([*TINY_DIGITS, *overrides]))


# --------------------------------------------------------------------------- end to end
def test_the_three_networks_and_the_example_custom_module_run_end_to_end(workdir):
    """One sweep over model=cnn,resmlp,custom on digits (images for the CNN and the custom
    module), in a subprocess as a user runs it (the MLP's own end-to-end tests are in
    test_configs.py; the slow variant below adds it, lazy=full and the sweep's analysis)."""
    result = run_cli(["-m", "model=cnn,resmlp,custom", "lr=0.1", "analyze=false", *TINY_DIGITS], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((workdir / "outputs" / "multirun").glob("*/*"))
    seen = set()
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "ok", summary["message"]
        seen.add(summary["model"])
        metrics = pd.read_csv(job / "metrics.csv")
        for column in ("kappa", "jac_change", "param_change", "param_change_layer1"):
            assert metrics[column].notna().all(), (summary["model"], column)
        assert metrics["ntk_err_inf"].isna().all() == (summary["model"] == "custom")
    assert seen == {"cnn", "resmlp", "custom"}
    # the spectrum figure skips the custom module's NaN Θ_∞ (eigh on NaN used to fail it)
    from ntk_lab.analysis.collect import collect_sweep
    from ntk_lab.analysis.fit import fit_sweep
    from ntk_lab.analysis.geometry_plots import plot_spectrum

    runs = collect_sweep(sweep)
    assert plot_spectrum(runs, fit_sweep(runs), workdir / "spectrum.png")
    assert (workdir / "spectrum.png").stat().st_size > 0


@pytest.mark.slow
def test_every_network_with_every_metric_and_the_analysis(workdir):
    """One sweep over model=mlp,cnn,resmlp,custom on digits, every lazy metric on, ending with
    the sweep's analysis."""
    lazy = ["lazy=full", "lazy.hessian_iters=3", "lazy.hessian_points=2"]
    result = run_cli(["-m", "model=mlp,cnn,resmlp,custom", *lazy, "lr=0.1", *TINY_DIGITS], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((workdir / "outputs" / "multirun").glob("*/*"))
    runs = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "ok", summary["message"]
        runs[summary["model"]] = (job, summary)
    assert set(runs) == {"mlp", "cnn", "resmlp", "custom"}
    for name, (job, summary) in runs.items():
        metrics = pd.read_csv(job / "metrics.csv")
        for column in ("kappa", "jac_change", "param_change", "lin_gap", "kappa_hessian", "param_change_layer1"):
            assert metrics[column].notna().any(), (name, column)
        kernels = load_kernels(job)
        if name == "custom":
            assert metrics["ntk_err_inf"].isna().all() and torch.isnan(kernels["theta_inf"]).all()
            assert "no known infinite-width limit" in summary["theta_inf"]
            assert "none detected" in summary["sample_mixing"]
            assert summary["target"] == "ntk_lab.examples.custom_net:build"
        else:
            assert metrics["ntk_err_inf"].notna().all() and torch.isfinite(kernels["theta_inf"]).all()
            assert metrics["inf_gap"].notna().any()
    assert runs["cnn"][1]["readout"] == "gap" and runs["cnn"][1]["kernel_size"] == 3
    assert runs["resmlp"][1]["branch_scale"] == 1.0
    # per-layer param_change: one column per parameterized layer (weight and bias together)
    cnn_columns = [c for c in pd.read_csv(runs["cnn"][0] / "metrics.csv") if c.startswith("param_change_layer")]
    assert len(cnn_columns) == len(parameter_layers(CNN(1, 8, 2, out_dim=10))) == 3
    assert (sweep / "analysis" / "report.md").is_file()


def test_build_network_shapes_the_inputs_as_each_network_takes_them():
    spec = lambda name: NetworkSpec(name, 8, 2)  # noqa: E731
    images = torch.randn(3, 1, 8, 8)
    assert build_network(spec("cnn"), (1, 8, 8), 10, seed=0)(images).shape == (3, 10)
    for name in ("mlp", "resmlp"):
        assert build_network(spec(name), (64,), 10, seed=0)(images.flatten(1)).shape == (3, 10)
    # the same seed gives the same network
    a, b = (build_network(spec("cnn"), (1, 8, 8), 2, seed=3) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------- config knobs
def test_cnn_and_resmlp_knobs_reach_the_network():
    c = config_for(["model=cnn", "model.kernel_size=5", "model.padding=circular", "model.readout=flatten"])
    assert (c.model.name, c.model.kernel_size, c.model.padding, c.model.readout) == ("cnn", 5, "circular", "flatten")
    flat = c.flat()
    assert flat["model"] == "cnn" and flat["readout"] == "flatten"
    r = config_for(["model=resmlp", "model.branch_scale=0.25"])
    assert r.model.branch_scale == 0.25 and r.flat()["branch_scale"] == 0.25
    u = config_for(["model=custom", "+model.groups=2"])
    assert u.model.target == "ntk_lab.examples.custom_net:build"
    assert u.model.extra == {"groups": 2}
    assert u.model.activation is None  # a custom module's own business


BAD_CONFIGS = [
    (["model=cnn", "model.kernel_size=2"], "model.kernel_size=2 is invalid: must be an odd integer"),
    (["model=cnn", "model.padding=reflect"], "model.padding='reflect' is invalid: allowed: same, circular"),
    (["model=cnn", "model.readout=max"], "model.readout='max' is invalid: allowed: gap, flatten"),
    (["model=resmlp", "model.branch_scale=-1"], "model.branch_scale=-1 is invalid: must be a number >= 0"),
    (["model=custom", "model.target=null"], "model.target must be set for model=custom"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        config_for(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


BAD_RUNS = [  # (overrides, error type, message) raised by run_experiment before training
    (["model=cnn", "data=circle"], DataError, "the circle data are vectors, not images; a conv net needs image data"),
    (["model=custom", "model.target=no_such_pkg.nets:build"], ConfigError,
     "model.target='no_such_pkg.nets:build' cannot be imported: ModuleNotFoundError"),
    (["model=custom", "model.target=my_nets:missing"], ConfigError, "module 'my_nets' has no attribute 'missing'"),
    (["model=custom", "model.target=my_nets:not_a_module"], ConfigError, "returned a str, not a torch.nn.Module"),
    (["model=custom", "model.target=my_nets:wrong_outputs"], ConfigError,
     "the module returns (2, 11) for inputs of shape (2, 1, 8, 8); the data needs (2, 10)"),
    (["model=custom", "model.target=my_nets:mixing"], ConfigError, "mix samples"),
    (["model=custom", "model.target=my_nets:batchnorm", "+model.unknown=1"], ConfigError,
     "could not be called with width, depth, in_shape, out_dim, seed and the extra model keys"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_RUNS, ids=[" ".join(o) for o, _, _ in BAD_RUNS])
def test_bad_networks_are_one_line_errors(user_modules, tmp_path, overrides, error, message):
    config = config_for(["data.n_probe=4", *overrides])
    with pytest.raises(error) as info:
        run_experiment(config, tmp_path / "run")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("args,message", [
    pytest.param(["model=cnn"], "the circle data are vectors, not images", marks=pytest.mark.slow),
    (["model=custom", "model.target=nowhere:build"], "model.target='nowhere:build' cannot be imported"),
])
def test_cli_prints_one_line_and_exits_2(workdir, args, message):
    result = run_cli([*TINY, *args], workdir)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- sample mixing
def test_batchnorm_in_training_mode_runs_with_eval_statistics(user_modules, tmp_path):
    config = config_for(["model=custom", "model.target=my_nets:batchnorm", "+model.momentum=0.5"])
    outcome = run_experiment(config, tmp_path / "run")
    assert outcome.status == "ok"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "BatchNorm1d in training mode mixes samples" in summary["sample_mixing"]
    assert "eval-mode statistics" in summary["sample_mixing"]
    assert summary["model_momentum"] == 0.5


def test_sample_mixing_detection_on_modules():
    x = torch.randn(6, 4)
    independent = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    assert check_sample_independence(independent, x, "t") is None
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    stats = bn[1].running_mean.clone()
    note = check_sample_independence(bn, x, "t")
    assert "eval-mode statistics" in note and not bn.training
    assert torch.equal(bn[1].running_mean, stats)  # the check ran on a copy
    with pytest.raises(CustomModuleError, match="even in eval mode"):
        check_sample_independence(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=0)), x, "t")
    with pytest.raises(CustomModuleError, match=r"returns \(2, 3\)"):
        check_output_shape(independent, x, 2, "t")


# --------------------------------------------------------------------------- analysis
# resmlp_depth's analysis on synthetic runs: ntk_err_inf = c·(depth/width)^p and
# kappa = c·depth^q/width, with different exponents for the plain and the residual MLP, so a
# fit or a figure line that pooled the two models would give neither model's exponent.
GAP_EXPONENT = {"mlp": 0.5, "resmlp": 0.1}      # p
KAPPA_DEPTH_EXPONENT = {"mlp": 1.0, "resmlp": 0.2}  # q
GAP_PREFACTOR = {"mlp": 2.0, "resmlp": 0.5}
GAP_NOISE = 0.02  # relative, per run
# 2 % noise over an 8× depth range moves a slope by ~0.01; 0.05 is ~5σ and well below the
# 0.4 that separates the two models' exponents.
GAP_SLOPE_TOL = 0.05


def _gap_jobs(models=("mlp", "resmlp"), depths=(4, 8, 32), widths=(64, 256), seeds=(0, 1)):
    from tests.test_analysis import summary_for

    jobs = []
    for m_index, model in enumerate(models):
        for depth in depths:
            for width in widths:
                for seed in seeds:
                    rng = np.random.default_rng([m_index, depth, width, seed])
                    noise = lambda: 1 + GAP_NOISE * rng.standard_normal()  # noqa: E731
                    gap = GAP_PREFACTOR[model] * (depth / width) ** GAP_EXPONENT[model] * noise()
                    kappa = depth ** KAPPA_DEPTH_EXPONENT[model] / width * noise()
                    rows = [{"step": 0, "ntk_err_inf": gap, "kappa": 0.0},
                            {"step": 100, "ntk_err_inf": 1.1 * gap, "kappa": kappa}]
                    jobs.append((summary_for(width, depth, seed, model=model), rows, None))
    return jobs


def test_resmlp_depth_analysis_keeps_plain_and_residual_apart(tmp_path, monkeypatch):
    """fits.csv has a model column with per-model slopes against width and depth, and the
    depth/width figure draws one line per model and width at that model's seed means."""
    from ntk_lab.analysis import collect_sweep, fit_sweep, depth_plots
    from ntk_lab.analysis.report import fit_rows

    jobs = _gap_jobs()
    sweep = collect_sweep(write_multirun(tmp_path / "sweep", jobs))
    assert "model" in sweep.group_keys and "branch_scale" not in sweep.group_keys
    fits = fit_sweep(sweep)
    table = fits.table
    for model in ("mlp", "resmlp"):
        for depth in (4, 8, 32):  # against width, one fit per model and depth
            row = table[(table.x == "width") & (table.metric == "ntk_err_inf")
                        & (table.model == model) & (table.depth == depth)]
            assert len(row) == 1
            assert row.slope.iloc[0] == pytest.approx(-GAP_EXPONENT[model], abs=GAP_SLOPE_TOL)
        for width in (64, 256):  # against depth, one fit per model and width
            at = table[(table.x == "depth") & (table.model == model) & (table.width == width)]
            gap, kappa = (at[at.metric == m] for m in ("ntk_err_inf", "kappa"))
            assert len(gap) == len(kappa) == 1
            assert gap.slope.iloc[0] == pytest.approx(GAP_EXPONENT[model], abs=GAP_SLOPE_TOL)
            assert kappa.slope.iloc[0] == pytest.approx(KAPPA_DEPTH_EXPONENT[model], abs=GAP_SLOPE_TOL)
    theory = {(r[0], r[2], r[3].split(",")[0]): r[-1] for r in fit_rows(sweep, fits)}
    assert theory[("ntk_err_inf", "depth", "model=mlp")].startswith("+0.5")
    assert theory[("ntk_err_inf", "depth", "model=resmlp")] == "below the plain MLP's"

    drawn = {}

    def keep(fig, path):
        drawn["lines"] = {line.get_label(): line for line in fig.axes[0].get_lines()}
        return True

    monkeypatch.setattr(depth_plots, "save_figure", keep)
    assert depth_plots.plot_kernel_gaps_vs_depth_over_width(sweep, fits, tmp_path / "gaps.png")
    for model in ("mlp", "resmlp"):
        for width in (64, 256):
            line = drawn["lines"][f"model={model}, width {width}"]
            means = [np.mean([rows[0]["ntk_err_inf"] for summary, rows, _ in jobs
                              if (summary["model"], summary["width"], summary["depth"]) == (model, width, d)])
                     for d in (4, 8, 32)]
            np.testing.assert_allclose(line.get_xdata(), [d / width for d in (4, 8, 32)])
            np.testing.assert_allclose(line.get_ydata(), means, rtol=1e-12)
    assert len(drawn["lines"]) == 4
    one_depth = collect_sweep(write_multirun(tmp_path / "one", [j for j in jobs if j[0]["depth"] == 4]))
    assert not depth_plots.plot_kernel_gaps_vs_depth_over_width(one_depth, fit_sweep(one_depth),
                                                                tmp_path / "no.png")
