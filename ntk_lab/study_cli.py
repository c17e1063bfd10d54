"""Hydra entry points of the two studies that are not training runs.

    python -m ntk_lab.coord_check  [overrides]    # preset experiment=coord_check
    python -m ntk_lab.fluctuations [overrides]    # preset experiment=depth_over_width

Each composes the project's ``config.yaml`` with its preset from ``configs/experiment/``
(unless another ``experiment=`` is given), so the model, data, precision and device knobs are
the same as a run's (``model.activation=tanh``, ``depth=5``, ``data=sphere_teacher``, …), and
the study's own grid lives in the preset's ``coord_check:`` or ``fluctuations:`` block
(``coord_check.widths=[64,256]``). Outputs go to Hydra's run folder
(``outputs/<date>/<time>/``). Bad settings end with one line and exit code 2.

Only this module touches these studies' config object; the studies themselves
(:mod:`ntk_lab.coord_check`, :mod:`ntk_lab.fluctuations`) take plain arguments.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ntk_lab.config import ConfigError, RunConfig, check_overrides, validate
from ntk_lab.data import DataError
from ntk_lab.models import PARAMETERIZATIONS
from ntk_lab.run import _config_dir

COORD_CHECK_PRESET = "coord_check"
FLUCTUATIONS_PRESET = "depth_over_width"
# The preset each study applies when no experiment= is given; run.py hands these presets to
# the study (`python -m ntk_lab.run experiment=coord_check`).
STUDY_MODULES = {COORD_CHECK_PRESET: "ntk_lab.coord_check",
                 FLUCTUATIONS_PRESET: "ntk_lab.fluctuations"}


# ------------------------------------------------------------------ checks (one line each)


def _block(plain: Mapping[str, Any], name: str, preset: str) -> Mapping[str, Any]:
    block = plain.get(name)
    if not isinstance(block, Mapping):
        raise ConfigError(f"{name} settings are missing: this study runs with "
                          f"experiment={preset} (the default) or a preset with a {name}: block")
    return block


def _is_int(value: Any, minimum: int) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value == int(value) and value >= minimum)


def _int_list(key: str, value: Any, minimum: int) -> list[int]:
    """A list of integers ≥ minimum (a single integer is a list of one)."""
    if _is_int(value, minimum):
        return [int(value)]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(_is_int(v, minimum) for v in value)):
        raise ConfigError(f"{key}={value!r} is invalid: must be a non-empty list of integers "
                          f">= {minimum}, e.g. [16,32]")
    return [int(v) for v in value]


def _int(key: str, value: Any, minimum: int) -> int:
    if not _is_int(value, minimum):
        raise ConfigError(f"{key}={value!r} is invalid: must be an integer >= {minimum}")
    return int(value)


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value!r} is invalid: must be a number > 0")
    return float(value)


def _choices(key: str, value: Any, allowed: Sequence[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(v not in allowed for v in value):
        raise ConfigError(f"{key}={value!r} is invalid: a non-empty list of {', '.join(allowed)}")
    return list(value)


def coord_check_settings(plain: Mapping[str, Any]) -> tuple[RunConfig, dict]:
    """The run-level settings and the ``coord_check:`` block, checked.

    Raises:
        ConfigError: one line naming the key and what is allowed.
    """
    config = validate(plain)
    block = _block(plain, "coord_check", COORD_CHECK_PRESET)
    settings = {
        "widths": _int_list("coord_check.widths", block.get("widths"), 1),
        "parameterizations": _choices("coord_check.parameterizations",
                                      block.get("parameterizations"), PARAMETERIZATIONS),
        "seeds": _int_list("coord_check.seeds", block.get("seeds"), 0),
        "steps": _int("coord_check.steps", block.get("steps"), 1),
        "lr": _positive("coord_check.lr", block.get("lr")),
    }
    return config, settings


def fluctuation_settings(plain: Mapping[str, Any]) -> tuple[RunConfig, dict]:
    """The run-level settings and the ``fluctuations:`` block, checked.

    Raises:
        ConfigError: one line naming the key and what is allowed.
    """
    config = validate(plain)
    block = _block(plain, "fluctuations", FLUCTUATIONS_PRESET)
    settings = {
        "widths": _int_list("fluctuations.widths", block.get("widths"), 1),
        "depths": _int_list("fluctuations.depths", block.get("depths"), 1),
        "n_seeds": _int("fluctuations.n_seeds", block.get("n_seeds"), 2),
        "in_dim": _int("fluctuations.in_dim", block.get("in_dim"), 1),
    }
    return config, settings


# ------------------------------------------------------------------ the studies


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _device_and_dtype(config: RunConfig):
    from ntk_lab.build import DTYPES, resolve_device

    return resolve_device(config.device), DTYPES[config.precision]


def run_coord_check_study(config: RunConfig, settings: dict, out_dir: Path) -> Path:
    """Build the data, run the grid, write the folder; returns report.md's path."""
    from ntk_lab import coord_check
    from ntk_lab.config import data_settings
    from ntk_lab.data import make_dataset

    device, dtype = _device_and_dtype(config)
    m = config.model
    data = make_dataset(config.data.name, **data_settings(config.data))
    total = len(settings["widths"]) * len(settings["parameterizations"]) * len(settings["seeds"])
    with _progress_bar(total, config.progress, "coord_check") as bar:
        table = coord_check.run_coord_check(
            data, widths=settings["widths"], parameterizations=settings["parameterizations"],
            seeds=settings["seeds"], depth=m.depth, steps=settings["steps"], lr=settings["lr"],
            activation=m.activation, w_std=m.w_std, b_std=m.b_std, dtype=dtype, device=device,
            progress=bar.update)
    fits = coord_check.fit_slopes(table)
    shown = {**settings, "depth": m.depth, "activation": m.activation, "w_std": m.w_std,
             "b_std": m.b_std, "data": config.data.name, "n_train": len(data.x_train),
             "fixed batch": f"{len(data.x_probe)} probe inputs", "dtype": config.precision,
             "device": str(device)}
    return coord_check.write_study(table, fits, out_dir, shown)


