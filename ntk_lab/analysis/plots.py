"""Sweep figures of drift: the kernel and the parameters against width, step, depth × lr, α.

Every function takes the :class:`~ntk_lab.analysis.collect.Sweep`, its
:class:`~ntk_lab.analysis.fit.FitTable` and the PNG path, draws only from measured values of
ok runs, and returns False (writing nothing) when the sweep cannot support the figure.
Figures are built with :class:`matplotlib.figure.Figure` and saved through the Agg canvas:
no pyplot, no global figure registry to close, safe inside a Hydra callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize

from ntk_lab.analysis.collect import (
    Sweep, distinct_values, format_value, group_label, iter_groups, layer_columns, same_value,
)
from ntk_lab.analysis.fit import X_OUTPUT_SCALE, X_WIDTH, FitTable, fit_group_keys
from ntk_lab.analysis.figure_style import (
    COLORS, LINESTYLES, WIDTH_COLORMAP, TRAINING_KNOBS, WIDTH_LABEL, STEP_LABEL, KAPPA_LABEL,
    new_figure, save_figure, numeric, mean_band, draw_band, reference_line, add_legend,
    value_ticks, slope_text, log_axes, style_for, limited_panels, panel_title, enough_widths,
    has_data, layer_name,
)


# ---------------------------------------------------------------- figures


def plot_ntk_err_inf_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """``ntk_err_inf`` at step 0 vs width, one line per depth (and other init knobs).

    Runs that differ only in training knobs (lr, steps, …) share their initialization, so
    they are pooled. Mean over seeds with min–max band; reference ∝ width^(-1/2) anchored at
    the smallest width's mean.
    """
    rows = sweep.at_init()
    if not has_data(rows, "ntk_err_inf") or not enough_widths(rows):
        return False
    keys = [k for k in sweep.group_keys if k not in TRAINING_KNOBS]
    lines = [(g, s) for g, m in iter_groups(rows, keys)
             if len(s := mean_band(m, X_WIDTH, "ntk_err_inf")) >= 2]
    if not lines:
        return False
    fig, (ax,) = new_figure(1)
    for index, (group, stats) in enumerate(lines):
        color, linestyle = style_for(index)
        fit = fits.lookup("ntk_err_inf", X_WIDTH, group)
        draw_band(ax, stats, color=color, linestyle=linestyle,
                  label=group_label(group) + slope_text(fit))
    widths = np.concatenate([s["x"].to_numpy() for _, s in lines])
    smallest = widths.min()
    anchor = np.mean([s.loc[s["x"] == smallest, "mean"].iloc[0] for _, s in lines
                      if (s["x"] == smallest).any()])
    reference_line(ax, widths, (smallest, anchor), -0.5, "∝ width$^{-1/2}$ (theory)")
    log_axes(ax)
    value_ticks(ax, widths)
    ax.set_xlabel(WIDTH_LABEL)
    ax.set_ylabel(r"$\|\Theta_0 - \Theta_\infty\|_F \,/\, \|\Theta_\infty\|_F$ at init "
                  "(relative)")
    ax.set_title(r"Initial NTK vs $\Theta_\infty$ (mean over seeds, min–max band)",
                 fontsize="medium")
    add_legend(fig, ax)
    return save_figure(fig, path)


def plot_kappa_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final kappa vs width, one line per group of the other swept knobs, slope ± CI."""
    return _kappa_vs_width(sweep, fits, path, color_key=None)


