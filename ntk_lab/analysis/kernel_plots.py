"""Kernel profiles on the unit circle: the analogue of Jacot et al. 2018, Fig. 1.

For the ``circle`` data set the probe points are x(γ) = (cos γ, sin γ) and probe 0 is
x0 = (1, 0). The figure draws Θ(x0, x(γ)) for γ ∈ [−π, π), one panel per width, at the
first checkpoint (step 0) and the last one, mean over seeds with a min–max band, with Θ_∞
dashed: as width grows both curves close in on Θ_∞.

Kernels are read with :func:`ntk_lab.records.load_kernels`; a run whose ``kernels.pt`` is
missing, unreadable or lacks ``probe_angle`` is left out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntk_lab.analysis.collect import Sweep, format_value, iter_groups
from ntk_lab.analysis.fit import FitTable
from ntk_lab.analysis.figure_style import BAND_ALPHA, new_figure, save_figure
from ntk_lab.records import STATUS_OK, load_kernels

log = logging.getLogger(__name__)

CIRCLE_DATASET = "circle"
TWO_PI = 2 * math.pi
INIT_COLOR, TRAINED_COLOR = "tab:blue", "tab:orange"
# Config values that name the configuration in the figure title.
TITLE_KEYS = ("depth", "activation", "parameterization", "lr", "steps")


@dataclass
class KernelProfile:
    """Θ(x0, x(γ)) of one run on its probe angles.

    Attributes:
        angles: (N,) γ wrapped to [−π, π), sorted.
        init, final: (N,) the empirical NTK row of x0 at the first and last checkpoint.
        limit: (N,) the same row of Θ_∞.
        init_step, final_step: the checkpoint steps of ``init`` and ``final``.
    """

    angles: np.ndarray
    init: np.ndarray
    final: np.ndarray
    limit: np.ndarray
    init_step: int
    final_step: int


def kernel_profile(kernels: dict[str, Any]) -> KernelProfile:
    """The x0 row of Θ at the first and last checkpoint and of Θ_∞, ordered by angle.

    Args:
        kernels: a ``kernels.pt`` dict with ``probe_angle`` (N,), ``theta`` (K, N, N),
            ``steps`` (K,) and ``theta_inf`` (N, N).

    Raises:
        KeyError, ValueError: a key is missing or a shape does not match.
    """
    angles = _array(kernels["probe_angle"]).reshape(-1)
    theta, limit = kernels["theta"], kernels["theta_inf"]  # read only the x0 rows (a memory-mapped file)
    steps = _array(kernels["steps"]).reshape(-1)
    n = len(angles)
    if theta.ndim != 3 or tuple(theta.shape[1:]) != (n, n) or tuple(limit.shape) != (n, n):
        raise ValueError(f"kernel shapes {theta.shape}, {limit.shape} do not fit {n} probes")
    if len(steps) != len(theta) or not len(steps):
        raise ValueError(f"{len(steps)} steps for {len(theta)} kernels")
    wrapped = (angles + math.pi) % TWO_PI - math.pi
    x0 = int(np.argmin(np.abs(wrapped)))  # the probe at γ = 0, x0 = (1, 0)
    order = np.argsort(wrapped)
    return KernelProfile(wrapped[order], _array(theta[0, x0])[order], _array(theta[-1, x0])[order],
                         _array(limit[x0])[order], int(steps[0]), int(steps[-1]))


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly half precision
        value = value.detach().double().cpu().numpy()
    return np.asarray(value, dtype=float)


def plot_jacot_fig1(sweep: Sweep, fits: FitTable, path: Path) -> bool:
    """Θ(x0, x(γ)) vs γ, one panel per width, for the largest circle configuration."""
    info = sweep.run_info
    if not len(info) or "dataset" not in info:
        return False
    circle = info[(info["status"] == STATUS_OK) & (info["dataset"] == CIRCLE_DATASET)]
    groups = sorted(iter_groups(circle, sweep.group_keys), key=lambda item: -len(item[1]))
    for _, members in groups:
        profiles = _load_profiles(sweep.root, members)
        if profiles:
            return _draw(profiles, members.iloc[0], path)
    return False


def _load_profiles(root: Path, members: pd.DataFrame) -> dict[float, list[KernelProfile]]:
    """Profiles of the runs in ``members`` by width; unreadable runs are logged and skipped."""
    by_width: dict[float, list[KernelProfile]] = {}
    for _, run in members.iterrows():
        try:
            width = float(run["width"])
            profile = kernel_profile(load_kernels(root / run["run_dir"]))
        except Exception as err:  # one bad kernels.pt must not stop the figure
            log.info("no kernel profile for %s: %s: %s", run["run_dir"],
                     err.__class__.__name__, err)
            continue
        if math.isfinite(width):
            by_width.setdefault(width, []).append(profile)
    return by_width


def _on_grid(profiles: list[KernelProfile], grid: np.ndarray, field: str) -> np.ndarray:
    """(runs, len(grid)) values of one curve, interpolated periodically onto ``grid``.

    The grid may extend past π: the kernel is periodic in γ, so the curve closes."""
    return np.stack([np.interp(grid, p.angles, getattr(p, field), period=TWO_PI)
                     for p in profiles])


def _draw(by_width: dict[float, list[KernelProfile]], first_run: pd.Series, path: Path) -> bool:
    widths = sorted(by_width)
    angles = by_width[widths[0]][0].angles
    grid = np.append(angles, angles[0] + TWO_PI)  # close the curve at γ = π
    fig, axes = new_figure(len(widths), sharey=True)
    for ax, width in zip(axes, widths):
        profiles = by_width[width]
        trained = profiles[0].final_step > profiles[0].init_step
        curves = [("init", INIT_COLOR, f"init (step {profiles[0].init_step})")]
        if trained:
            curves.append(("final", TRAINED_COLOR,
                           f"after training (step {profiles[0].final_step})"))
        for field, color, label in curves:
            values = _on_grid(profiles, grid, field)
            ax.plot(grid, values.mean(axis=0), color=color, label=label)
            if len(profiles) > 1:
                ax.fill_between(grid, values.min(axis=0), values.max(axis=0), color=color,
                                alpha=BAND_ALPHA, linewidth=0)
        limit = np.interp(grid, profiles[0].angles, profiles[0].limit, period=TWO_PI)
        ax.plot(grid, limit, color="black", linestyle="--", label=r"$\Theta_\infty$")
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi],
                      labels=["−π", "−π/2", "0", "π/2", "π"])
        ax.set_xlim(-math.pi, math.pi)
        ax.set_xlabel(r"angle $\gamma$ of $x(\gamma) = (\cos\gamma, \sin\gamma)$ (rad)")
        ax.set_ylabel(r"$\Theta(x_0, x(\gamma))$")
        seeds = f"{len(profiles)} seed{'s' if len(profiles) > 1 else ''}"
        ax.set_title(f"width {format_value(width)} ({seeds}, min–max band)", fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    config = ", ".join(f"{k}={format_value(first_run[k])}" for k in TITLE_KEYS
                       if k in first_run.index)
    fig.suptitle("Empirical NTK on the unit circle vs $\\Theta_\\infty$ "
                 f"(Jacot et al. 2018, Fig. 1)\n{config}",
                 fontsize="medium")
    return save_figure(fig, path)
