"""Learning-rate transfer across width (μTransfer; Yang et al. 2022, Tensor Programs V) and depth
(Bordelon et al. 2023; Yang et al. 2023, Tensor Programs VI): a sweep of widths (or depths at a
fixed width) × learning rates × parameterizations (or residual branch scales) × seeds, read as
"where is the best learning rate, and does it move with width (depth)?". Below, "width" stands
for the swept axis and "parameterization" for the compared setting (:func:`axes`).

* The loss after T steps (``train_loss`` at the last checkpoint; a diverged run counts as
  +∞) against the learning rate, per width and parameterization, mean over seeds.
* η*: the grid's best rate refined by the vertex of a parabola through the best grid point and
  its two neighbours in (ln η, ln loss) — clipped to those neighbours; at the edge of the grid
  (or beside a diverged neighbour) the grid point itself, flagged ``at_edge``. Per seed too,
  for the fit.
* The fit ln η* = a + s·ln width per parameterization over the per-seed optima (the lab's
  power-law fit with its bootstrap interval), to set beside the predictions: s = −1 for the
  hidden weights of the standard parameterization with Adam, s = 0 under μP.
* The transfer regret at each width: the loss at the narrowest width's best grid rate divided
  by the loss at this width's own best grid rate (≥ 1; 1 = perfect transfer).
* Beside each width's optimum (its best grid rate): κ, λ_max(Θ/N) on the training set at init
  and at the end (``lambda_max_train``, when recorded), and the per-layer drift.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ntk_lab.analysis.collect import Sweep
from ntk_lab.analysis.figure_style import new_figure, save_figure, style_for
from ntk_lab.analysis.fit import fit_power_law

MIN_RATES = 5
"""Fewest learning rates for a transfer analysis: a parabola needs the best point and two
neighbours, and an optimum at the edge of a shorter grid says little."""
COMPARED = ("parameterization", "branch_scale")
"""The settings a transfer sweep compares, the first that varies: the parameterization across
width, the residual branch scale across depth."""


def axes(sweep: Sweep) -> tuple[str, str]:
    """(the swept axis, the compared setting): ``width`` when ≥ 2 widths, else ``depth``; the
    first of :data:`COMPARED` that varies (else ``parameterization``, one group)."""
    info = sweep.run_info
    x = "width" if "width" in info and info["width"].nunique() >= 2 else "depth"
    group = next((c for c in COMPARED if c in info and info[c].astype(str).nunique() >= 2),
                 COMPARED[0])
    return x, group


def applies(sweep: Sweep) -> bool:
    info = sweep.run_info
    x, _ = axes(sweep)
    return ("lr" in info and info["lr"].nunique() >= MIN_RATES and x in info
            and info[x].nunique() >= 2 and "train_loss" in sweep.metric_columns)


def final_losses(sweep: Sweep) -> pd.DataFrame:
    """One row per run: ``group`` (the compared setting), ``x`` (width or depth), lr, seed,
    status and the final loss (+∞ if the run is not ok)."""
    x, group = axes(sweep)
    last = sweep.runs.sort_values("step").groupby("run_dir").tail(1).set_index("run_dir")
    info = sweep.run_info.set_index("run_dir")
    rows = pd.DataFrame({"group": info[group].astype(str) if group in info else "all",
                         "x": info[x], "lr": info["lr"], "seed": info["seed"],
                         "status": info["status"]}, index=info.index)
    loss = last["train_loss"].reindex(rows.index)
    rows["loss"] = np.where((rows["status"] == "ok") & np.isfinite(loss), loss, np.inf)
    return rows.reset_index()


def optimum(rates: np.ndarray, losses: np.ndarray) -> tuple[float, float, bool]:
    """(η*, the best grid rate, at_edge) for losses (N,) on increasing rates (N,); +∞ allowed.

    The parabola through the best point and its neighbours in (ln η, ln loss); its vertex,
    clipped to the neighbours' span. At the grid's edge, beside a non-finite neighbour, or for
    a parabola that is not convex, the best grid rate itself (``at_edge`` True in the first two
    cases).
    """
    best = int(np.argmin(losses))
    grid = float(rates[best])
    if not np.isfinite(losses[best]):
        return math.nan, math.nan, True
    if best == 0 or best == len(rates) - 1 or not np.isfinite(losses[[best - 1, best + 1]]).all():
        return grid, grid, True
    x = np.log(rates[best - 1: best + 2])
    y = np.log(losses[best - 1: best + 2])
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return grid, grid, False
    vertex = float(np.clip(-b / (2 * a), x[0], x[2]))
    return math.exp(vertex), grid, False


def optima(sweep: Sweep) -> pd.DataFrame:
    """Per group and width: η* of the seed-mean curve (``eta_star``, ``eta_grid``, ``at_edge``),
    the loss there, the regret, and the drift columns at the best grid rate."""
    runs = final_losses(sweep)
    x, compared = axes(sweep)
    ok_rows = sweep.ok_rows()
    rows = []
    for group, members in runs.groupby("group"):
        curves = members.groupby(["x", "lr"])["loss"].mean().unstack("lr").sort_index(axis=1)
        narrowest = None
        for width, curve in curves.iterrows():
            eta_star, grid, edge = optimum(curve.index.to_numpy(float), curve.to_numpy(float))
            if narrowest is None:
                narrowest = grid
            best_loss = curve.get(grid, math.nan)
            transferred = curve.get(narrowest, math.nan)
            row = {compared: group, x: width, "eta_star": eta_star, "eta_grid": grid,
                   "at_edge": edge, "loss_at_optimum": best_loss,
                   "regret": transferred / best_loss if best_loss and np.isfinite(best_loss) else math.nan}
            row.update(_drift_at(ok_rows, (compared, group), (x, width), grid))
            rows.append(row)
    return pd.DataFrame(rows)


def _drift_at(ok_rows: pd.DataFrame, group: tuple, at: tuple, rate: float) -> dict:
    """κ, λ_max at init and end, per-layer drift at one (setting, value), (axis, value) and
    rate, mean over seeds."""
    if group[0] in ok_rows:
        ok_rows = ok_rows[ok_rows[group[0]].astype(str) == group[1]]
    runs = ok_rows[(ok_rows[at[0]] == at[1]) & np.isclose(ok_rows["lr"], rate)]
    if runs.empty:
        return {}
    ordered = runs.sort_values("step")
    first, last = ordered.groupby("run_dir").head(1), ordered.groupby("run_dir").tail(1)
    out = {}
    for column in ("kappa", *[c for c in runs if c.startswith("kappa_layer")]):
        if column in last:
            out[column] = last[column].mean()
    if "lambda_max_train" in runs:
        out["lambda_max_0"] = first["lambda_max_train"].mean()
        out["lambda_max_T"] = last["lambda_max_train"].mean()
    return out


def transfer_fits(sweep: Sweep) -> pd.DataFrame:
    """ln η* against ln width per group, over the per-seed optima (``fit_power_law``)."""
    runs = final_losses(sweep)
    x, compared = axes(sweep)
    rows = []
    for group, members in runs.groupby("group"):
        points = []
        for (width, _seed), curve in members.groupby(["x", "seed"]):
            curve = curve.sort_values("lr")
            eta, _, _ = optimum(curve["lr"].to_numpy(float), curve["loss"].to_numpy(float))
            if np.isfinite(eta):
                points.append((width, eta))
        if len({w for w, _ in points}) < 2:
            continue
        fit = fit_power_law([w for w, _ in points], [e for _, e in points])
        rows.append({"metric": "eta_star", "x": x, compared: group, "slope": fit.slope,
                     "intercept": fit.intercept, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                     "n_points": len(points), "ci_method": fit.ci_method})
    return pd.DataFrame(rows)


def report_lines(sweep: Sweep) -> list[str]:
    lines = []
    x, compared = axes(sweep)
    table = optima(sweep)
    grid = sorted(final_losses(sweep)["lr"].unique())
    for group, rows in table.groupby(compared):
        steps = [grid.index(g) for g in rows["eta_grid"] if g in grid]
        spread = max(steps) - min(steps) if steps else 0
        optima_text = ", ".join(f"{int(getattr(r, x))}: {r.eta_star:.3g}{' (edge)' if r.at_edge else ''}"
                                for r in rows.itertuples())
        lines.append(f"lr transfer ({compared}={group}): η* by {x} {optima_text}; the best grid "
                     f"rate moves by {spread} grid step(s); regret at the largest {x} "
                     f"{rows['regret'].iloc[-1]:.3g}")
    for _, row in transfer_fits(sweep).iterrows():
        lines.append(f"lr transfer ({compared}={row[compared]}): η* ∝ {x}^{row['slope']:.2f} "
                     f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]")
    return lines


def plot_loss_vs_lr(sweep: Sweep, fits, path: Path) -> bool:
    """Tensor Programs V's figure: final loss against the learning rate, one curve per width
    (colour by width), one panel per parameterization; diverged rates drawn as × on top."""
    if not applies(sweep):
        return False
    runs = final_losses(sweep)
    x, compared = axes(sweep)
    groups = sorted(runs["group"].unique())
    fig, panels = new_figure(len(groups), sharey=True)
    finite = runs.loc[np.isfinite(runs["loss"]), "loss"]
    top = finite.max() * 2 if len(finite) else 1.0
    for ax, group in zip(panels, groups):
        members = runs[runs["group"] == group]
        for index, (width, by_width) in enumerate(members.groupby("x")):
            color, _ = style_for(index)
            curve = by_width.groupby("lr")["loss"].mean()
            shown = curve[np.isfinite(curve)]
            ax.plot(shown.index, shown.values, "o-", color=color, ms=3, label=f"{x} {width}")
            lost = curve.index[~np.isfinite(curve.values)]
            ax.plot(lost, [top * 1.4**index] * len(lost), "x", color=color)  # a row per width
        ax.set(xscale="log", yscale="log", xlabel="learning rate", title=f"{compared}={group}")
    panels[0].set_ylabel("train loss after the last step (× = diverged)")
    panels[0].legend(fontsize=7)
    save_figure(fig, path)
    return True


def plot_optimum_vs_width(sweep: Sweep, fits, path: Path) -> bool:
    """η* against width per parameterization, the transfer regret, and beside each optimum κ and
    λ_max(Θ/N) at init (dashed) and at the end (solid)."""
    if not applies(sweep):
        return False
    x, compared = axes(sweep)
    table = optima(sweep)
    fitted = transfer_fits(sweep)
    fig, (eta_ax, regret_ax, kappa_ax, lambda_ax) = new_figure(4)
    for index, (group, rows) in enumerate(table.groupby(compared)):
        color, _ = style_for(index)
        fit = fitted[fitted[compared] == group] if len(fitted) else fitted
        label = f"{group}" + (f": slope {fit['slope'].iloc[0]:.2f}" if len(fit) else "")
        eta_ax.plot(rows[x], rows["eta_star"], "o-", color=color, label=label)
        eta_ax.plot(rows[x], rows["eta_grid"], "s", color=color, mfc="none", ms=7)
        regret_ax.plot(rows[x], rows["regret"], "o-", color=color, label=group)
        if "kappa" in rows:
            kappa_ax.plot(rows[x], rows["kappa"], "o-", color=color, label=group)
        if "lambda_max_0" in rows:
            lambda_ax.plot(rows[x], rows["lambda_max_0"], "o--", color=color, label=f"{group}, init")
            lambda_ax.plot(rows[x], rows["lambda_max_T"], "o-", color=color, label=f"{group}, end")
    eta_ax.set(xscale="log", yscale="log", xlabel=x, ylabel="η* (○ refined, □ grid)")
    regret_ax.set(xscale="log", xlabel=x, ylabel=f"loss at the smallest {x}'s η* / own optimum")
    kappa_ax.set(xscale="log", yscale="log", xlabel=x, ylabel="κ at η* (end of training)")
    lambda_ax.set(xscale="log", yscale="log", xlabel=x, ylabel="λ_max(Θ/N) at η*, training set")
    for ax in (eta_ax, regret_ax, kappa_ax, lambda_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    save_figure(fig, path)
    return True
