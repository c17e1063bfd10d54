"""How far Θ_0 is from Θ_∞ at initialization, against how far the 1/n theory says it should be.

Runs of an MLP (``ntk``, ``mup`` or ``standard``) or a residual MLP (``ntk`` or ``mup``, probe
sets of ≤ 32 points) carry ``ntk_err_inf_pred``, the predicted root-mean-square
‖Θ_0 − Θ_∞‖_F/‖Θ_∞‖_F at their width from the NTK's finite-width variance
(:mod:`ntk_lab.kernels.finite_width_ntk`, :mod:`ntk_lab.kernels.finite_width_residual_ntk`). Per width (and per any other swept setting) this
table sets the mean over seeds of the measured ``ntk_err_inf``² at step 0 beside the predicted
square, with their ratio and a 95 % bootstrap interval over seeds. The squares are what the
theory predicts (E‖Θ_0 − Θ_∞‖² = Σ Var + O(1/n²)); a ratio near 1 at every width says the
measured distance is the predicted one, not just its n^(−1/2) slope.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ntk_lab.analysis.collect import Sweep

FLUCTUATION_FILE = "fluctuation_prediction.csv"
BOOTSTRAP_DRAWS = 2000
_NOT_GROUPS = ("width", "seed", "lr", "data_seed")


def applies(sweep: Sweep) -> bool:
    return "ntk_err_inf_pred" in sweep.metric_columns and "width" in sweep.run_info


def prediction_table(sweep: Sweep) -> pd.DataFrame:
    """Per group and width: ``n_seeds``, ``measured_sq`` (mean of ntk_err_inf² at step 0),
    ``predicted_sq`` (ntk_err_inf_pred²), ``ratio`` and its bootstrap ``ci_low``, ``ci_high``."""
    rows = sweep.ok_rows()
    first = rows[rows["step"] == rows["step"].min()].dropna(subset=["ntk_err_inf", "ntk_err_inf_pred"])
    groups = [k for k in sweep.group_keys if k not in _NOT_GROUPS and k in first]
    rng = np.random.default_rng(0)
    out = []
    for key, members in first.groupby(groups + ["width"], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        measured = members["ntk_err_inf"].to_numpy(float) ** 2
        predicted = float(np.mean(members["ntk_err_inf_pred"].to_numpy(float) ** 2))
        ratio = measured.mean() / predicted
        if len(measured) >= 2:
            draws = rng.choice(measured, size=(BOOTSTRAP_DRAWS, len(measured))).mean(1) / predicted
            low, high = np.percentile(draws, [2.5, 97.5])
        else:
            low = high = float("nan")
        out.append({**dict(zip(groups + ["width"], key)), "n_seeds": len(measured),
                    "measured_sq": measured.mean(), "predicted_sq": predicted, "ratio": ratio,
                    "ci_low": low, "ci_high": high})
    return pd.DataFrame(out)


def report_lines(sweep: Sweep) -> list[str]:
    table = prediction_table(sweep)
    if table.empty:
        return []
    parts = ", ".join(f"{int(r.width)}: {r.ratio:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
                      for r in table.itertuples())
    return [f"Θ_0's distance to Θ_∞ at init against the 1/n prediction (mean ntk_err_inf² over seeds "
            f"÷ ntk_err_inf_pred², by width, 95 % bootstrap): {parts} ({FLUCTUATION_FILE})"]
