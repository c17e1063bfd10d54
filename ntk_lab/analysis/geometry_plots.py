"""Sweep figures of the kernel geometry: alignment during training, the spectrum,
the top-k eigenspace overlap and the per-layer drift against width.

Same conventions as :mod:`ntk_lab.analysis.plots`: each function takes the
:class:`~ntk_lab.analysis.collect.Sweep`, its fits and the PNG path, draws only measured
values of ok runs, and returns False (writing nothing) when the sweep cannot support it.
The spectrum figure reads ``kernels.pt`` through :mod:`ntk_lab.records`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.ticker import NullFormatter

from ntk_lab.analysis.collect import Sweep, format_value, group_label, iter_groups
from ntk_lab.analysis.fit import X_WIDTH, FitTable
from ntk_lab.analysis.geometry_fits import ROTATION, kappa_layer_columns
from ntk_lab.analysis.figure_style import (
    COLORS, STEP_LABEL, WIDTH_COLORMAP, WIDTH_LABEL, add_legend, draw_band, enough_widths, has_data, limited_panels, log_axes, mean_band, new_figure, numeric, panel_title, save_figure, slope_text, style_for, value_ticks,
)
from ntk_lab.records import KERNELS_FILE, load_kernels

ALIGNMENT_LABEL = "centered kernel-target alignment A(Θ_t, yyᵀ)"
# Normalized eigenvalues below this are round-off of a rank-deficient kernel, not spectrum.
SPECTRUM_FLOOR = 1e-10


def _width_colors(widths):
    widths = sorted(widths)
    norm = LogNorm(widths[0], widths[-1]) if widths[0] < widths[-1] else None
    cmap = matplotlib.colormaps[WIDTH_COLORMAP]
    return norm, cmap, (lambda w: cmap(norm(w)) if norm else COLORS[0])


def _width_colorbar(fig, axes, norm, cmap, widths) -> None:
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=WIDTH_LABEL)
    if len(widths) <= 10:
        bar.set_ticks(widths, labels=[format_value(w) for w in widths])
        bar.ax.yaxis.set_minor_formatter(NullFormatter())


def plot_alignment_vs_step(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Alignment vs step (symlog x, step 0 included), one line per width (mean over seeds)."""
    rows = sweep.ok_rows()
    if not has_data(rows, "alignment"):
        return False
    widths = sorted(w for w in numeric(rows, X_WIDTH).unique() if np.isfinite(w) and w > 0)
    if not widths:
        return False
    norm, cmap, color = _width_colors(widths)
    panels, total = limited_panels(rows, sweep.group_keys)
    fig, axes = new_figure(len(panels), sharey=True)
    for ax, (group, members) in zip(axes, panels):
        for width, runs in members.groupby(numeric(members, X_WIDTH)):
            values = pd.DataFrame({"step": runs["step"], "a": numeric(runs, "alignment")})
            mean = values[np.isfinite(values["a"])].groupby("step")["a"].mean()
            if len(mean):
                ax.plot(mean.index, mean.to_numpy(), color=color(width), marker=".",
                        label=f"width {format_value(width)}")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(ALIGNMENT_LABEL)
        ax.set_title(panel_title(group, len(panels), total), fontsize="medium")
    if norm:
        _width_colorbar(fig, axes, norm, cmap, widths)
    else:
        axes[0].legend(fontsize="small")
    fig.suptitle("Kernel-target alignment during training (mean over seeds). Theory: under "
                 "ntk it moves less as width grows; under mup it keeps moving", fontsize="medium")
    return save_figure(fig, path)


def _first_runs_by_width(members: pd.DataFrame) -> list[tuple[float, str]]:
    """(width, run_dir) of the lowest-seed ok run at each width."""
    runs = members.drop_duplicates("run_dir")
    if "seed" in runs:
        runs = runs.sort_values("seed")
    runs = runs.drop_duplicates(X_WIDTH)
    return sorted((float(w), d) for w, d in zip(numeric(runs, X_WIDTH), runs["run_dir"])
                  if np.isfinite(w))


def _normalized(eigvals: torch.Tensor) -> np.ndarray:
    lam = eigvals.double().clamp_min(0).numpy()
    total = lam.sum()
    return lam / total if total > 0 else lam


