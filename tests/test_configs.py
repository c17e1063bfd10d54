"""Every config group composes; the README's command forms run end to end in a subprocess."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntk_lab.cli import check_overrides

from ntk_lab.config import validate
from ntk_lab.cli import config_dir
from ntk_lab.config import coord_check_settings, fluctuation_settings
from tests.conftest import TINY, run_cli

CONFIG_DIR = Path(config_dir())


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=False)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_default_config_composes_and_validates():
    config = validate(composed([]))
    assert (config.model.width, config.model.depth, config.train.lr) == (1024, 3, 1.0)
    assert config.model.activation == "relu" and config.model.b_std == 0.1
    assert config.train.steps == 200 and config.data.name == "circle"


@pytest.mark.parametrize("group", ["model", "data", "train", "ntk", "logger"])
def test_every_option_of_every_group_composes(group):
    for option in group_options(group):
        extra = ["data.path=x.npz"] if (group, option) == ("data", "file") else []
        plain = composed([f"{group}={option}", *extra])
        validate(plain)  # raises ConfigError on any invalid value
        # the chosen file's own literal values reached the composed config
        chosen = yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text()) or {}
        for key, value in chosen.items():
            if not (isinstance(value, str) and value.startswith("${")) and key != "path":
                assert plain[group][key] == value, (group, option, key)


STUDY_SETTINGS = {"coord_check": coord_check_settings, "depth_over_width": fluctuation_settings}


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_preset_composes(experiment):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    if experiment in STUDY_SETTINGS:  # a study that is not a sweep of runs: its grid is a block
        config, settings = STUDY_SETTINGS[experiment](composed([f"experiment={experiment}"]))
        assert len(settings["widths"]) >= 2, f"{experiment} has fewer than two widths"
        return
    assert cfg.hydra.sweeper.params, f"{experiment} sweeps nothing"
    validate(composed([f"experiment={experiment}"]))
    # every swept value is a valid setting too. A config group (model=cnn) changes the
    # composition, so it is composed again; any other key (width=64) is set on the composed
    # preset before resolving — the same value Hydra's override would put there, without a
    # ~0.15 s compose per value (this test used to take ~50 s of the fast suite).
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        preset = compose("config", overrides=[f"experiment={experiment}"])
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    for key, values in cfg.hydra.sweeper.params.items():
        for value in str(values).split(","):
            if key.lstrip("+") in groups:
                validate(composed([f"{key}={value.strip()}", f"experiment={experiment}"]))
                continue
            one = copy.deepcopy(preset)
            OmegaConf.update(one, key.lstrip("+"), yaml.safe_load(value.strip()), force_add=True)
            validate(OmegaConf.to_container(one, resolve=True, throw_on_missing=False))


@pytest.mark.parametrize("form", ["+width=24", "width=24", "++width=24"])
def test_top_level_knobs_accept_every_override_form(form):
    assert validate(composed([form])).model.width == 24
    assert validate(composed(["+depth=2", "+lr=0.5", "+seed=7"])).train.seed == 7


def _only_run(workdir: Path) -> Path:
    runs = [p.parent for p in (workdir / "outputs").rglob("summary.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_default_command_runs_from_another_directory(workdir):
    result = run_cli(TINY, workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = _only_run(workdir)
    assert f"outputs in {run_dir}" in result.stdout
    for name in ("metrics.csv", "summary.json", "kernels.pt", "plots/loss_kappa.png"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("form", ["+width=12", "width=12"])
def test_width_override_forms_run(workdir, form):
    result = run_cli([form, *[a for a in TINY if not a.startswith("width=")]], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((_only_run(workdir) / "summary.json").read_text())["width"] == 12


def test_multirun_sweep_makes_one_folder_per_job_and_an_analysis(workdir):
    tiny = [a for a in TINY if not a.startswith(("width=", "depth="))]
    # a width × depth grid (the lr sweep form is exercised by test_robustness's sweeps)
    result = run_cli(["-m", "+width=8,16", "+depth=1,2", "+lr=1.0", *tiny], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    sweeps = list((workdir / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
    assert (sweeps[0] / "analysis" / "report.md").is_file()


def test_check_overrides_accepts_every_valid_form_and_names_the_bad_one():
    good = ["+width=64", "width=64,128", "++depth=2", "data=file", "data.path=x.npz",
            "model.activation=tanh", "-m", "experiment=width_sweep", "hydra.run.dir=here",
            "hydra/launcher=local_parallel", "lazy=full", "lazy.linearized=true", "seed=0,1"]
    assert check_overrides(good, CONFIG_DIR) is None
    assert "data='cifar'" in check_overrides(["data=circle,cifar"], CONFIG_DIR)
    assert "ntk.methd is not a setting" in check_overrides(["ntk.methd=auto"], CONFIG_DIR)
    assert "lr_max is not a setting" in check_overrides(["+lr_max=3"], CONFIG_DIR)


def test_a_key_of_another_option_is_named_with_the_option_it_belongs_to():
    # Hydra would stop these with a multi-line "Could not override" error.
    assert check_overrides(["logger.tracking_uri=/x"], CONFIG_DIR) == (
        "logger.tracking_uri is not a setting of logger=none; it belongs to logger=mlflow "
        "(choose one on the command line)")
    assert "belongs to data=file" in check_overrides(["data.path=x.npz"], CONFIG_DIR)
    for fine in (["logger=mlflow", "logger.tracking_uri=/x"], ["logger.tracking_uri=/x", "logger=mlflow"],
                 ["experiment=lee2019", "data.in_dim=3"],  # the preset picks sphere_teacher
                 ["+data.path=x.npz"], ["-m", "logger=none,mlflow", "logger.tracking_uri=/x"]):
        assert check_overrides(fine, CONFIG_DIR) is None, fine
    for argv in (["logger=mlflow", "logger.tracking_uri=/x"], ["experiment=lee2019", "data.in_dim=3"]):
        composed(argv)  # and Hydra composes them
