"""report.md: what was swept, the fitted exponents, the figures, and the runs that failed.

Plain markdown (no extra dependency): a reader sees at a glance which knobs were varied,
how many runs finished, each scaling exponent with its confidence interval next to what
docs/conventions.md expects, and every run that failed, diverged, was interrupted or is incomplete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ntk_lab.analysis.markdown import markdown_table
from ntk_lab.analysis.collect import (
    STATUS_INCOMPLETE, Sweep, format_value, group_label, is_missing,
    layer_number,
)
from ntk_lab.analysis.fit import (
    CONFIDENCE, X_DEPTH, X_OUTPUT_SCALE, FitSpec, FitTable, PowerLawFit,
)
from ntk_lab.analysis.geometry_fits import geometry_expected_slope
from ntk_lab.records import (
    STATUS_DIVERGED, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_OK, atomic_write_text,
)

STATUS_ORDER = (STATUS_OK, STATUS_DIVERGED, STATUS_INTERRUPTED, STATUS_FAILED, STATUS_INCOMPLETE)
MAX_DETAIL_CHARS = 200  # one table row per run: long tracebacks are cut
MAX_LISTED_VALUES = 12


@dataclass(frozen=True)
class ReportFigure:
    """A figure file in the analysis folder and the one-line caption under it."""

    name: str
    caption: str


def write_report(
    sweep: Sweep,
    fits: FitTable,
    figures: Sequence[ReportFigure],
    not_drawn: Sequence[tuple[str, str]],
    notes: Sequence[str],
    path: Path,
) -> Path:
    """Write report.md.

    Args:
        sweep: the collected runs.
        fits: the fitted exponents.
        figures: the figures that were drawn, in order.
        not_drawn: ``(file name, what it needs)`` for figures the data did not support.
        notes: further remarks (figures that failed, …).
        path: where to write.
    """
    lines = [f"# Sweep analysis: `{sweep.root}`", ""]
    if not sweep.records:
        lines += [f"No run folders were found under `{sweep.root}` (a run folder holds "
                  "summary.json, metrics.csv or .hydra/). Nothing to analyse.", ""]
    else:
        lines += _runs_section(sweep) + _swept_section(sweep) + _fits_section(sweep, fits)
        lines += _figures_section(figures, not_drawn) + _problems_section(sweep)
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    atomic_write_text(path, "\n".join(lines))
    return path


def status_counts(sweep: Sweep) -> list[tuple[str, int]]:
    """``(status, number of runs)`` in :data:`STATUS_ORDER`, unknown statuses last."""
    counts = sweep.run_info["status"].value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(
        s for s in counts.index if s not in STATUS_ORDER)
    return [(status, int(counts[status])) for status in order]


def _runs_section(sweep: Sweep) -> list[str]:
    return ["## Runs", "", f"{len(sweep.records)} run folders.", "",
            *markdown_table(("status", "runs"), status_counts(sweep)), ""]


def _swept_section(sweep: Sweep) -> list[str]:
    swept = [c for c in sweep.config_columns if len(sweep.values(c)) > 1]
    fixed = [c for c in sweep.config_columns if len(sweep.values(c)) == 1]
    lines = ["## What was swept", ""]
    if swept:
        rows = [(c, value_list(sweep.values(c)), "yes" if c in sweep.knobs else "no")
                for c in swept]
        lines += ["Values over ok runs; *groups fits* says whether fits are done separately "
                  "for each value (width is the x axis, seeds are replicates).", "",
                  *markdown_table(("knob", "values", "groups fits"), rows), ""]
    else:
        lines += ["No config value varies across ok runs.", ""]
    if fixed:
        lines += ["Fixed: " + ", ".join(f"{c}={format_value(sweep.values(c)[0])}"
                                        for c in fixed), ""]
    return lines


def value_list(values: Sequence[Any]) -> str:
    """Values as ``a, b, c``, cut after :data:`MAX_LISTED_VALUES`."""
    shown = ", ".join(format_value(v) for v in values[:MAX_LISTED_VALUES])
    more = len(values) - MAX_LISTED_VALUES
    return shown + (f", … ({more} more)" if more > 0 else "")


def _fits_section(sweep: Sweep, fits: FitTable) -> list[str]:
    lines = ["## Scaling fits (fits.csv)", "", FITS_EXPLANATION, ""]
    if not fits.entries:
        return lines + ["No scaling law could be fitted (see the notes).", "",
                        *_fit_notes(fits)]
    return lines + [*markdown_table(FIT_HEADER, fit_rows(sweep, fits)), "", *_fit_notes(fits)]


# How to read the fits table (markdown: *x* is emphasis); shared by report.md and report.html.
FITS_EXPLANATION = (
    f"Slope of ln(metric) against ln(x) over ok runs, with a {CONFIDENCE:.0%} "
    "interval: *bootstrap* resamples seeds within each width when every width has "
    "≥ 2 seeds (expanded percentile interval; near its nominal coverage from 3 seeds "
    "per width, narrower than it should be with 2), *ols-t* is the least-squares "
    "standard error with Student's t, *none* means two points and no interval. "
    "*n_widths* counts distinct x values; the intercept in fits.csv is ln of the "
    "prefactor. The theory column is the expectation of docs/conventions.md, shown for "
    "comparison — the fit does not assume it.")

FIT_HEADER = ("metric", "step", "x", "group", "slope", "95% CI", "n_runs", "n_widths",
              "CI method", "theory")


def fit_rows(sweep: Sweep, fits: FitTable) -> list[tuple]:
    """The fits table as the reports show it, one tuple per fit in :data:`FIT_HEADER` order:
    slope and interval rounded to 3 decimals, the group as text, the expectation of docs/conventions.md."""
    return [(spec.metric, step, spec.x, group_label(group), f"{fit.slope:.3f}", _interval(fit),
             fit.n_points, fit.n_x, fit.ci_method, expected_slope(spec, group, sweep))
            for (spec, group, fit), step in zip(fits.entries, fits.table["step"])]


def _fit_notes(fits: FitTable) -> list[str]:
    if not fits.notes:
        return []
    return ["Left out of the fits:", "", *[f"- {n}" for n in fits.notes], ""]


def _interval(fit: PowerLawFit) -> str:
    if math.isnan(fit.ci_low):
        return "—"
    return f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}]"


def expected_slope(spec: FitSpec, group: Mapping[str, Any], sweep: Sweep) -> str:
    """What docs/conventions.md expects for this slope, as text ('—' where it says nothing)."""
    if spec.x == X_OUTPUT_SCALE:
        return "-1 (Chizat et al. 2019)" if spec.metric == "kappa" else "—"
    if spec.x == X_DEPTH:
        return _expected_depth_slope(spec, group, sweep)
    if spec.metric == "ntk_err_inf":
        return "-0.5"
    parameterization = _setting(sweep, group, "parameterization")
    geometric = geometry_expected_slope(spec.metric, parameterization)
    if geometric is not None:
        return geometric
    if spec.metric == "kappa":
        if parameterization == "mup":
            return "≈ 0 (feature learning)"
        return "between -1 and -0.5" if parameterization in ("ntk", None) else "—"
    if spec.metric.startswith("param_change_layer") and parameterization in ("ntk", None):
        if _setting(sweep, group, "model") not in ("mlp", "cnn", "resmlp", "transformer", None):
            return "—"
        # the readout is the last layer: the highest layer column the sweep recorded (depth + 1
        # for the MLP and CNN, depth + 2 for the ResMLP, more for a transformer's blocks)
        layers = [layer_number(c) for c in sweep.metric_columns if c.startswith("param_change_layer")]
        readout = max(layers, default=None)
        layer = layer_number(spec.metric)
        if layer == 1 or layer == readout:
            return "-0.5 (input / readout)"
        return "-1 (hidden)"
    return "—"


def _expected_depth_slope(spec: FitSpec, group: Mapping[str, Any], sweep: Sweep) -> str:
    """Against depth at fixed width (Hanin & Nica 2019): a plain network's relative NTK
    variance at init is ≈ 5·depth/width, so ``ntk_err_inf`` ∝ √(depth/width); its drift
    grows with depth/width too. A residual net with scaled-down branches grows less."""
    if _setting(sweep, group, "parameterization") not in ("ntk", None):
        return "—"
    model = _setting(sweep, group, "model")
    if model in ("mlp", None):
        return "+0.5 (Hanin & Nica 2019)" if spec.metric == "ntk_err_inf" else "> 0 (Hanin & Nica 2019)"
    if model == "resmlp":
        return "below the plain MLP's"
    return "—"


def _setting(sweep: Sweep, group: Mapping[str, Any], key: str) -> Any:
    """The group's value of ``key``, else the sweep's single value, else None."""
    if key in group and not is_missing(group[key]):
        return group[key]
    values = sweep.values(key)
    return values[0] if len(values) == 1 and not is_missing(values[0]) else None


def _figures_section(
    figures: Sequence[ReportFigure], not_drawn: Sequence[tuple[str, str]]
) -> list[str]:
    lines = ["## Figures", ""]
    for figure in figures:
        lines += [f"![{figure.name}]({figure.name})", "", f"*{figure.caption}*", ""]
    if not figures:
        lines += ["No figure: the runs do not hold enough data for any.", ""]
    if not_drawn:
        lines += ["Not drawn (the sweep does not support them):", "",
                  *[f"- `{name}` — needs {needs}" for name, needs in not_drawn], ""]
    return lines


def _problems_section(sweep: Sweep) -> list[str]:
    info = sweep.run_info
    bad = info[(info["status"] != STATUS_OK) | (info["problem"].fillna("") != "")]
    lines = ["## Runs left out of the fits", ""]
    if not len(bad):
        return lines + ["None: every run finished with status ok.", ""]
    rows = [(f"`{run['run_dir']}`", run["status"], run_detail(run))
            for _, run in bad.sort_values("run_dir").iterrows()]
    return lines + [*markdown_table(("folder", "status", "detail"), rows), ""]


def run_detail(run: pd.Series) -> str:
    """The run's message and problem, with the divergence step, on one short line."""
    parts = []
    if run["status"] == STATUS_DIVERGED:
        step = run.get("diverged_step")
        parts.append(f"diverged at step {format_value(step)}" if not is_missing(step)
                     else "diverged")
    for key in ("message", "problem"):
        value = run.get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip().splitlines()[0])
    text = "; ".join(parts) or "no message"
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"
