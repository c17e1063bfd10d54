"""The look of every sweep figure: sizes, colours, labels, and the small drawing helpers the
figure modules share (a mean with a band over seeds, a reference slope, legends, log axes,
panels).

Figures are built with :class:`matplotlib.figure.Figure` and saved through the Agg canvas:
no pyplot, no global figure registry to close, safe inside a Hydra callback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ntk_lab.analysis.collect import format_value, group_label, iter_groups, layer_number
from ntk_lab.analysis.fit import X_WIDTH, PowerLawFit

DPI = 120


PANEL_SIZE = (5.2, 3.9)  # inches per panel


MAX_PANELS = 12  # beyond this a grid is unreadable; the figure says how many it left out


COLORS = matplotlib.colormaps["tab10"].colors


LINESTYLES = ("-", "--", ":", "-.")


WIDTH_COLORMAP = "viridis"


BAND_ALPHA = 0.2


LEGEND_INSIDE_MAX = 4  # longer legends go to the right of the axes, outside the data


LEGEND_INCH_PER_CHAR = 0.068  # "small" font, used to widen the figure for such a legend


MAX_VALUE_TICKS = 8  # up to this many distinct x values are labelled as they are


# Knobs that do not change the network at step 0: init figures pool over them.
TRAINING_KNOBS = ("lr", "steps", "batch_size", "output_scale", "center")


WIDTH_LABEL = "width n (units per hidden layer)"


STEP_LABEL = "training step (gradient-descent updates)"


KAPPA_LABEL = r"kappa $= \|\Theta_t - \Theta_0\|_F \,/\, \|\Theta_0\|_F$ (relative)"


def new_figure(n_panels: int = 1, *, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes on a grid of at most three columns."""
    ncols = min(max(n_panels, 1), 3)
    nrows = math.ceil(max(n_panels, 1) / ncols)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel())
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Figure, path: Path) -> bool:
    """Save as PNG at :data:`DPI` and drop the figure's canvas."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return True


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (text and missing values become NaN)."""
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def mean_band(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min and max of positive finite ``y`` at each ``x`` (over seeds / runs).

    Returns:
        Columns ``x, mean, low, high, n``, sorted by x; empty when nothing is positive.
    """
    data = pd.DataFrame({"x": numeric(frame, x), "y": numeric(frame, y)})
    data = data[np.isfinite(data["x"]) & np.isfinite(data["y"]) & (data["y"] > 0)
                & (data["x"] > 0)]
    if not len(data):
        return pd.DataFrame(columns=["x", "mean", "low", "high", "n"])
    stats = data.groupby("x")["y"].agg(["mean", "min", "max", "count"]).reset_index()
    return stats.rename(columns={"min": "low", "max": "high", "count": "n"})


def draw_band(
    ax: Axes, stats: pd.DataFrame, *, color: Any, label: str, linestyle: str = "-",
    marker: str = "o",
) -> None:
    """The mean as a line with markers and the min–max range as a shaded band."""
    ax.plot(stats["x"], stats["mean"], color=color, linestyle=linestyle, marker=marker,
            markersize=4, label=label)
    if (stats["n"] > 1).any():
        ax.fill_between(stats["x"], stats["low"], stats["high"], color=color,
                        alpha=BAND_ALPHA, linewidth=0)


def reference_line(
    ax: Axes, xs: Sequence[float], anchor: tuple[float, float], exponent: float, label: str,
    linestyle: str = "--",
) -> None:
    """A grey line y = y0 · (x / x0)^exponent over the range of ``xs``."""
    x = np.geomspace(min(xs), max(xs), 50)
    x0, y0 = anchor
    ax.plot(x, y0 * (x / x0) ** exponent, color="0.45", linestyle=linestyle, linewidth=1.2,
            label=label, zorder=1)


def add_legend(fig: Figure, ax: Axes) -> None:
    """A short legend inside the axes; a long one right of the panels, the figure widened."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize="small")
        return
    width, height = fig.get_size_inches()
    extra = max(len(label) for label in labels) * LEGEND_INCH_PER_CHAR + 0.6
    fig.set_size_inches(width + extra, height)
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")


def value_ticks(ax: Axes, values: Sequence[float]) -> None:
    """Label a log x axis at the swept values themselves (64, 128, …) when they are few."""
    values = sorted({float(v) for v in values})
    if len(values) <= MAX_VALUE_TICKS:
        ax.set_xticks(values, labels=[format_value(v) for v in values])
        ax.xaxis.set_minor_formatter(NullFormatter())


def slope_text(fit: PowerLawFit | None) -> str:
    """``: slope −0.52 [−0.56, −0.48]`` for a legend, or nothing without a fit."""
    if fit is None:
        return ""
    if math.isnan(fit.ci_low):
        return f": slope {fit.slope:.2f}"
    return f": slope {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"


def log_axes(ax: Axes, *, x: bool = True, y: bool = True) -> None:
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def style_for(index: int) -> tuple[Any, str]:
    """The color and line style of the ``index``-th line."""
    return COLORS[index % len(COLORS)], LINESTYLES[(index // len(COLORS)) % len(LINESTYLES)]


def limited_panels(
    frame: pd.DataFrame, keys: Sequence[str]
) -> tuple[list[tuple[dict, pd.DataFrame]], int]:
    """The groups to draw as panels (at most :data:`MAX_PANELS`) and how many there are."""
    groups = list(iter_groups(frame, keys))
    return groups[:MAX_PANELS], len(groups)


def panel_title(group: Mapping[str, Any], shown: int, total: int) -> str:
    title = group_label(group)
    return title if shown == total else f"{title} (first {shown} of {total} groups)"


def enough_widths(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and numeric(frame, X_WIDTH).nunique() >= 2


def has_data(frame: pd.DataFrame, column: str) -> bool:
    """The column exists and holds at least one positive finite value."""
    if column not in frame.columns or not len(frame):
        return False
    values = numeric(frame, column)
    return bool((np.isfinite(values) & (values > 0)).any())


def layer_name(column: str, depth: Any) -> str:
    """``layer 1 (input)``, ``layer 3 (readout)`` or ``layer 2 (hidden)``."""
    number = layer_number(column)
    if number == 1:
        return "layer 1 (input)"
    if isinstance(depth, (int, float)) and not isinstance(depth, bool) and number == depth + 1:
        return f"layer {number} (readout)"
    return f"layer {number} (hidden)" if depth is not None else f"layer {number}"
