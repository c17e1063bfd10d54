"""The image-classification presets on small generated files (CI has no network and no real
data): each composes, validates and runs one tiny job in process; the slow test runs the
lee2019_cifar2 sweep at reduced size and checks the analysis fits the per-layer exponents."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_lab.experiment import run_experiment
from ntk_lab.config import validate
from ntk_lab.data import generated_files as synthetic
from ntk_lab.cli import config_dir
from tests.conftest import run_cli

TINY_JOB = ["width=16", "depth=1", "seed=0", "train.steps=4", "ntk.checkpoints=3",
            "data.n_test=32", "data.n_probe=8"]


def _composed(overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return validate(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    synthetic.write_cifar_dataset(root / "cifar10" / "cifar-10-batches-bin", per_file=400)  # 2 classes: 160 training images
    return root


def test_lee2019_cifar2_job_runs_on_generated_files(tmp_path, cifar_root):
    config = _composed(["experiment=lee2019_cifar2", f"data.root={cifar_root}", *TINY_JOB])
    assert (config.data.name, config.data.classes, config.data.n_train) == ("cifar10", [0, 1], 128)
    assert (config.train.loss, config.train.lr) == ("mse", 1.0)
    run_experiment(config, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m.test_acc.notna().all() and m.inf_gap.iloc[1:].notna().all()


@pytest.mark.parametrize("optim,optimizer,param", [("momentum", "momentum", "ntk"),
                                                   ("adam_mup", "adam", "mup")])
def test_optimizer_drift_jobs_run(tmp_path, optim, optimizer, param):
    config = _composed(["experiment=optimizer_drift", f"optim={optim}", *TINY_JOB])
    assert (config.train.optimizer, config.model.parameterization) == (optimizer, param)
    assert config.train.loss == "cross_entropy" and config.data.name == "digits"
    run_experiment(config, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m.kappa.iloc[-1] > 0 and m.test_acc.notna().all()


@pytest.mark.slow
def test_lee2019_cifar2_sweep_fits_the_layer_exponents(workdir, cifar_root):
    """Widths 128…2048, depths 1 and 3, one seed, 64 steps on generated CIFAR-format files: the analysis
    fits param_change_layer<l> and kappa against width with confidence intervals, and the
    input-layer exponent is near −1/2, the hidden-layer one near −1 (Lee et al. 2019)."""
    sweep = workdir / "sweep"
    result = run_cli(["-m", "experiment=lee2019_cifar2_cpu", f"data.root={cifar_root}",
                      "hydra.sweeper.params.width='128,512,2048'", "hydra.sweeper.params.seed=0",
                      "train.steps=64", "data.n_test=64", f"hydra.sweep.dir={sweep}"],
                     workdir, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    fits = pd.read_csv(sweep / "analysis" / "fits.csv")
    final = fits[fits.step == fits.step.max()]
    slope = lambda metric, depth: final[(final.metric == metric) & (final.depth == depth)].slope.item()  # noqa: E731
    assert -0.75 < slope("param_change_layer1", 1) < -0.3
    assert -1.3 < slope("param_change_layer2", 3) < -0.7
    assert slope("kappa", 1) < -0.4 and slope("kappa", 3) < -0.4


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated_mnist")
    synthetic.write_idx_dataset(root / "mnist", 2000, 1000)  # ~200 training images per class
    return root


@pytest.mark.slow
def test_mnist_cnn_drift_sweep_fits_cnn_and_mlp_apart(workdir, mnist_root):
    """Widths 32 and 256, one seed, 40 steps, CNN and MLP, on generated MNIST-format files:
    the analysis fits each network on its own, both kernels freeze as width grows (κ slope
    < 0; the preset measured −0.84 for the CNN and −0.38 for the MLP) and Θ_0 approaches Θ_∞
    at init, and the accuracy figure is drawn."""
    sweep = workdir / "sweep"
    result = run_cli(["-m", "experiment=mnist_cnn_drift_cpu", f"data.root={mnist_root}",
                      "hydra.sweeper.params.width='32,256'", "hydra.sweeper.params.seed=0",
                      "train.steps=40", "ntk.checkpoints=4", "data.n_train=64",
                      "data.n_test=64", f"hydra.sweep.dir={sweep}"],
                     workdir, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = pd.read_csv(sweep / "analysis" / "runs.csv")
    assert set(runs.model) == {"cnn", "mlp"} and set(runs[runs.model == "cnn"].readout) == {"flatten"}
    final = runs[runs.step == runs.step.max()]
    assert final.test_acc.notna().all() and final.inf_gap.notna().all()
    fits = pd.read_csv(sweep / "analysis" / "fits.csv")
    slope = lambda metric, model: fits[(fits.metric == metric) & (fits.model == model)].slope.item()  # noqa: E731
    for model in ("cnn", "mlp"):
        assert slope("kappa", model) < -0.2, model
        assert slope("ntk_err_inf", model) < 0, model
    assert (sweep / "analysis" / "accuracy_vs_width.png").is_file()
