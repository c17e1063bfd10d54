"""Kernel gaps against depth/width (the ``resmlp_depth`` study).

At finite width the NTK's fluctuation at init and its drift during training grow with the
ratio depth/width (Hanin & Nica 2019, "Finite depth and width corrections to the neural
tangent kernel": both are controlled by β = depth/width, not by width alone); a residual
network whose branches are scaled down keeps them smaller at the same depth. This figure
plots ``ntk_err_inf`` at step 0 and the final ``kappa`` against depth/width, one colour per
model (plain MLP, residual MLP, …), one marker per width, means over seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from ntk_lab.analysis.collect import Sweep, format_value, group_label, iter_groups
from ntk_lab.analysis.fit import FitTable
from ntk_lab.analysis.figure_style import (
    COLORS, add_legend, has_data, log_axes, new_figure, numeric, save_figure,
)

MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_kernel_gaps_vs_depth_over_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """ntk_err_inf (step 0) and final kappa vs depth/width; drawn when ≥ 2 depths were swept."""
    if len(sweep.values("depth")) < 2 or len(sweep.values("width")) < 1:
        return False
    panels = [(sweep.at_init(), "ntk_err_inf", r"$\|\Theta_0 - \Theta_\infty\|_F / \|\Theta_\infty\|_F$ at init"),
              (sweep.at_final(), "kappa", r"final kappa $= \|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$")]
    panels = [p for p in panels if has_data(p[0], p[1])]
    if not panels:
        return False
    keys = [k for k in sweep.group_keys if k not in ("depth", "width", "lr", "steps")]
    widths = sorted({float(w) for w in sweep.values("width")})
    fig, axes = new_figure(len(panels))
    for ax, (rows, metric, label) in zip(axes, panels):
        for index, (group, members) in enumerate(iter_groups(rows, keys)):
            for w_index, width in enumerate(widths):
                at_width = members[numeric(members, "width") == width]
                stats = _means(at_width, metric)
                if not len(stats):
                    continue
                name = group_label(group) or "runs"
                ax.plot(stats["ratio"], stats["mean"], color=COLORS[index % len(COLORS)],
                        marker=MARKERS[w_index % len(MARKERS)], linestyle="-", markersize=5,
                        label=f"{name}, width {format_value(width)}")
        log_axes(ax)
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a ~1.5-decade axis collide
        ax.set_xlabel("depth / width")
        ax.set_ylabel(label + " (relative)")
    axes[0].set_title("Kernel gaps vs depth/width (mean over seeds)", fontsize="medium")
    add_legend(fig, axes[-1])
    return save_figure(fig, path)


def _means(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    data = pd.DataFrame({"ratio": numeric(rows, "depth") / numeric(rows, "width"),
                         "y": numeric(rows, metric)})
    data = data[np.isfinite(data["ratio"]) & np.isfinite(data["y"]) & (data["y"] > 0)]
    if not len(data):
        return pd.DataFrame(columns=["ratio", "mean"])
    return data.groupby("ratio")["y"].mean().reset_index(name="mean").sort_values("ratio")
