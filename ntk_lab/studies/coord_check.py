"""Coordinate check (Yang & Hu 2021, Tensor Programs IV; microsoft/mup's ``coord_check``):
do a network's features move by O(1) during training, or does the move vanish with width?

For each width, parameterization and seed, a network is trained for a few full-batch
gradient steps at one learning rate, and after every step each layer's activations on a fixed
batch (the probe inputs) are summarized by

    l1       = mean |h_t|          (over the batch and the layer's units)
    l1_delta = mean |h_t − h_0|    (how far they moved since initialization)

Layer i (1 … depth) is hidden layer i's activation φ(z^i), what layer i+1 receives; layer
depth+1 is the network's output f. Predictions: for hidden layers l1_delta ∝ width^(−1/2)
under ``ntk`` (lazy training), ∝ width^0 under ``mup`` (feature learning); under
``standard`` at a fixed learning rate the updates, and so the output, grow with width.

    python -m ntk_lab.coord_check                          # the coord_check preset
    python -m ntk_lab.coord_check coord_check.widths=[64,256] coord_check.seeds=[0]

Output folder: coord_check.csv (``width, parameterization, seed, step, layer, l1,
l1_delta``), fits.csv (slopes against width with confidence intervals), the figures in
microsoft/mup's style, report.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ntk_lab.data import Dataset
from ntk_lab.models.layer_outputs import layer_activations
from ntk_lab.training.losses import mse_loss
from ntk_lab.models import MLP
from ntk_lab.analysis.fit import fit_power_law
from ntk_lab.analysis.coord_check_plots import FIGURES, plot_coord_check
from ntk_lab.records import atomic_write_text
from ntk_lab.analysis.markdown import frame_table

TABLE_COLUMNS = ("width", "parameterization", "seed", "step", "layer", "l1", "l1_delta")
# Slopes that the theory predicts for the hidden layers' l1_delta against width.
PREDICTED_HIDDEN_SLOPE = {"ntk": -0.5, "mup": 0.0}

TABLE_FILE = "coord_check.csv"
FITS_FILE = "fits.csv"
REPORT_FILE = "report.md"


def l1_stats(activations: Sequence[Tensor], initial: Sequence[Tensor]) -> list[tuple[float, float]]:
    """(mean |h|, mean |h − h_0|) per layer, reduced in float64.

    Args:
        activations: per layer, (N, units) at the current step.
        initial: the same at step 0.
    """
    out = []
    for h, h0 in zip(activations, initial):
        h, h0 = h.double(), h0.double()
        out.append(((h.abs().mean()).item(), ((h - h0).abs().mean()).item()))
    return out


def coord_check_run(
    model: nn.Module, x_train: Tensor, y_train: Tensor, x_fixed: Tensor, *, steps: int,
    lr: float,
) -> list[dict]:
    """Train ``model`` for ``steps`` full-batch GD steps on the MSE loss of docs/conventions.md and
    record every layer's l1 and l1_delta on ``x_fixed`` before the first step and after each.

    Args:
        model: the network (trained in place).
        x_train (N, d), y_train (N, O): the training batch.
        x_fixed (M, d): the fixed batch on which activations are measured.
        steps: number of gradient steps.
        lr: learning rate η.

    Returns:
        Rows ``step, layer, l1, l1_delta`` (layer from 1). Values may be inf or NaN once the
        training blows up; they are recorded as they are.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    initial = layer_activations(model, x_fixed)
    rows = []
    for step in range(steps + 1):
        if step > 0:
            optimizer.zero_grad()
            mse_loss(model(x_train), y_train).backward()
            optimizer.step()
        stats = l1_stats(layer_activations(model, x_fixed), initial)
        rows += [{"step": step, "layer": i, "l1": l1, "l1_delta": delta}
                 for i, (l1, delta) in enumerate(stats, start=1)]
    return rows


