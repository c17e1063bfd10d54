"""Run one of the two studies that are not training runs, from validated settings.

    coord_check      (Yang & Hu 2021): every layer's mean |h_t| and |h_t − h_0| over a grid
                     of widths × parameterizations × seeds, a few steps of training each;
    depth_over_width (Hanin & Nica 2019): the NTK diagonal's moment ratio at init over a grid
                     of widths × depths, many seeds each.

Each runs its whole grid in one process and writes one folder (the command line's output
folder). Plain arguments only; the command lines (``python -m ntk_lab.coord_check``,
``python -m ntk_lab.fluctuations``, ``python -m ntk_lab.run experiment=coord_check``) compose
and validate the settings and call :func:`run_study`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from ntk_lab.config import (
    COORD_CHECK_PRESET, FLUCTUATIONS_PRESET, RunConfig, coord_check_settings, data_settings,
    fluctuation_settings,
)
from ntk_lab.data import make_dataset
from ntk_lab.models import build_network, network_inputs
from ntk_lab.experiment import DTYPES, resolve_device
from ntk_lab.studies import coord_check, fluctuations


def _progress_bar(total: int, enabled: bool, desc: str):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _device_and_dtype(config: RunConfig):
    return resolve_device(config.device), DTYPES[config.precision]


def run_coord_check_study(config: RunConfig, settings: dict, out_dir: Path) -> Path:
    """Build the data, run the grid, write the folder; returns report.md's path."""
    device, dtype = _device_and_dtype(config)
    m = config.model
    data = make_dataset(config.data.name, **data_settings(config.data))
    build = None
    if m.name != "mlp":  # any other built-in network, e.g. model=transformer model.patch_size=4
        data = network_inputs(m.name, data)
        in_shape, out_dim = tuple(data.x_train.shape[1:]), data.out_dim

        def build(width: int, parameterization: str, seed: int) -> torch.nn.Module:
            spec = dataclasses.replace(m.spec(), width=width, parameterization=parameterization)
            return build_network(spec, in_shape, out_dim, seed=seed)
    total = len(settings["widths"]) * len(settings["parameterizations"]) * len(settings["seeds"])
    with _progress_bar(total, config.progress, "coord_check") as bar:
        table = coord_check.run_coord_check(
            data, widths=settings["widths"], parameterizations=settings["parameterizations"],
            seeds=settings["seeds"], depth=m.depth, steps=settings["steps"], lr=settings["lr"],
            activation=m.activation, w_std=m.w_std, b_std=m.b_std, dtype=dtype, device=device,
            progress=bar.update, build=build)
    fits = coord_check.fit_slopes(table)
    shown = {**settings, "model": m.name, "depth": m.depth, "activation": m.activation, "w_std": m.w_std,
             "b_std": m.b_std, "data": config.data.name, "n_train": len(data.x_train),
             "fixed batch": f"{len(data.x_probe)} probe inputs", "dtype": config.precision,
             "device": str(device)}
    return coord_check.write_study(table, fits, out_dir, shown)


def run_fluctuation_study(config: RunConfig, settings: dict, out_dir: Path) -> Path:
    """Measure the grid, fit the rate, write the folder; returns report.md's path."""
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


# preset -> (its settings check, its runner)
STUDIES = {COORD_CHECK_PRESET: (coord_check_settings, run_coord_check_study),
           FLUCTUATIONS_PRESET: (fluctuation_settings, run_fluctuation_study)}


def run_study(preset: str, plain: Mapping[str, Any], out_dir: Path) -> Path:
    """Check the composed settings (a plain dict) of study ``preset`` and run it into
    ``out_dir``; returns report.md's path.

    Raises:
        ConfigError, DataError: bad settings or data, one line each.
    """
    check, run = STUDIES[preset]
    config, settings = check(plain)
    return run(config, settings, out_dir)
