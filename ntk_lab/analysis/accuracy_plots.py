"""Sweep figure of classification accuracy against width: the network and its Θ_∞ prediction.

- :func:`plot_accuracy_vs_width` — the final test accuracy of the network (solid) and of the
  infinite-width gradient-flow prediction f^∞ (dashed, ``test_acc_inf``), and the final train
  accuracy, against width; one color per group of the other swept knobs (e.g. ``model=cnn``
  and ``model=mlp`` in ``mnist_cnn_drift``).

Accuracy is bounded and does not follow a power law, so nothing is fitted: the figure shows
the measured means over seeds with their min–max band. Same contract as
:mod:`ntk_lab.analysis.plots`: draw only from measured values of ok runs, return False
(writing nothing) when the sweep cannot support the figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ntk_lab.analysis.collect import Sweep, group_label, iter_groups
from ntk_lab.analysis.fit import X_WIDTH, FitTable
from ntk_lab.analysis.figure_style import (
    BAND_ALPHA, COLORS, WIDTH_LABEL, new_figure, numeric, save_figure, value_ticks,
)

# (column, panel, line style, legend suffix): the panel index each accuracy is drawn in.
ACCURACY_LINES = (
    ("test_acc", 0, "-", "network"),
    ("test_acc_inf", 0, "--", r"$\Theta_\infty$ flow"),
    ("train_acc", 1, "-", "network"),
)
PANEL_TITLES = ("Test accuracy after training", "Train accuracy after training")
PANEL_YLABELS = ("final test accuracy (fraction correct)",
                 "final train accuracy (fraction correct)")


def accuracy_band(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, min and max of the finite values of ``column`` at each positive width.

    Unlike :func:`ntk_lab.analysis.plots.mean_band` a value of 0 is kept: an accuracy of 0 is
    a measurement, not a missing value.

    Returns:
        Columns ``x, mean, low, high, n``, sorted by width; empty without finite values.
    """
    if column not in frame.columns:
        return pd.DataFrame(columns=["x", "mean", "low", "high", "n"])
    data = pd.DataFrame({"x": numeric(frame, X_WIDTH), "y": numeric(frame, column)})
    data = data[np.isfinite(data["x"]) & (data["x"] > 0) & np.isfinite(data["y"])]
    if not len(data):
        return pd.DataFrame(columns=["x", "mean", "low", "high", "n"])
    stats = data.groupby("x")["y"].agg(["mean", "min", "max", "count"]).reset_index()
    return stats.rename(columns={"min": "low", "max": "high", "count": "n"})


def plot_accuracy_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final test accuracy (network and Θ_∞ prediction) and train accuracy vs width.

    One color per group of the swept knobs other than width and seed (the CNN and the MLP of
    ``mnist_cnn_drift`` apart), the mean over seeds with a min–max band; log width axis,
    linear accuracy axis. Drawn only when ``test_acc`` holds data for ≥ 2 widths in some
    group (classification data); the train panel only when ``train_acc`` does.
    """
    rows = sweep.at_final()
    if not len(rows) or "test_acc" not in rows.columns:
        return False
    groups = list(iter_groups(rows, sweep.group_keys))
    if not any(len(accuracy_band(m, "test_acc")) >= 2 for _, m in groups):
        return False
    with_train = any(len(accuracy_band(m, "train_acc")) >= 2 for _, m in groups)
    fig, axes = new_figure(2 if with_train else 1)
    widths: list[float] = []
    for index, (group, members) in enumerate(groups):
        color = COLORS[index % len(COLORS)]
        for column, panel, linestyle, what in ACCURACY_LINES:
            stats = accuracy_band(members, column)
            if len(stats) < 2 or panel >= len(axes):
                continue
            ax = axes[panel]
            ax.plot(stats["x"], stats["mean"], color=color, linestyle=linestyle, marker="o",
                    markersize=4, label=f"{group_label(group)}, {what}")
            if (stats["n"] > 1).any():
                ax.fill_between(stats["x"], stats["low"], stats["high"], color=color,
                                alpha=BAND_ALPHA, linewidth=0)
            widths += stats["x"].tolist()
    for panel, ax in enumerate(axes):
        ax.set_xscale("log")
        ax.grid(True, which="major", alpha=0.3)
        value_ticks(ax, widths)
        ax.set_xlabel(WIDTH_LABEL)
        ax.set_ylabel(PANEL_YLABELS[panel], fontsize="small")
        ax.set_title(PANEL_TITLES[panel], fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("Accuracy vs width (mean over seeds, min–max band)", fontsize="medium")
    return save_figure(fig, path)
