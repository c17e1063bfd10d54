"""Scaling fits of the kernel-geometry columns: which final metrics are fitted
against width, the derived columns they need, and what theory expects of them.

Fitted at step 0: ``nngp_err_inf``, the conjugate kernel's distance to NNGP_∞ (theory: width^−1/2,
an average over n units). Fitted at each run's last checkpoint (:mod:`ntk_lab.analysis.fit`
does the fitting):

- ``alignment_change`` = |A_T − A_0|, the final change of the centered kernel-target alignment;
- ``one_minus_eig_overlap_init`` = 1 − ‖U_Tᵀ U_0‖²_F / k, how far the top-k eigenspace rotated;
- ``ck_kappa``, the conjugate kernel's drift;
- every ``kappa_layer{i}``, each layer's NTK drift.

Prediction (lazy training vs feature learning): under ``ntk`` at a fixed learning rate all of
them shrink as width grows; under ``mup`` they stay put (slope ≈ 0).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from ntk_lab.analysis.collect import Sweep

ALIGNMENT_CHANGE = "alignment_change"
ROTATION = "one_minus_eig_overlap_init"
DERIVED_COLUMNS = (ALIGNMENT_CHANGE, ROTATION)
_KAPPA_LAYER = re.compile(r"^kappa_layer(\d+)$")


def kappa_layer_columns(columns: Sequence[str]) -> list[str]:
    """The ``kappa_layer<i>`` columns, ordered by layer."""
    found = [(int(m.group(1)), c) for c in columns if (m := _KAPPA_LAYER.match(c))]
    return [c for _, c in sorted(found)]


def geometry_init_metrics(columns: Sequence[str]) -> list[str]:
    """The geometry metrics fitted against width at step 0, those present."""
    return [c for c in ("nngp_err_inf",) if c in columns]


def geometry_final_metrics(columns: Sequence[str]) -> list[str]:
    """The geometry metrics fitted against width at the last checkpoint, those present."""
    wanted = [*DERIVED_COLUMNS, "ck_kappa", *kappa_layer_columns(columns)]
    return [c for c in wanted if c in columns]


def add_geometry_columns(sweep: Sweep) -> Sweep:
    """The sweep with the derived columns added to every checkpoint row (runs.csv has them):
    ``alignment_change`` = |alignment − alignment at the run's first checkpoint| and
    ``one_minus_eig_overlap_init``. A sweep without the source columns is returned as is."""
    runs = sweep.runs
    added = []
    if "alignment" in runs.columns and len(runs):
        alignment = pd.to_numeric(runs["alignment"], errors="coerce")
        first = alignment.groupby(runs["run_dir"]).transform(
            lambda a: a.iloc[0] if len(a) else np.nan)
        runs = runs.assign(**{ALIGNMENT_CHANGE: (alignment - first).abs()})
        added.append(ALIGNMENT_CHANGE)
    if "eig_overlap_init" in runs.columns and len(runs):
        overlap = pd.to_numeric(runs["eig_overlap_init"], errors="coerce")
        runs = runs.assign(**{ROTATION: 1.0 - overlap})
        added.append(ROTATION)
    if not added:
        return sweep
    metric_columns = [*sweep.metric_columns, *[c for c in added if c not in sweep.metric_columns]]
    return replace(sweep, runs=runs, metric_columns=metric_columns)


def geometry_expected_slope(metric: str, parameterization: str | None) -> str | None:
    """The theory column of report.md for a geometry fit; None for other metrics."""
    if metric == "nngp_err_inf":
        return "-0.5"
    if metric not in (*DERIVED_COLUMNS, "ck_kappa") and not _KAPPA_LAYER.match(metric):
        return None
    if parameterization == "mup":
        return "≈ 0 (feature learning)"
    if parameterization in ("ntk", None):
        return "< 0 (lazy: moves less as width grows)"
    return "—"
