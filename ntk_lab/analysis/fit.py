"""Fit scaling exponents: log y = intercept + slope · log x, with a confidence interval.

Which metrics are fitted (docs/conventions.md, *Expected physics*):

- ``ntk_err_inf`` at step 0 against width (theory: slope −1/2);
- ``kappa``, ``param_change``, ``jac_change``, every ``param_change_layer<l>`` and, when
  measured, ``lin_gap``, ``inf_gap``, ``kappa_hessian`` at each run's last checkpoint
  against width;
- ``kappa`` at the last checkpoint against the output scale α (α ≥ 1 only; theory: −1),
  when α is swept;
- ``ntk_err_inf`` at step 0 and ``kappa`` at the last checkpoint against depth, one fit per
  width (and per model, ...), when depth is swept (Hanin & Nica 2019: at finite width both
  grow with depth/width for a plain network);
- the kernel-geometry metrics of :mod:`ntk_lab.analysis.geometry_fits` at the last
  checkpoint against width.

Each fit uses the ok runs of one group of the other swept knobs. The confidence interval is a
percentile bootstrap that resamples seeds within each width when every width has at least
two runs (expanded for small seed counts, see :func:`_bootstrap_interval`), otherwise the OLS
standard error with Student's t quantile. Logs are natural, so the fitted law is
y ≈ exp(intercept) · x^slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ntk_lab.analysis.collect import (
    Sweep, group_label, iter_groups, layer_columns, same_value,
)
from ntk_lab.analysis.geometry_fits import geometry_final_metrics, geometry_init_metrics

CONFIDENCE = 0.95
# The expanded interval reads percentiles down to ~0.5 % (two seeds per width); 4000
# resamples leave ~20 slopes beyond them. The seed is fixed so fits.csv is identical on
# every rerun.
N_BOOTSTRAP = 4000
BOOTSTRAP_SEED = 0

CI_BOOTSTRAP = "bootstrap"
CI_OLS = "ols-t"
CI_NONE = "none"

INIT_METRICS = ("ntk_err_inf",)
FINAL_METRICS = ("kappa", "param_change", "jac_change")
OPTIONAL_FINAL_METRICS = ("lin_gap", "inf_gap", "kappa_hessian")
OUTPUT_SCALE_METRICS = ("kappa",)
DEPTH_INIT_METRICS = ("ntk_err_inf",)
DEPTH_FINAL_METRICS = ("kappa",)
# Chizat, Oyallon & Bach's 1/α law describes the lazy regime α ≥ 1.
MIN_OUTPUT_SCALE = 1.0

X_WIDTH = "width"
X_OUTPUT_SCALE = "output_scale"
X_DEPTH = "depth"
AT_INIT = "init"
AT_FINAL = "final"

HEAD_COLUMNS = ("metric", "step", "x")
TAIL_COLUMNS = ("slope", "intercept", "ci_low", "ci_high", "n_runs", "n_widths", "ci_method")


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted y ≈ exp(intercept) · x^slope.

    Attributes:
        slope, intercept: the OLS line through (ln x, ln y).
        ci_low, ci_high: the confidence interval of the slope (NaN with ``ci_method`` none).
        n_points: points fitted (runs); n_x: distinct x values.
        ci_method: ``bootstrap``, ``ols-t`` or ``none`` (two points: no interval).
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    n_points: int
    n_x: int
    ci_method: str

    def contains(self, value: float) -> bool:
        """True when ``value`` lies in the confidence interval."""
        return bool(self.ci_low <= value <= self.ci_high)


def fit_power_law(
    x: Sequence[float],
    y: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> PowerLawFit:
    """Fit ln y = intercept + slope · ln x by least squares, with a CI on the slope.

    Args:
        x: (n,) positive abscissae (widths); repeated values are replicates (seeds).
        y: (n,) positive values.
        confidence: coverage of the interval.
        n_bootstrap: bootstrap resamples, used when every x has at least two points: the
            points of each x are resampled with replacement, the line refitted, and the
            interval read from the percentiles of the refitted slopes.
        seed: the bootstrap's random seed.

    Returns:
        The fit; with one point per x the interval is slope ± t_{n−2} · SE(slope), and with
        only two points there is no interval.

    Raises:
        ValueError: fewer than two distinct x, or a non-positive or non-finite value.
    """
    lx, ly = _log_points(x, y)
    slope, intercept = _ols_line(lx, ly)
    _, counts = np.unique(lx, return_counts=True)
    if counts.min() >= 2:
        low, high = _bootstrap_interval(lx, ly, confidence, n_bootstrap, seed)
        method = CI_BOOTSTRAP
    elif len(lx) >= 3:
        low, high = _t_interval(lx, ly, slope, intercept, confidence)
        method = CI_OLS
    else:
        low, high, method = math.nan, math.nan, CI_NONE
    return PowerLawFit(slope, intercept, low, high, len(lx), len(counts), method)


def _log_points(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x) & (x > 0)) and np.all(np.isfinite(y) & (y > 0))):
        raise ValueError("a power-law fit needs finite positive x and y")
    if len(np.unique(x)) < 2:
        raise ValueError("a power-law fit needs at least two distinct x values")
    return np.log(x), np.log(y)


def _ols_line(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    xc = lx - lx.mean()
    slope = float(xc @ (ly - ly.mean()) / (xc @ xc))
    return slope, float(ly.mean() - slope * lx.mean())


def _t_interval(
    lx: np.ndarray, ly: np.ndarray, slope: float, intercept: float, confidence: float
) -> tuple[float, float]:
    dof = len(lx) - 2
    residuals = ly - (intercept + slope * lx)
    xc = lx - lx.mean()
    stderr = math.sqrt(float(residuals @ residuals) / dof / float(xc @ xc))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    return slope - half, slope + half


def _bootstrap_interval(
    lx: np.ndarray, ly: np.ndarray, confidence: float, n_bootstrap: int, seed: int
) -> tuple[float, float]:
    """Expanded percentile interval of slopes refitted on seeds resampled within each width.

    Two small-sample corrections (Hesterberg 2015, "What teachers should know about the
    bootstrap", §4.3), without which a nominal 95 % interval from three seeds per width
    covers the true slope only ~85 % of the time:

    - the seeds of a width are resampled as their mean plus deviations inflated by
      √(k/(k−1)) (k seeds), undoing the (k−1)/k shrinkage of the plug-in variance;
    - the percentiles are read at Φ(∓t_q) instead of (1 ∓ confidence)/2, where t_q is
      Student's quantile with the Welch–Satterthwaite degrees of freedom of
      :func:`_welch_dof`, so the interval also carries the uncertainty of the seed-to-seed
      variance itself.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for value in np.unique(lx):
        replicates = ly[lx == value]
        k = len(replicates)
        centre = replicates.mean()
        deviations = (replicates - centre) * math.sqrt(k / (k - 1))
        picks = rng.integers(0, k, size=(n_bootstrap, k))
        ys.append(centre + deviations[picks])
        xs.append(np.full(k, value))
    x_all, y_all = np.concatenate(xs), np.concatenate(ys, axis=1)  # (n,), (B, n)
    xc = x_all - x_all.mean()
    slopes = (y_all - y_all.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    dof = _welch_dof(lx, ly)
    tail = float(stats.norm.cdf(-stats.t.ppf(0.5 + confidence / 2, dof)))
    low, high = np.quantile(slopes, [tail, 1 - tail])
    return float(low), float(high)


def _welch_dof(lx: np.ndarray, ly: np.ndarray) -> float:
    """Welch–Satterthwaite degrees of freedom of the slope's variance estimate.

    Var(slope) ∝ Σ_w a_w s_w² with a_w = Σ_{i∈w} (ln x_i − mean)² and s_w² the seed variance
    at width w (k_w − 1 degrees of freedom): the extreme widths weigh most, so the effective
    count is below n − (number of widths).
    """
    xc = lx - lx.mean()
    terms, spread = [], []
    for value in np.unique(lx):
        at = lx == value
        k = int(at.sum())
        term = float(xc[at] @ xc[at]) * float(np.var(ly[at], ddof=1))
        terms.append(term)
        spread.append(term * term / (k - 1))
    total, denominator = sum(terms), sum(spread)
    return total * total / denominator if denominator > 0 else float(len(lx) - len(terms))


@dataclass(frozen=True)
class FitSpec:
    """One scaling law to fit: ``metric`` at ``at`` (init or final) against ``x``."""

    metric: str
    at: str
    x: str


@dataclass
class FitTable:
    """Every fit of a sweep.

    Attributes:
        table: fits.csv as a DataFrame (columns ``metric, step, x, <group keys>, slope,
            intercept, ci_low, ci_high, n_runs, n_widths, ci_method``; ``n_widths`` counts
            the distinct x values, which are output scales for ``x == output_scale``).
        notes: why a group or some values were left out.
        entries: ``(spec, group, fit)`` for each row, for lookups by the figures.
    """

    table: pd.DataFrame
    notes: list[str]
    entries: list[tuple[FitSpec, dict, PowerLawFit]]

    def lookup(self, metric: str, x: str, group: Mapping[str, Any]) -> PowerLawFit | None:
        """The fit of ``metric`` against ``x`` for exactly this group, if there is one."""
        for spec, fit_group, fit in self.entries:
            if spec.metric != metric or spec.x != x or set(fit_group) != set(group):
                continue
            if all(same_value(fit_group[k], group[k]) for k in fit_group):
                return fit
        return None


def fit_specs(sweep: Sweep) -> list[FitSpec]:
    """The fits this sweep's columns and knobs allow (see the module docstring)."""
    columns = set(sweep.metric_columns)
    final = [*FINAL_METRICS, *layer_columns(sweep.metric_columns), *OPTIONAL_FINAL_METRICS,
             *geometry_final_metrics(sweep.metric_columns)]
    specs = [FitSpec(m, AT_INIT, X_WIDTH)
             for m in [*INIT_METRICS, *geometry_init_metrics(sweep.metric_columns)] if m in columns]
    specs += [FitSpec(m, AT_FINAL, X_WIDTH) for m in final if m in columns]
    if X_OUTPUT_SCALE in sweep.knobs:
        specs += [FitSpec(m, AT_FINAL, X_OUTPUT_SCALE) for m in OUTPUT_SCALE_METRICS
                  if m in columns]
    if X_DEPTH in sweep.knobs:  # groups by width and the other knobs (e.g. model=mlp|resmlp)
        specs += [FitSpec(m, AT_INIT, X_DEPTH) for m in DEPTH_INIT_METRICS if m in columns]
        specs += [FitSpec(m, AT_FINAL, X_DEPTH) for m in DEPTH_FINAL_METRICS if m in columns]
    return specs


def fit_group_keys(sweep: Sweep, x: str) -> list[str]:
    """The knobs that split runs into groups for a fit against ``x``."""
    if x == X_WIDTH:
        return sweep.group_keys
    keys = [k for k in sweep.group_keys if k != x]
    return keys + ([X_WIDTH] if len(sweep.values(X_WIDTH)) > 1 else [])


def fit_sweep(sweep: Sweep) -> FitTable:
    """Fit every scaling law of :func:`fit_specs` in every group; only ok runs enter."""
    notes: list[str] = []
    entries: list[tuple[FitSpec, dict, PowerLawFit]] = []
    rows: list[dict] = []
    for spec in fit_specs(sweep):
        if not _enough_x(sweep, spec.x, notes):
            continue
        points = sweep.at_init() if spec.at == AT_INIT else sweep.at_final()
        if not len(points):
            notes.append(f"{spec.metric}: no ok run has a {_step_words(spec.at)}; not fitted")
            continue
        for group, members in iter_groups(points, fit_group_keys(sweep, spec.x)):
            result = _fit_group(spec, group, members, notes)
            if result is not None:
                row, fit = result
                rows.append(row)
                entries.append((spec, group, fit))
    table = pd.DataFrame(rows, columns=_table_columns(sweep, entries))
    return FitTable(table, list(dict.fromkeys(notes)), entries)


def _enough_x(sweep: Sweep, x: str, notes: list[str]) -> bool:
    values = [v for v in sweep.values(x) if isinstance(v, (int, float)) and v > 0]
    if x == X_OUTPUT_SCALE:
        values = [v for v in values if v >= MIN_OUTPUT_SCALE]
    if len(values) >= 2:
        return True
    notes.append(f"{x} takes fewer than 2 usable values among ok runs: no fits against {x}")
    return False


def _step_words(at: str) -> str:
    return "step-0 checkpoint" if at == AT_INIT else "checkpoint"


def _fit_group(
    spec: FitSpec, group: dict, members: pd.DataFrame, notes: list[str]
) -> tuple[dict, PowerLawFit] | None:
    where = f"{spec.metric} vs {spec.x} ({group_label(group)})"
    if spec.x == X_OUTPUT_SCALE:
        members = members[pd.to_numeric(members[spec.x], errors="coerce") >= MIN_OUTPUT_SCALE]
    x = pd.to_numeric(members[spec.x], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(members[spec.metric], errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).all():
        return None  # not measured in this group (e.g. a layer that depth does not have)
    usable_x = np.isfinite(x) & (x > 0)
    good = usable_x & np.isfinite(y) & (y > 0)
    if (~usable_x).any():  # worded without the metric, so it is noted once per group
        notes.append(f"{group_label(group)}: {int((~usable_x).sum())} run(s) without a usable "
                     f"{spec.x} left out")
    if (usable_x & ~good).any():
        notes.append(f"{where}: ignored {int((usable_x & ~good).sum())} run(s) with a "
                     "non-positive or missing value")
    n_x = len(np.unique(x[good]))
    if n_x < 2:
        n_group = len(np.unique(x[usable_x]))
        if n_group < 2:  # one note per group, not one per metric
            notes.append(f"no fits against {spec.x} for {group_label(group)}: only {n_group} "
                         f"distinct {spec.x} value(s)")
        else:
            notes.append(f"{where}: only {n_x} distinct {spec.x} value(s) with data; not fitted")
        return None
    fit = fit_power_law(x[good], y[good])
    row = {"metric": spec.metric, "step": _step_value(spec, members[good]), "x": spec.x,
           **group, "slope": fit.slope, "intercept": fit.intercept, "ci_low": fit.ci_low,
           "ci_high": fit.ci_high, "n_runs": fit.n_points, "n_widths": fit.n_x,
           "ci_method": fit.ci_method}
    return row, fit


def _step_value(spec: FitSpec, members: pd.DataFrame) -> int | str:
    """0 at init; at the end the common last step, or ``last`` when runs stopped apart."""
    if spec.at == AT_INIT:
        return 0
    steps = members["step"].unique()
    return int(steps[0]) if len(steps) == 1 else "last"


def _table_columns(sweep: Sweep, entries: Sequence[tuple[FitSpec, dict, PowerLawFit]]) -> list:
    keys: list[str] = []
    for _, group, _ in entries:
        keys += [k for k in group if k not in keys]
    ordered = [k for k in sweep.config_columns if k in keys]
    return [*HEAD_COLUMNS, *ordered, *TAIL_COLUMNS]