def run_fluctuation_study(config: RunConfig, settings: dict, out_dir: Path) -> Path:
    """Measure the grid, fit the rate, write the folder; returns report.md's path."""
    from ntk_lab import fluctuations

    device, dtype = _device_and_dtype(config)
    m = config.model
    total = len(settings["widths"]) * len(settings["depths"]) * settings["n_seeds"]
    with _progress_bar(total, config.progress, "seeds") as bar:
        result = fluctuations.measure_grid(
            settings["widths"], settings["depths"], settings["n_seeds"],
            in_dim=settings["in_dim"], activation=m.activation,
            parameterization=m.parameterization, w_std=m.w_std, b_std=m.b_std,
            seed=config.train.seed, dtype=dtype, device=device,
            memory_budget_bytes=config.ntk.memory_budget_mb << 20, progress=bar.update)
    fits = fluctuations.fit_table(result)
    shown = {**settings, "first_seed": config.train.seed, "activation": m.activation,
             "parameterization": m.parameterization, "w_std": m.w_std, "b_std": m.b_std,
             "dtype": config.precision, "device": str(device)}
    return fluctuations.write_study(result, fits, out_dir, shown)


# ------------------------------------------------------------------ Hydra plumbing


def _execute(cfg: DictConfig, check: Callable, study: Callable) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    started = time.time()
    try:
        config, settings = check(plain)
        report = study(config, settings, out_dir)
    except (ConfigError, DataError) as err:
        print(f"ntk_lab: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"ntk_lab: ok ({time.time() - started:.0f} s): {report}")


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _coord_check_main(cfg: DictConfig) -> None:
    _execute(cfg, coord_check_settings, run_coord_check_study)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _fluctuations_main(cfg: DictConfig) -> None:
    _execute(cfg, fluctuation_settings, run_fluctuation_study)


def with_preset(argv: Sequence[str], preset: str) -> list[str]:
    """``argv`` with ``experiment=<preset>`` first, unless it already names an experiment."""
    names = [a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a]
    return list(argv) if "experiment" in names else [f"experiment={preset}", *argv]


def unknown_study_key(argv: Sequence[str], config_dir: Path) -> str | None:
    """The one-line error for an override of a study block's key that the block does not
    have (``fluctuations.nseeds=…``), else None; Hydra would answer it in several lines."""
    import yaml

    for preset, block in ((COORD_CHECK_PRESET, "coord_check"),
                          (FLUCTUATIONS_PRESET, "fluctuations")):
        content = yaml.safe_load((config_dir / "experiment" / f"{preset}.yaml").read_text())
        known = sorted((content or {}).get(block) or {})
        for arg in argv:
            key = arg.split("=", 1)[0].lstrip("+~")
            if "=" in arg and key.startswith(f"{block}.") and key[len(block) + 1:] not in known:
                return f"{key} is not a setting; {block} has: {', '.join(known)}"
    return None


def _main(preset: str, hydra_main: Callable[[], None]) -> None:
    argv = with_preset(sys.argv[1:], preset)
    config_dir = Path(_config_dir())
    problem = check_overrides(argv, config_dir) or unknown_study_key(argv, config_dir)
    if problem:
        print(f"ntk_lab: error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


def coord_check_main() -> None:
    """``python -m ntk_lab.coord_check``."""
    _main(COORD_CHECK_PRESET, _coord_check_main)


def fluctuations_main() -> None:
    """``python -m ntk_lab.fluctuations``."""
    _main(FLUCTUATIONS_PRESET, _fluctuations_main)


def hand_over_to_study(argv: Sequence[str]) -> None:
    """If ``argv`` names a study's preset (``experiment=coord_check``), run that study with
    the same overrides and exit; otherwise return. ``-m`` is dropped: a study runs its whole
    grid in one process."""
    presets = [a.split("=", 1)[1] for a in argv
               if "=" in a and a.split("=", 1)[0].lstrip("+~") == "experiment"]
    if len(presets) != 1:
        return
    options = [o.strip() for o in presets[0].split(",")]
    studies = [o for o in options if o in STUDY_MODULES]
    if studies and len(options) > 1:
        print(f"ntk_lab: error: experiment={presets[0]!r} is invalid: {studies[0]} is a study of "
              f"its own, not a sweep of runs; run python -m {STUDY_MODULES[studies[0]]} alone",
              file=sys.stderr)
        sys.exit(2)
    if not studies:
        return
    rest = [a for a in argv if a not in ("-m", "--multirun")]
    if len(rest) != len(argv):
        print(f"ntk_lab: experiment={presets[0]} runs its whole grid in one process "
              f"(python -m {STUDY_MODULES[presets[0]]}); -m is not needed")
    sys.argv = [sys.argv[0], *rest]
    main_of = {COORD_CHECK_PRESET: coord_check_main, FLUCTUATIONS_PRESET: fluctuations_main}
    main_of[presets[0]]()
    sys.exit(0)