def run_coord_check(
    data: Dataset, *, widths: Sequence[int], parameterizations: Sequence[str],
    seeds: Sequence[int], depth: int, steps: int, lr: float, activation: str = "relu",
    w_std: float = 1.0, b_std: float = 0.0, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu", progress: Optional[Callable[[int], None]] = None,
    build: Optional[Callable[[int, str, int], nn.Module]] = None,
) -> pd.DataFrame:
    """The coordinate check over a grid: one :func:`coord_check_run` per (width,
    parameterization, seed), trained on ``data``'s training set and measured on its probe
    inputs.

    ``build(width, parameterization, seed)`` makes the network (float32 on the CPU; moved to
    ``dtype`` and ``device`` here) — any built-in one, e.g. a transformer, whose layers'
    inputs are then the "hidden features"; by default the MLP of ``depth``, ``activation``,
    ``w_std``, ``b_std``, with ``data`` as the network takes it.

    Returns:
        coord_check.csv as a DataFrame with columns :data:`TABLE_COLUMNS`.
    """
    data = data.to(dtype, device)
    rows = []
    for parameterization in parameterizations:
        for width in widths:
            for seed in seeds:
                if build is None:
                    model = MLP(data.in_dim, width, depth, out_dim=data.out_dim,
                                activation=activation, parameterization=parameterization,
                                w_std=w_std, b_std=b_std, seed=seed, dtype=dtype, device=device)
                else:
                    model = build(width, parameterization, seed).to(dtype=dtype, device=device)
                run = coord_check_run(model, data.x_train, data.y_train, data.x_probe,
                                      steps=steps, lr=lr)
                rows += [{"width": width, "parameterization": parameterization, "seed": seed,
                          **row} for row in run]
                if progress is not None:
                    progress(1)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def fit_slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Log–log slope of ``l1`` and ``l1_delta`` against width for every parameterization,
    layer and step ≥ 1, with its confidence interval (:func:`ntk_lab.analysis.fit.fit_power_law`:
    bootstrap over seeds with ≥ 2 seeds per width, else OLS-t).

    Non-finite or non-positive values (a blown-up run) are left out; a group with fewer than
    two widths left is not fitted.

    Returns:
        Columns ``metric, parameterization, layer, step, slope, ci_low, ci_high, n_runs,
        n_widths, ci_method, predicted`` (``predicted``: the theory's slope where one is
        stated, hidden layers' l1_delta under ntk and mup; else NaN).
    """

    rows = []
    depth = int(table["layer"].max()) - 1 if len(table) else 0
    for (parameterization, layer, step), group in table[table["step"] > 0].groupby(
            ["parameterization", "layer", "step"], sort=True):
        for metric in ("l1", "l1_delta"):
            x = group["width"].to_numpy(float)
            y = group[metric].to_numpy(float)
            good = np.isfinite(y) & (y > 0)
            if len(np.unique(x[good])) < 2:
                continue
            fit = fit_power_law(x[good], y[good])
            hidden = layer <= depth
            predicted = (PREDICTED_HIDDEN_SLOPE.get(parameterization, math.nan)
                         if metric == "l1_delta" and hidden else math.nan)
            rows.append({"metric": metric, "parameterization": parameterization,
                         "layer": int(layer), "step": int(step), "slope": fit.slope,
                         "ci_low": fit.ci_low, "ci_high": fit.ci_high, "n_runs": fit.n_points,
                         "n_widths": fit.n_x, "ci_method": fit.ci_method,
                         "predicted": predicted})
    columns = ["metric", "parameterization", "layer", "step", "slope", "ci_low", "ci_high",
               "n_runs", "n_widths", "ci_method", "predicted"]
    return pd.DataFrame(rows, columns=columns)


def write_study(table: pd.DataFrame, fits: pd.DataFrame, out_dir: Path, settings: dict) -> Path:
    """Write coord_check.csv, fits.csv, the figures and report.md to ``out_dir``.

    Returns:
        The report's path.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TABLE_FILE, table.to_csv(index=False))
    atomic_write_text(out_dir / FITS_FILE, fits.to_csv(index=False))
    drawn = [name for metric, name in FIGURES.items()
             if plot_coord_check(table, metric, out_dir / name)]
    last = int(table["step"].max()) if len(table) else 0
    lines = ["# Coordinate check", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "Layer i ≤ depth is hidden layer i's activation; layer depth+1 is the output f. "
             "Prediction (Yang & Hu 2021): hidden l1_delta ∝ width^(−1/2) under ntk, ∝ width^0 "
             "under mup; under standard at a fixed lr the output grows with width.", ""]
    for step in sorted({1, last}):
        at = fits[fits["step"] == step] if len(fits) else fits
        delta = at[at["metric"] == "l1_delta"].drop(columns=["metric", "step"])
        size = at[at["metric"] == "l1"].drop(columns=["metric", "step", "predicted"])
        lines += [f"## Slope of l1_delta against width after step {step}", "",
                  *frame_table(delta), "",
                  f"## Slope of l1 (activation size) against width after step {step}", "",
                  *frame_table(size), ""]
    lines += ["Intervals: 95 % (bootstrap over seeds when every width has ≥ 2 seeds, else "
              "OLS-t). All steps are in fits.csv.", ""]
    blown = table[~np.isfinite(table["l1"].to_numpy(float))]
    if len(blown):
        worst = blown.groupby(["parameterization", "width"])["step"].min().reset_index()
        lines += ["## Blown-up runs (non-finite activations, left out of the fits)", "",
                  *frame_table(worst.rename(columns={"step": "first_step"})), ""]
    lines += [f"![{name}]({name})" for name in drawn] + [""]
    atomic_write_text(out_dir / REPORT_FILE, "\n".join(lines))
    return out_dir / REPORT_FILE
