"""The catapult analysis: a sweep of widths × learning rates in units of η_crit
(``train.lr_unit=crit``) read as Lewkowycz et al. 2020's three phases.

* η_max/η_crit per width: the largest rate on the grid at which every seed trained without
  diverging, with the next grid rate (the first that diverged) as its upper bound.
* κ against width in each phase: *lazy* (η/η_crit ≤ :data:`LAZY_MAX`) and *catapult*
  (1 < η/η_crit ≤ that width's η_max/η_crit). The runs of one phase span several rates, whose
  κ differ by a factor the width does not change, so the fit has one intercept per rate and one
  slope: ln κ = a_η + s·ln n (ordinary least squares on the per-rate-centred logs; the interval
  is s ± t·SE with the degrees of freedom left after the intercepts).
* The catapult's signature per non-diverged run above η_crit: the training loss rises above its
  initial value and then falls below it, and the final η·λ_max(Θ_T/N) (``eta_lambda``) is < 2.

Figures: the phase diagram (final κ against η/η_crit, one line per width) and the training
curves (loss and η·λ_max against step) at a few rates on both sides of η_crit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from scipy import stats

from ntk_lab.analysis.collect import Sweep
from ntk_lab.analysis.figure_style import new_figure, save_figure, style_for

LAZY_MAX = 0.5
"""η/η_crit at or below which a run is in the lazy phase (the stability edge is 1; half of it
keeps every kernel mode contracting by at least a factor 2 per unit time)."""
STABLE_ETA_LAMBDA = 2.0
"""η·λ_max(Θ/N) below which gradient descent on the linearized model is stable."""
CONFIDENCE = 0.95
PHASE_FIT_COLUMNS = ("metric", "x", "phase", "lr_values", "slope", "intercept", "ci_low",
                     "ci_high", "n_runs", "n_widths", "ci_method")


def applies(sweep: Sweep) -> bool:
    """A catapult sweep: learning rates in units of η_crit, ≥ 2 rates and ≥ 2 widths."""
    info = sweep.run_info
    return ("eta_lambda" in sweep.metric_columns and "lr_unit" in info
            and (info["lr_unit"] == "crit").any() and info["lr"].nunique() >= 2
            and info["width"].nunique() >= 2)


def eta_max_table(sweep: Sweep) -> pd.DataFrame:
    """Per width: ``eta_max`` (the largest η/η_crit at which every run of that width and rate
    ended ok), ``first_diverged`` (the next grid rate, or NaN if none diverged), the number of
    rates and of diverged runs."""
    info = sweep.run_info
    rows = []
    for width, runs in info.groupby("width"):
        by_rate = runs.groupby("lr")["status"].apply(lambda s: bool((s == "ok").all()))
        rates = sorted(by_rate.index)
        stable = [r for r in rates if by_rate[r]]
        eta_max = max((r for r in stable if all(by_rate[q] for q in rates if q <= r)), default=math.nan)
        above = [r for r in rates if r > eta_max] if not math.isnan(eta_max) else rates
        rows.append({"width": width, "eta_max": eta_max,
                     "first_diverged": above[0] if above else math.nan,
                     "n_rates": len(rates), "n_diverged": int((runs["status"] == "diverged").sum())})
    return pd.DataFrame(rows)


def phase_fits(sweep: Sweep) -> pd.DataFrame:
    """κ (final) against width in the lazy and the catapult phase: one slope, one intercept per
    rate (module docstring)."""
    final = _final_ok(sweep)
    limits = eta_max_table(sweep).set_index("width")["eta_max"]
    final = final[final["kappa"] > 0]
    lazy = final[final["lr"] <= LAZY_MAX]
    catapult = final[(final["lr"] > 1.0) & (final["lr"] <= final["width"].map(limits))]
    rows = []
    for phase, points in (("lazy", lazy), ("catapult", catapult)):
        fit = _fixed_effects_slope(points)
        if fit is not None:
            rows.append({"metric": "kappa", "x": "width", "phase": phase,
                         "lr_values": " ".join(f"{v:g}" for v in sorted(points["lr"].unique())),
                         **fit})
    return pd.DataFrame(rows, columns=list(PHASE_FIT_COLUMNS))


def catapult_signatures(sweep: Sweep) -> pd.DataFrame:
    """Per ok run with η/η_crit > 1: whether its training loss rose above the initial value and
    later fell below it (``spiked_and_recovered``), and its final ``eta_lambda``."""
    rows = []
    ok = sweep.ok_rows()
    for run_dir, run in ok[ok["lr"] > 1.0].groupby("run_dir"):
        run = run.sort_values("step")
        loss = run["train_loss"].to_numpy()
        peak = int(np.argmax(loss))
        rows.append({"run_dir": run_dir, "width": run["width"].iloc[0], "lr": run["lr"].iloc[0],
                     "seed": run["seed"].iloc[0], "loss_0": loss[0], "loss_peak": loss[peak],
                     "loss_final": loss[-1],
                     "spiked_and_recovered": bool(loss[peak] > loss[0] and loss[peak:].min() < loss[0]),
                     "eta_lambda_final": run["eta_lambda"].iloc[-1]})
    return pd.DataFrame(rows)


def report_lines(sweep: Sweep) -> list[str]:
    """What the report says about the phases (its notes section)."""
    lines = []
    for row in eta_max_table(sweep).itertuples():
        upper = (f"; {row.first_diverged:g} diverged" if not math.isnan(row.first_diverged)
                 else "; no rate diverged")
        lines.append(f"catapult: width {row.width}: η_max/η_crit = {row.eta_max:g} (the largest "
                     f"grid rate with every seed ok{upper}); Lewkowycz et al. 2020: ≈ 2 for a wide "
                     f"linear two-layer net, ≈ 6 (12/λ) for their ReLU nets")
    for row in phase_fits(sweep).itertuples():
        lines.append(f"catapult: κ ∝ width^{row.slope:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}] in "
                     f"the {row.phase} phase (η/η_crit = {row.lr_values}; {row.n_runs} runs)")
    signs = catapult_signatures(sweep)
    if len(signs):
        lines.append(f"catapult: above η_crit, {int(signs['spiked_and_recovered'].sum())} of "
                     f"{len(signs)} ok runs spiked above their initial loss and recovered below "
                     f"it; final η·λ_max(Θ_T/N) < {STABLE_ETA_LAMBDA:g} in "
                     f"{int((signs['eta_lambda_final'] < STABLE_ETA_LAMBDA).sum())} of them "
                     f"(max {signs['eta_lambda_final'].max():.3g})")
    return lines


def plot_phase_diagram(sweep: Sweep, fits, path: Path) -> bool:
    """Final κ against η/η_crit, mean over ok seeds, one line per width; diverged rates as × on
    the top edge; the lazy region shaded and η_crit marked."""
    if not applies(sweep):
        return False
    final = _final_ok(sweep)
    widths = sorted(sweep.run_info["width"].unique())
    fig, (ax,) = new_figure(1)
    top = final["kappa"].max() if len(final) else 1.0
    info = sweep.run_info
    for index, width in enumerate(widths):
        color, _ = style_for(index)
        mean = final[final["width"] == width].groupby("lr")["kappa"].mean()
        ax.plot(mean.index, mean.values, "o-", color=color, label=f"width {width}")
        diverged = info[(info["width"] == width) & (info["status"] == "diverged")]["lr"].unique()
        # one row of × per width above the curves, so that widths diverging at one rate all show
        ax.plot(diverged, [top * 2.0 * 1.4**index] * len(diverged), "x", color=color, ms=8)
    ax.axvspan(final["lr"].min() if len(final) else LAZY_MAX / 2, LAZY_MAX, color="0.9", zorder=0,
               label=f"lazy (η/η_crit ≤ {LAZY_MAX:g})")
    ax.axvline(1.0, color="0.4", ls="--", lw=1, label="η_crit")
    ax.set(xscale="log", yscale="log", xlabel="η / η_crit", ylabel="final κ",
           title="Catapult phase diagram (× = diverged)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_training_curves(sweep: Sweep, fits, path: Path) -> bool:
    """Training loss and η·λ_max(Θ_t/N) against step at the widest width (first seed), for up to
    five rates spread over the grid's ok rates."""
    if not applies(sweep):
        return False
    ok = sweep.ok_rows()
    widest = ok[ok["width"] == ok["width"].max()]
    widest = widest[widest["seed"] == widest["seed"].min()]
    rates = sorted(widest["lr"].unique())
    if not rates:
        return False
    shown = sorted({rates[int(round(i))] for i in np.linspace(0, len(rates) - 1, min(5, len(rates)))})
    fig, (loss_ax, eta_ax) = new_figure(2)
    cmap = colormaps["coolwarm"]
    for i, rate in enumerate(shown):
        run = widest[widest["lr"] == rate].sort_values("step")
        color = cmap(i / max(len(shown) - 1, 1))
        steps = run["step"].clip(lower=0.5)  # step 0 on a log axis
        loss_ax.plot(steps, run["train_loss"], "o-", ms=3, color=color, label=f"η/η_crit = {rate:g}")
        eta_ax.plot(steps, run["eta_lambda"], "o-", ms=3, color=color)
    eta_ax.axhline(STABLE_ETA_LAMBDA, color="0.3", ls="--", lw=1, label="η·λ_max = 2")
    loss_ax.set(xscale="log", yscale="log", xlabel="step (0 drawn at 0.5)", ylabel="train loss",
                title=f"width {int(widest['width'].iloc[0])}")
    eta_ax.set(xscale="log", yscale="log", xlabel="step (0 drawn at 0.5)",
               ylabel="η·λ_max(Θ_t/N)", title="the catapult drives η·λ_max below 2")
    loss_ax.legend(fontsize=8)
    eta_ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def _final_ok(sweep: Sweep) -> pd.DataFrame:
    """The last checkpoint row of every ok run."""
    ok = sweep.ok_rows()
    return ok.sort_values("step").groupby("run_dir").tail(1)


