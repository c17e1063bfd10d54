"""Figure of the depth-over-width study: the moment ratio E[Θ²]/E[Θ]² of the NTK diagonal at
initialization against β = L/n, one line per width (Hanin & Nica 2019).

Takes the tables :mod:`ntk_lab.fluctuations` writes (fluctuations.csv and its fits), draws
only measured values, and saves through the Agg canvas like :mod:`ntk_lab.analysis.plots`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ntk_lab.analysis.figure_style import add_legend, new_figure, save_figure, style_for

BETA_LABEL = r"$\beta = L/n$ (hidden layers / width)"
HANIN_NICA_RATE = 5.0  # E[Θ²]/E[Θ]² ≃ exp(5β) for ReLU (Hanin & Nica 2019, Thm. 1)


def plot_moment_ratio_vs_beta(table: pd.DataFrame, fits: pd.DataFrame, path: Path) -> bool:
    """Left: moment ratio vs β per width (log y, 95 % bootstrap bars), the 1/n recursion's
    prediction 1 + V_Θ/(nΘ_∞²) (×), the fitted exp(a + cβ) and Hanin & Nica's exp(5β). Right: mean Θ(x,x) over seeds / Θ_∞(x,x) vs β.

    Args:
        table: fluctuations.csv (``width, depth, beta, moment_ratio, ci_low, ci_high,
            mean_theta, mean_theta_se, theta_inf``).
        fits: the rate fits (``scope, rate, intercept, ci_low, ci_high``).
        path: the PNG to write.

    Returns:
        False (nothing written) without at least one row.
    """
    if not len(table):
        return False
    fig, (ax, ax_mean) = new_figure(2)
    for i, (width, rows) in enumerate(table.sort_values("beta").groupby("width")):
        color, _ = style_for(i)
        beta = rows["beta"].to_numpy(float)
        ratio = rows["moment_ratio"].to_numpy(float)
        errors = np.stack([ratio - rows["ci_low"].to_numpy(float),
                           rows["ci_high"].to_numpy(float) - ratio])
        ax.errorbar(beta, ratio, yerr=errors, color=color, marker="o", markersize=4,
                    capsize=2, label=f"width {width}")
        if "predicted_ratio" in rows and np.isfinite(rows["predicted_ratio"]).any():
            ax.plot(beta, rows["predicted_ratio"].to_numpy(float), color=color, linestyle="none",
                    marker="x", markersize=6, label=f"1/n theory, width {width}")
        theta_inf = rows["theta_inf"].to_numpy(float)
        ax_mean.errorbar(beta, rows["mean_theta"].to_numpy(float) / theta_inf,
                         yerr=2 * rows["mean_theta_se"].to_numpy(float) / theta_inf, color=color,
                         marker="o", markersize=4, capsize=2, label=f"width {width}")
    grid = np.linspace(0.0, float(table["beta"].max()), 100)
    overall = fits[fits["scope"] == "all"]
    if len(overall) and np.isfinite(overall["rate"].iloc[0]):
        fit = overall.iloc[0]
        ax.plot(grid, np.exp(fit["intercept"] + fit["rate"] * grid), color="0.3", linestyle="--",
                label=f"fit exp({fit['intercept']:.2f} + {fit['rate']:.2f}β), "
                      f"rate CI [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]")
    ax.plot(grid, np.exp(HANIN_NICA_RATE * grid), color="0.55", linestyle=":",
            label="Hanin & Nica exp(5β)")
    ax.set_yscale("log")
    ax.set_xlabel(BETA_LABEL)
    ax.set_ylabel(r"$E[\Theta(x,x)^2] / E[\Theta(x,x)]^2$ over seeds")
    ax.set_title("NTK diagonal fluctuations at init (ReLU)")
    ax.grid(True, which="major", alpha=0.3)
    add_legend(fig, ax)
    ax_mean.axhline(1.0, color="0.55", linestyle=":")
    ax_mean.set_xlabel(BETA_LABEL)
    ax_mean.set_ylabel(r"mean $\Theta(x,x)$ over seeds $/\ \Theta_\infty(x,x)$ (± 2 s.e.)")
    ax_mean.set_title("Mean of the NTK diagonal against the infinite-width value")
    ax_mean.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)