def plot_spectrum(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """λ_i / Σλ of Θ at init (solid) and at the end (dashed) per width, Θ_∞ dotted black;
    one run (lowest seed) per width and panel."""
    rows = sweep.ok_rows()
    if not len(rows) or not has_data(rows, "eff_rank"):
        return False
    panels, total = limited_panels(rows, sweep.group_keys)
    drawn = []
    for group, members in panels:
        spectra = []
        for width, run_dir in _first_runs_by_width(members):
            folder = Path(sweep.root) / run_dir
            if not (folder / KERNELS_FILE).exists():
                continue
            kernels = load_kernels(folder)
            eig = kernels.get("eigvals")
            if eig is None or not torch.isfinite(eig[0]).all():
                continue
            final = eig[-1] if torch.isfinite(eig[-1]).all() else None
            theta_inf = kernels.get("theta_inf")
            # a custom module has no known limit: its Θ_∞ is NaN and has no spectrum to draw
            known = theta_inf is not None and bool(torch.isfinite(theta_inf).all())
            inf = torch.linalg.eigvalsh(theta_inf.double()).flip(0) if known else None
            spectra.append((width, eig[0], final, inf))
        if spectra:
            drawn.append((group, spectra))
    if not drawn:
        return False
    widths = sorted({w for _, spectra in drawn for w, *_ in spectra})
    norm, cmap, color = _width_colors(widths)
    fig, axes = new_figure(len(drawn), sharey=True)
    shown = [_normalized(e) for _, spectra in drawn for _, init, final, _ in spectra
             for e in (init, final) if e is not None]
    positive = np.concatenate([v[v > 0] for v in shown])
    floor = max(SPECTRUM_FLOOR, 0.5 * float(positive.min())) if len(positive) else SPECTRUM_FLOOR
    for ax, (group, spectra) in zip(axes, drawn):
        for width, init, final, _ in spectra:
            index = np.arange(1, len(init) + 1)
            ax.plot(index, _normalized(init), color=color(width), linestyle="-",
                    label=f"width {format_value(width)} init")
            if final is not None:
                ax.plot(index, _normalized(final), color=color(width), linestyle="--")
        inf = spectra[-1][3]
        if inf is not None:
            ax.plot(np.arange(1, len(inf) + 1), _normalized(inf), color="black", linestyle=":",
                    linewidth=1.6, label="Θ_∞")
        log_axes(ax)
        ax.set_ylim(bottom=floor)
        ax.set_xlabel("eigenvalue index i (decreasing)")
        ax.set_ylabel(r"$\lambda_i / \sum_j \lambda_j$ of $\Theta$ on the probe set")
        ax.set_title(panel_title(group, len(drawn), total), fontsize="medium")
        ax.plot([], [], color="0.4", linestyle="-", label="init (solid)")
        ax.plot([], [], color="0.4", linestyle="--", label="end of training (dashed)")
        ax.legend(fontsize="x-small")
    if norm:
        _width_colorbar(fig, axes, norm, cmap, widths)
    fig.suptitle("Spectrum of the empirical NTK at init and after training, and of Θ_∞ "
                 "(lowest seed per width)", fontsize="medium")
    return save_figure(fig, path)


def plot_eig_overlap_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Left: final eig_overlap_init vs width, one line per group. Right: 1 − overlap on
    log–log axes with the fitted slopes (fits.csv's ``one_minus_eig_overlap_init``)."""
    rows = sweep.at_final()
    if not has_data(rows, "eig_overlap_init") or not enough_widths(rows):
        return False
    groups = list(iter_groups(rows, sweep.group_keys))
    fig, (ax, ax_log) = new_figure(2)
    all_widths = []
    for index, (group, members) in enumerate(groups):
        color, linestyle = style_for(index)
        label = group_label(group)
        stats = mean_band(members, X_WIDTH, "eig_overlap_init")
        if len(stats):
            draw_band(ax, stats, color=color, linestyle=linestyle, label=label)
            all_widths += stats["x"].tolist()
        rotated = mean_band(members, X_WIDTH, ROTATION)
        if len(rotated):
            fit = fits.lookup(ROTATION, X_WIDTH, group)
            draw_band(ax_log, rotated, color=color, linestyle=linestyle,
                      label=label + slope_text(fit))
    if not all_widths:
        return False
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    value_ticks(ax, all_widths)
    ax.set_xlabel(WIDTH_LABEL)
    ax.set_ylabel(r"final $\|U_T^\top U_0\|_F^2 / k$ (top-k eigenspace overlap)")
    ax.set_title("Overlap of the final top-k eigenspace with the initial one")
    add_legend(fig, ax)
    log_axes(ax_log)
    value_ticks(ax_log, all_widths)
    ax_log.set_xlabel(WIDTH_LABEL)
    ax_log.set_ylabel("1 − eig_overlap_init (final)")
    ax_log.set_title("Rotation of the top-k eigenspace, fitted slopes")
    if ax_log.get_legend_handles_labels()[0]:
        ax_log.legend(fontsize="x-small")
    fig.suptitle("Top-k eigenspace rotation vs width. Theory: under ntk the eigenspace "
                 "rotates less as width grows; under mup it keeps rotating", fontsize="medium")
    return save_figure(fig, path)


def plot_kappa_layers_vs_width(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Final kappa_layer{i} vs width, one line per layer, the conjugate kernel's drift
    (ck_kappa) dashed black; a panel per group; fitted slopes in the legend."""
    rows = sweep.at_final()
    layers = [c for c in kappa_layer_columns(sweep.metric_columns) if has_data(rows, c)]
    if not layers or not enough_widths(rows):
        return False
    panels, total = limited_panels(rows, sweep.group_keys)
    drawn = []
    for group, members in panels:
        lines = [(c, s) for c in [*layers, "ck_kappa"]
                 if c in members and len(s := mean_band(members, X_WIDTH, c)) >= 2]
        if lines:
            drawn.append((group, lines))
    if not drawn:
        return False
    fig, axes = new_figure(len(drawn))
    for ax, (group, lines) in zip(axes, drawn):
        widths = []
        for index, (column, stats) in enumerate(lines):
            fit = fits.lookup(column, X_WIDTH, group)
            if column == "ck_kappa":
                draw_band(ax, stats, color="black", linestyle="--", marker="s",
                          label="conjugate kernel" + slope_text(fit))
            else:
                color, linestyle = style_for(index)
                draw_band(ax, stats, color=color, linestyle=linestyle,
                          label=column.replace("kappa_", "") + slope_text(fit))
            widths += stats["x"].tolist()
        log_axes(ax)
        value_ticks(ax, widths)
        ax.set_xlabel(WIDTH_LABEL)
        ax.set_ylabel(r"final $\|\Theta_{l,T} - \Theta_{l,0}\|_F / \|\Theta_{l,0}\|_F$")
        ax.set_title(panel_title(group, len(panels), total), fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("Per-layer NTK drift after training (mean over seeds; layer 1 = input, "
                 "last = readout)", fontsize="medium")
    return save_figure(fig, path)