def plot_kappa_vs_width_by_parameterization(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final kappa vs width colored by parameterization (only when it is swept)."""
    if "parameterization" not in sweep.knobs:
        return False
    return _kappa_vs_width(sweep, fits, path, color_key="parameterization")


def _kappa_vs_width(sweep: Sweep, fits: FitTable, path: Path, color_key: str | None) -> bool:
    rows = sweep.at_final()
    if not has_data(rows, "kappa") or not enough_widths(rows):
        return False
    lines = [(g, s) for g, m in iter_groups(rows, sweep.group_keys)
             if len(s := mean_band(m, X_WIDTH, "kappa")) >= 2]
    if not lines:
        return False
    fig, (ax,) = new_figure(1)
    colour_values = sweep.knobs.get(color_key, []) if color_key else []
    used: dict[int, int] = {}
    for index, (group, stats) in enumerate(lines):
        color, linestyle = style_for(index)
        if color_key:
            slot = next(i for i, v in enumerate(colour_values) if same_value(v, group[color_key]))
            color = COLORS[slot % len(COLORS)]
            linestyle = LINESTYLES[used.get(slot, 0) % len(LINESTYLES)]
            used[slot] = used.get(slot, 0) + 1
        fit = fits.lookup("kappa", X_WIDTH, group)
        draw_band(ax, stats, color=color, linestyle=linestyle,
                  label=group_label(group) + slope_text(fit))
    log_axes(ax)
    value_ticks(ax, np.concatenate([s["x"].to_numpy() for _, s in lines]))
    ax.set_xlabel(WIDTH_LABEL)
    ax.set_ylabel("final " + KAPPA_LABEL)
    by = f" by {color_key}" if color_key else ""
    ax.set_title(f"Kernel drift after training{by}", fontsize="medium")
    add_legend(fig, ax)
    return save_figure(fig, path)


def plot_kappa_vs_step(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """kappa vs step (log x, step 0 left out), one line per width colored on a log scale."""
    rows = sweep.ok_rows()
    if not len(rows) or not has_data(rows, "kappa"):
        return False
    rows = rows[numeric(rows, "step") > 0]
    widths = sorted(w for w in numeric(rows, X_WIDTH).unique() if np.isfinite(w) and w > 0)
    if not widths or not has_data(rows, "kappa"):
        return False
    panels, total = limited_panels(rows, sweep.group_keys)
    norm = LogNorm(widths[0], widths[-1]) if widths[0] < widths[-1] else None
    cmap = matplotlib.colormaps[WIDTH_COLORMAP]
    fig, axes = new_figure(len(panels), sharey=True)
    for ax, (group, members) in zip(axes, panels):
        for width, runs in members.groupby(numeric(members, X_WIDTH)):
            mean = _positive(runs, "kappa").groupby("step")["kappa"].mean()
            if len(mean):
                color = cmap(norm(width)) if norm else COLORS[0]
                ax.plot(mean.index, mean.to_numpy(), color=color, marker=".",
                        label=f"width {format_value(width)}")
        log_axes(ax)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(KAPPA_LABEL)
        ax.set_title(panel_title(group, len(panels), total), fontsize="medium")
    if norm:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=WIDTH_LABEL)
        if len(widths) <= 10:
            bar.set_ticks(widths, labels=[format_value(w) for w in widths])
    else:
        axes[0].legend(fontsize="small")
    fig.suptitle("Kernel drift during training (mean over seeds)", fontsize="medium")
    return save_figure(fig, path)


def _positive(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    values = numeric(frame, column)
    return pd.DataFrame({"step": frame["step"], column: values})[
        np.isfinite(values) & (values > 0)]


def plot_param_change_layers_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final per-layer param_change vs width, one line per layer, reference slopes −1/2, −1."""
    rows = sweep.at_final()
    layers = [c for c in layer_columns(sweep.metric_columns) if has_data(rows, c)]
    if not layers or not enough_widths(rows):
        return False
    panels, total = limited_panels(rows, sweep.group_keys)
    drawn = []
    for group, members in panels:
        lines = [(c, s) for c in layers if len(s := mean_band(members, X_WIDTH, c)) >= 2]
        if lines:
            drawn.append((group, members, lines))
    if not drawn:
        return False
    fig, axes = new_figure(len(drawn))
    for ax, (group, members, lines) in zip(axes, drawn):
        depths = distinct_values(members["depth"]) if "depth" in members else []
        depth = depths[0] if len(depths) == 1 else None
        for index, (column, stats) in enumerate(lines):
            color, linestyle = style_for(index)
            draw_band(ax, stats, color=color, linestyle=linestyle,
                      label=layer_name(column, depth))
        widths = np.concatenate([s["x"].to_numpy() for _, s in lines])
        smallest = widths.min()
        at_smallest = [s.loc[s["x"] == smallest, "mean"].iloc[0] for _, s in lines
                       if (s["x"] == smallest).any()]
        anchor = (smallest, float(np.exp(np.mean(np.log(at_smallest)))))
        reference_line(ax, widths, anchor, -0.5, "∝ n$^{-1/2}$ (input, readout)", "--")
        reference_line(ax, widths, anchor, -1.0, "∝ n$^{-1}$ (hidden)", ":")
        log_axes(ax)
        value_ticks(ax, widths)
        ax.set_xlabel(WIDTH_LABEL)
        ax.set_ylabel(r"final $\|W_t - W_0\|_F \,/\, \|W_0\|_F$ (relative)")
        ax.set_title(panel_title(group, len(panels), total), fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("Per-layer weight change after training (mean over seeds)", fontsize="medium")
    return save_figure(fig, path)


def plot_kappa_heatmap_depth_lr(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final kappa on a depth × lr grid at the largest width (mean over seeds), annotated."""
    rows = sweep.at_final()
    if not has_data(rows, "kappa") or "depth" not in rows or "lr" not in rows:
        return False
    depths = [d for d in distinct_values(rows["depth"]) if isinstance(d, (int, float))]
    lrs = [r for r in distinct_values(rows["lr"]) if isinstance(r, (int, float))]
    if len(depths) < 2 and len(lrs) < 2:
        return False
    keys = [k for k in sweep.group_keys if k not in ("depth", "lr")]
    panels, total = limited_panels(rows, keys)
    grids = [(g, *_depth_lr_grid(m, depths, lrs)) for g, m in panels]
    values = np.concatenate([grid.ravel() for _, _, grid in grids])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return False
    norm = LogNorm(values.min(), values.max()) if values.min() < values.max() else Normalize(
        values.min() * 0.9, values.max() * 1.1)
    cmap = matplotlib.colormaps[WIDTH_COLORMAP]
    fig, axes = new_figure(len(grids))
    for ax, (group, width, grid) in zip(axes, grids):
        shown = np.where(np.isfinite(grid) & (grid > 0), grid, np.nan)
        ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            text, color = _cell_text(value, norm)
            ax.text(j, i, text, color=color, ha="center", va="center", fontsize="small")
        ax.set_xticks(range(len(lrs)), labels=[format_value(v) for v in lrs])
        ax.set_yticks(range(len(depths)), labels=[format_value(v) for v in depths])
        ax.set_xlabel("learning rate η")
        ax.set_ylabel("depth (hidden layers)")
        title = group_label(group) if group else ""
        ax.set_title(f"{title}{', ' if title else ''}width {format_value(width)}"
                     + ("" if len(panels) == total else f" (first {len(panels)} of {total})"),
                     fontsize="medium")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="final kappa (relative)")
    fig.suptitle("Final kappa, largest width, mean over seeds", fontsize="medium")
    return save_figure(fig, path)


def _cell_text(value: float, norm: Normalize) -> tuple[str, str]:
    """The annotation of one heat-map cell and a color that reads on viridis."""
    if not np.isfinite(value):
        return "—", "0.3"
    light_cell = value > 0 and norm(value) > 0.5  # viridis is yellow at the top
    return f"{value:.3g}", "black" if light_cell else "white"


def _depth_lr_grid(
    members: pd.DataFrame, depths: Sequence[float], lrs: Sequence[float]
) -> tuple[float, np.ndarray]:
    """(largest width, mean final kappa at that width on the depth × lr grid, NaN if absent)."""
    widths = numeric(members, X_WIDTH)
    largest = float(widths.max())
    top = members[widths == largest]
    kappa, depth, lr = numeric(top, "kappa"), numeric(top, "depth"), numeric(top, "lr")
    grid = np.full((len(depths), len(lrs)), np.nan)
    for i, d in enumerate(depths):
        for j, r in enumerate(lrs):
            cell = kappa[(depth == d) & (lr == r)]
            if cell.notna().any():
                grid[i, j] = cell.mean()
    return largest, grid


def plot_kappa_vs_output_scale(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final kappa and test loss vs output scale α (log–log), reference ∝ 1/α.

    One line per group of the other knobs (width included); the slope in the legend is the
    fit over α ≥ 1.
    """
    if X_OUTPUT_SCALE not in sweep.knobs:
        return False
    rows = sweep.at_final()
    if not has_data(rows, "kappa"):
        return False
    lines = [(group, mean_band(members, X_OUTPUT_SCALE, "kappa"),
              mean_band(members, X_OUTPUT_SCALE, "test_loss") if has_data(members, "test_loss")
              else None)
             for group, members in iter_groups(rows, fit_group_keys(sweep, X_OUTPUT_SCALE))]
    lines = [line for line in lines if len(line[1]) >= 2]
    if not lines:
        return False
    with_loss = any(loss is not None and len(loss) >= 2 for _, _, loss in lines)
    fig, axes = new_figure(2 if with_loss else 1)
    for index, (group, kappa, loss) in enumerate(lines):
        color, linestyle = style_for(index)
        fit = fits.lookup("kappa", X_OUTPUT_SCALE, group)
        draw_band(axes[0], kappa, color=color, linestyle=linestyle,
                  label=group_label(group) + slope_text(fit))
        if with_loss and loss is not None and len(loss) >= 2:
            draw_band(axes[1], loss, color=color, linestyle=linestyle, label="_nolegend_")
    alphas = np.concatenate([kappa["x"].to_numpy() for _, kappa, _ in lines])
    first = lines[0][1]
    lazy = first[first["x"] >= 1.0]
    anchor = (lazy if len(lazy) else first).iloc[0]
    reference_line(axes[0], alphas, (anchor["x"], anchor["mean"]), -1.0, "∝ 1/α (theory)")
    axes[0].set_ylabel("final " + KAPPA_LABEL)
    axes[0].set_title("Kernel drift vs output scale (slope fitted for α ≥ 1)", fontsize="medium")
    if with_loss:
        axes[1].set_ylabel("final test loss (MSE)")
        axes[1].set_title("Test loss vs output scale", fontsize="medium")
    for ax in axes:
        log_axes(ax)
        value_ticks(ax, alphas)
        ax.set_xlabel(r"output scale $\alpha$ (trains $\alpha\,(f - f_0)$)")
    add_legend(fig, axes[0])
    return save_figure(fig, path)
