"""Coordinate-check figures in microsoft/mup's style: one panel per training step, log–log
against width, one line per layer, a band over seeds; one row of panels per parameterization.

Takes coord_check.csv as a DataFrame (:mod:`ntk_lab.coord_check`), draws only measured finite
positive values, saves through the Agg canvas like :mod:`ntk_lab.analysis.plots`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ntk_lab.analysis.figure_style import PANEL_SIZE, WIDTH_LABEL, save_figure, value_ticks

FIGURES = {"l1_delta": "coord_check_l1_delta.png", "l1": "coord_check_l1.png"}
LABELS = {"l1_delta": r"mean $|h_t - h_0|$", "l1": r"mean $|h_t|$"}
LAYER_COLORMAP = "plasma"
BAND_ALPHA = 0.2
PANEL_SCALE = 0.62  # mup's figures are small multiples: panels smaller than the sweep figures'


def _layer_name(layer: int, depth: int) -> str:
    return "output f" if layer == depth + 1 else f"hidden {layer}"


def plot_coord_check(table: pd.DataFrame, metric: str, path: Path) -> bool:
    """Draw ``metric`` (``l1`` or ``l1_delta``) against width, panels = steps 1 … T (columns)
    × parameterizations (rows); lines = layers; band = min–max over seeds around the mean.

    Returns:
        False (nothing written) without two widths or a step ≥ 1.
    """
    steps = sorted(s for s in table["step"].unique() if s > 0)
    if not steps or table["width"].nunique() < 2:
        return False
    params = list(dict.fromkeys(table["parameterization"]))
    layers = sorted(table["layer"].unique())
    depth = int(max(layers)) - 1
    cmap = matplotlib.colormaps[LAYER_COLORMAP]
    colors = {layer: cmap(i / max(len(layers) - 1, 1) * 0.85) for i, layer in enumerate(layers)}
    fig = Figure(figsize=(PANEL_SIZE[0] * PANEL_SCALE * len(steps) + 1.6,
                          PANEL_SIZE[1] * PANEL_SCALE * len(params) + 0.4), layout="constrained")
    axes = fig.subplots(len(params), len(steps), squeeze=False, sharex=True)
    for r, param in enumerate(params):
        for c, step in enumerate(steps):
            ax = axes[r][c]
            rows = table[(table["parameterization"] == param) & (table["step"] == step)]
            for layer in layers:
                values = rows[rows["layer"] == layer]
                y = values[metric].to_numpy(float)
                keep = np.isfinite(y) & (y > 0)
                if not keep.any():
                    continue
                stats = (pd.DataFrame({"w": values["width"].to_numpy(float)[keep], "y": y[keep]})
                         .groupby("w")["y"].agg(["mean", "min", "max"]).reset_index())
                ax.plot(stats["w"], stats["mean"], color=colors[layer], marker="o",
                        markersize=3, label=_layer_name(int(layer), depth))
                ax.fill_between(stats["w"], stats["min"], stats["max"], color=colors[layer],
                                alpha=BAND_ALPHA, linewidth=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            value_ticks(ax, table["width"].unique())
            ax.tick_params(axis="x", labelrotation=45, labelsize="small")
            ax.set_title(f"{param}, step {step}", fontsize="medium")
            if c == 0:
                ax.set_ylabel(LABELS[metric])
            if r == len(params) - 1:
                ax.set_xlabel(WIDTH_LABEL if c == len(steps) // 2 else "width")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(f"Coordinate check: {LABELS[metric]} on a fixed batch vs width "
                 "(mean over seeds, band min–max)")
    return save_figure(fig, path)