def _fixed_effects_slope(points: pd.DataFrame) -> Optional[dict]:
    """ln κ = a_η + s·ln width by OLS with one intercept per rate; None with < 2 widths or no
    degrees of freedom left. ``intercept`` is the mean of the per-rate intercepts."""
    if points.empty or points["width"].nunique() < 2:
        return None
    x, y = np.log(points["width"].to_numpy(float)), np.log(points["kappa"].to_numpy(float))
    groups = points["lr"].to_numpy()
    xc, yc = x.copy(), y.copy()
    for g in np.unique(groups):
        at = groups == g
        xc[at] -= x[at].mean()
        yc[at] -= y[at].mean()
    sxx = float((xc * xc).sum())
    dof = len(x) - len(np.unique(groups)) - 1
    if sxx == 0.0 or dof < 1:
        return None
    slope = float((xc * yc).sum() / sxx)
    residual = yc - slope * xc
    se = math.sqrt(float((residual * residual).sum()) / dof / sxx)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se
    intercepts = [y[groups == g].mean() - slope * x[groups == g].mean() for g in np.unique(groups)]
    return {"slope": slope, "intercept": float(np.mean(intercepts)), "ci_low": slope - half,
            "ci_high": slope + half, "n_runs": len(x), "n_widths": int(points["width"].nunique()),
            "ci_method": "OLS, one intercept per rate"}
