"""Sweep figures of lazy training: the network against its linearization and against Θ_∞.

- :func:`plot_lee2019_training_curves` — train and test loss during training of the network,
  its linearization f_lin and the infinite-width Θ_∞ gradient-flow prediction, one panel per
  width (Lee et al. 2019, "Wide neural networks of any depth evolve as linear models under
  gradient descent", Figs. 1–2).
- :func:`plot_lazy_gaps_vs_width` — the final ``lin_gap``, ``inf_gap``, ``kappa_hessian``
  (Liu, Zhu & Belkin 2020) and ``jac_change`` against width, with the fitted slopes.

Same contract and helpers as :mod:`ntk_lab.analysis.plots`: draw only from measured values of
ok runs, return False (writing nothing) when the sweep cannot support the figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ntk_lab.analysis.collect import Sweep, format_value, group_label, iter_groups, same_value
from ntk_lab.analysis.fit import X_WIDTH, FitTable
from ntk_lab.analysis.figure_style import (
    COLORS, LINESTYLES, PANEL_SIZE, STEP_LABEL, WIDTH_LABEL, draw_band, has_data, log_axes, mean_band, numeric, reference_line, save_figure, slope_text, style_for, value_ticks,
)

# ---------------------------------------------------------------- training curves

MAX_WIDTH_PANELS = 4  # smallest, largest and evenly spaced between
MAX_GROUP_ROWS = 3  # rows of panels, one per group of the other swept knobs

# (column, split, model): split picks the color, model the line style.
SPLIT_COLORS = {"train": COLORS[0], "test": COLORS[1]}
MODEL_STYLES = {"network": "-", "linearized": "--", "infinite": ":"}
MODEL_LABELS = {
    "network": r"network $f_t$ (solid)",
    "linearized": r"linearized $f^{\rm lin}_t$ (dashed)",
    "infinite": r"$\Theta_\infty$ gradient flow (dotted)",
}
CURVES = (
    ("train_loss", "train", "network"), ("test_loss", "test", "network"),
    ("train_loss_lin", "train", "linearized"), ("test_loss_lin", "test", "linearized"),
    ("train_loss_inf", "train", "infinite"), ("test_loss_inf", "test", "infinite"),
)
LAZY_LOSS_COLUMNS = tuple(c for c, _, model in CURVES if model != "network")
KERNEL_REGRESSION = "test_loss_kernel_regression"
LOSS_LABEL = r"loss $L = \sum_i \|f(x_i) - y_i\|^2 / 2N$ (MSE)"


def selected_widths(widths: Sequence[float], limit: int = MAX_WIDTH_PANELS) -> list[float]:
    """At most ``limit`` of the sorted widths: the smallest, the largest, evenly spaced between."""
    widths = sorted(set(widths))
    if len(widths) <= limit:
        return widths
    picks = np.unique(np.round(np.linspace(0, len(widths) - 1, limit)).astype(int))
    return [widths[i] for i in picks]


def plot_lee2019_training_curves(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Loss vs step of the network, its linearization and the Θ_∞ prediction, per width.

    One row of panels per group of the other swept knobs (at most :data:`MAX_GROUP_ROWS`),
    one column per selected width (:func:`selected_widths`). Each line is the mean over the
    group's ok runs (seeds) at each checkpoint; the x axis is symlog so step 0 is shown. Drawn
    only when some ``*_lin`` or ``*_inf`` loss column holds data.
    """
    rows = sweep.ok_rows()
    if not any(has_data(rows, c) for c in LAZY_LOSS_COLUMNS):
        return False
    rows = rows[np.isfinite(numeric(rows, X_WIDTH)) & (numeric(rows, X_WIDTH) > 0)]
    groups = [(g, m) for g, m in iter_groups(rows, sweep.group_keys)
              if any(has_data(m, c) for c in LAZY_LOSS_COLUMNS)]
    if not groups:
        return False
    total_groups = len(groups)
    groups = groups[:MAX_GROUP_ROWS]
    widths = selected_widths(numeric(rows, X_WIDTH).unique().tolist())
    positive_steps = numeric(rows, "step")
    positive_steps = positive_steps[positive_steps > 0]
    linthresh = float(positive_steps.min()) if len(positive_steps) else 1.0

    nrows, ncols = len(groups), len(widths)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols * 0.85 + 2.2, PANEL_SIZE[1] * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey="row")
    models_drawn: set[str] = set()
    with_kernel_regression = False
    for r, (group, members) in enumerate(groups):
        member_widths = numeric(members, X_WIDTH)
        for c, width in enumerate(widths):
            ax = axes[r][c]
            at_width = members[member_widths == width]
            n_runs = at_width["run_dir"].nunique() if len(at_width) else 0
            for column, split, model in CURVES:
                curve = _mean_curve(at_width, column)
                if len(curve):
                    ax.plot(curve.index, curve.to_numpy(), color=SPLIT_COLORS[split],
                            linestyle=MODEL_STYLES[model], linewidth=1.6,
                            marker="." if model == "network" else None, markersize=4)
                    models_drawn.add(model)
            regression = _run_means(at_width, KERNEL_REGRESSION)
            if len(regression):
                ax.axhline(float(regression.mean()), color="0.45", linestyle="-.",
                           linewidth=1.0)
                with_kernel_regression = True
            ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlim(left=0)
            ax.set_xlabel(STEP_LABEL)
            if c == 0:
                ax.set_ylabel(LOSS_LABEL)
            head = f"width {format_value(width)}"
            if group:
                head = f"{group_label(group)}, {head}"
            if not n_runs:
                ax.text(0.5, 0.5, "no ok run", transform=ax.transAxes, ha="center",
                        va="center", color="0.4")
            ax.set_title(f"{head} ({n_runs} run{'s' if n_runs != 1 else ''})",
                         fontsize="medium")
    handles = [Line2D([], [], color=SPLIT_COLORS[s], label=f"{s} loss") for s in SPLIT_COLORS]
    handles += [Line2D([], [], color="black", linestyle=MODEL_STYLES[m], label=MODEL_LABELS[m])
                for m in MODEL_STYLES if m in models_drawn]
    if with_kernel_regression:
        handles.append(Line2D([], [], color="0.45", linestyle="-.",
                              label=r"test, $\Theta_\infty$ kernel regression ($t\to\infty$)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    more = "" if total_groups == len(groups) else f"; first {len(groups)} of {total_groups} groups"
    fig.suptitle("Training curves: network vs linearized vs infinite-width "
                 f"(mean over seeds{more})", fontsize="medium")
    return save_figure(fig, path)


def _mean_curve(frame: pd.DataFrame, column: str) -> pd.Series:
    """Mean over runs of the positive finite values of ``column`` at each step."""
    if column not in frame.columns or not len(frame):
        return pd.Series(dtype=float)
    values = numeric(frame, column)
    good = np.isfinite(values) & (values > 0)
    return values[good].groupby(numeric(frame, "step")[good]).mean()


def _run_means(frame: pd.DataFrame, column: str) -> pd.Series:
    """One value per run: the mean of the positive finite values of a per-run constant."""
    if column not in frame.columns or not len(frame):
        return pd.Series(dtype=float)
    values = numeric(frame, column)
    good = np.isfinite(values) & (values > 0)
    return values[good].groupby(frame["run_dir"][good]).mean()


# ---------------------------------------------------------------- gaps vs width

# (column, panel title, y label); the first three are what this figure is drawn for.
GAP_PANELS = (
    ("lin_gap", "Network vs its linearization (Lee et al. 2019)",
     r"final $\|f - f^{\rm lin}\| \,/\, \|f - f_0\|$ on test set (relative)"),
    ("inf_gap", r"Network vs $\Theta_\infty$ gradient flow",
     r"final $\|f - f^{\infty}\| \,/\, \|f - f_0\|$ on test set (relative)"),
    ("kappa_hessian", "Hessian κ (Liu, Zhu & Belkin 2020)",
     r"$\|f_T - f_0\|\,\|\nabla^2_\theta f_0\|_2 \,/\, \|\nabla_\theta f_0\|^2$"
     " (dimensionless)"),
    ("jac_change", "Jacobian change after training",
     r"final $\|J_t - J_0\|_F \,/\, \|J_0\|_F$ (relative)"),
)
GAP_METRICS = ("lin_gap", "inf_gap", "kappa_hessian")
COLOR_KEY = "parameterization"


def plot_lazy_gaps_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final lin_gap, inf_gap, kappa_hessian and jac_change vs width (log–log), one panel each.

    One line per group of the swept knobs (colored by parameterization when it is swept),
    mean over seeds with min–max band, the fitted slope and its interval in the legend, and a
    grey ∝ n^(−1/2) reference (the ntk-parameterization rate of Lee et al. 2019). Drawn only
    when lin_gap, inf_gap or kappa_hessian holds data for ≥ 2 widths; a panel without data is
    left out.
    """
    rows = sweep.at_final()
    if not len(rows):
        return False
    panels = []
    for column, title, ylabel in GAP_PANELS:
        if not has_data(rows, column):
            continue
        lines = [(g, s) for g, m in iter_groups(rows, sweep.group_keys)
                 if len(s := mean_band(m, X_WIDTH, column)) >= 2]
        if lines:
            panels.append((column, title, ylabel, lines))
    if not any(column in GAP_METRICS for column, *_ in panels):
        return False
    fig, axes = _grid(len(panels))
    colour_values = sweep.knobs.get(COLOR_KEY, [])
    for ax, (column, title, ylabel, lines) in zip(axes, panels):
        used: dict[int, int] = {}
        for index, (group, stats) in enumerate(lines):
            color, linestyle = style_for(index)
            if colour_values and COLOR_KEY in group:
                slot = next((i for i, v in enumerate(colour_values)
                             if same_value(v, group[COLOR_KEY])), index)
                color = COLORS[slot % len(COLORS)]
                linestyle = LINESTYLES[used.get(slot, 0) % len(LINESTYLES)]
                used[slot] = used.get(slot, 0) + 1
            fit = fits.lookup(column, X_WIDTH, group)
            draw_band(ax, stats, color=color, linestyle=linestyle,
                      label=group_label(group) + slope_text(fit))
        widths = np.concatenate([s["x"].to_numpy() for _, s in lines])
        smallest = widths.min()
        at_smallest = [s.loc[s["x"] == smallest, "mean"].iloc[0] for _, s in lines
                       if (s["x"] == smallest).any()]
        anchor = (smallest, float(np.exp(np.mean(np.log(at_smallest)))))
        reference_line(ax, widths, anchor, -0.5, "∝ n$^{-1/2}$ (ntk theory)")
        log_axes(ax)
        value_ticks(ax, widths)
        ax.set_xlabel(WIDTH_LABEL)
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="x-small")
    by = f", by {COLOR_KEY}" if colour_values else ""
    fig.suptitle(f"Distance from lazy training after training vs width{by} "
                 "(mean over seeds, min–max band)", fontsize="medium")
    return save_figure(fig, path)


def _grid(n_panels: int) -> tuple[Figure, list[Axes]]:
    """``n_panels`` axes, 2 × 2 for four panels, otherwise one row."""
    ncols = 2 if n_panels == 4 else n_panels
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes: list[Any] = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    return fig, axes[:n_panels]
