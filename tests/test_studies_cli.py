"""The study presets from the command line, as a user types them: tiny grids run end to end
(directly and through ``python -m ntk_lab.run experiment=…``), bad settings end in one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_lab.cli import config_dir, unknown_study_key
from ntk_lab.config import ConfigError, coord_check_settings, fluctuation_settings, study_of
from tests.conftest import run_cli
from tests.test_configs import composed


def _outputs(workdir, name):
    found = list((workdir / "outputs").rglob(name))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_coord_check_tiny_grid(workdir):
    result = run_cli(["coord_check.widths=[8,16]", "coord_check.seeds=[0]", "coord_check.steps=2",
                      "coord_check.parameterizations=[ntk,mup]", "depth=2", "data=sphere_teacher",
                      "data.n_probe=4", "data.n_test=8", "data.n_train=8", "progress=false"],
                     workdir, module="ntk_lab.coord_check")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(_outputs(workdir, "coord_check.csv"))
    assert list(table.columns) == ["width", "parameterization", "seed", "step", "layer", "l1",
                                   "l1_delta"]
    assert len(table) == 2 * 2 * 3 * 3  # widths × parameterizations × steps 0..2 × layers
    assert _outputs(workdir, "coord_check_l1_delta.png").stat().st_size > 0


@pytest.mark.slow
def test_depth_over_width_through_the_run_entry_point(workdir):
    result = run_cli(["-m", "experiment=depth_over_width", "fluctuations.widths=[4,8]",
                      "fluctuations.depths=[1,2]", "fluctuations.n_seeds=50", "progress=false"],
                     workdir)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(_outputs(workdir, "fluctuations.csv"))
    assert list(table.columns[:7]) == ["width", "depth", "beta", "n_seeds", "moment_ratio",
                                       "ci_low", "ci_high"]
    assert len(table) == 4 and (table["n_seeds"] == 50).all()
    assert "all" in pd.read_csv(_outputs(workdir, "fits.csv"))["scope"].tolist()
    assert _outputs(workdir, "moment_ratio_vs_beta.png").stat().st_size > 0


def test_bad_study_settings_end_in_one_line(workdir):
    result = run_cli(["fluctuations.n_seeds=1"], workdir, module="ntk_lab.fluctuations")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fluctuations.n_seeds=1 is invalid" in lines[0], lines


@pytest.mark.parametrize("overrides,check,key", [
    (["coord_check.parameterizations=[ntk,sp]"], coord_check_settings,
     "coord_check.parameterizations"),
    (["coord_check.widths=[0,64]"], coord_check_settings, "coord_check.widths"),
    (["coord_check.lr=-1"], coord_check_settings, "coord_check.lr"),
    (["coord_check.steps=0"], coord_check_settings, "coord_check.steps"),
    (["fluctuations.depths=[]"], fluctuation_settings, "fluctuations.depths"),
    (["fluctuations.in_dim=1.5"], fluctuation_settings, "fluctuations.in_dim"),
])
def test_study_settings_are_checked(overrides, check, key):
    preset = "coord_check" if check is coord_check_settings else "depth_over_width"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check(composed([f"experiment={preset}", *overrides]))


def test_a_study_without_its_block_and_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="experiment=depth_over_width"):
        fluctuation_settings(composed([]))
    directory = Path(config_dir())
    assert "fluctuations has: depths, in_dim, n_seeds, widths" in unknown_study_key(
        ["fluctuations.nseeds=3"], directory)
    assert unknown_study_key(["coord_check.lr=0.5", "width=3"], directory) is None


def test_each_study_command_composes_its_own_primary_config():
    """configs/coord_check.yaml and fluctuations.yaml: the run's config plus the preset."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        coord = OmegaConf.to_container(compose(config_name="coord_check"), resolve=True,
                                       throw_on_missing=False)
        fluct = OmegaConf.to_container(compose(config_name="fluctuations",
                                               overrides=["fluctuations.n_seeds=7"]),
                                       resolve=True, throw_on_missing=False)
    assert study_of(coord) == "coord_check" and coord["data"]["name"] == "digits"
    assert study_of(fluct) == "depth_over_width" and fluct["fluctuations"]["n_seeds"] == 7
    assert study_of(composed([])) is None
    assert coord_check_settings(coord)[1]["widths"][0] == 64


def test_a_study_preset_cannot_be_swept_with_others(workdir):
    result = run_cli(["-m", "experiment=coord_check,width_sweep_cpu"], workdir)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "coord_check is a study of its own" in err[0], err


@pytest.mark.slow
def test_a_study_honours_hydra_run_dir(workdir):
    """The folder named by hydra.run.dir holds the study's outputs (the run entry point used
    to rewrite the command line and lose it)."""
    target = workdir / "here"
    result = run_cli(["experiment=depth_over_width", "fluctuations.widths=[4]",
                      "fluctuations.depths=[1]", "fluctuations.n_seeds=20", "progress=false",
                      f"hydra.run.dir={target}"], workdir)
    assert result.returncode == 0, result.stderr
    assert (target / "fluctuations.csv").is_file()
