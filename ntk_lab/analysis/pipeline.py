"""The analysis stage end to end: collect runs → runs.csv → fits.csv → figures → report.md
and report.html.

:func:`analyze_sweep` is what ``python -m ntk_lab.analyze DIR`` and the Hydra callback at the
end of a multirun call. A damaged run folder never stops it: ``collect`` marks the run
incomplete, the report lists it, and a figure that fails to draw becomes a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ntk_lab.analysis import catapult, fluctuation_check, lr_transfer
from ntk_lab.analysis.accuracy_plots import plot_accuracy_vs_width
from ntk_lab.analysis.collect import Sweep, collect_sweep
from ntk_lab.analysis.depth_plots import plot_kernel_gaps_vs_depth_over_width
from ntk_lab.analysis.fit import FitTable, fit_sweep
from ntk_lab.analysis.geometry_fits import add_geometry_columns
from ntk_lab.analysis.geometry_plots import (
    plot_alignment_vs_step, plot_eig_overlap_vs_width, plot_kappa_layers_vs_width, plot_spectrum,
)
from ntk_lab.analysis.kernel_plots import plot_jacot_fig1
from ntk_lab.analysis.lazy_plots import plot_lazy_gaps_vs_width, plot_lee2019_training_curves
from ntk_lab.analysis.plots import (
    plot_kappa_heatmap_depth_lr, plot_kappa_vs_output_scale, plot_kappa_vs_step, plot_kappa_vs_width,
    plot_kappa_vs_width_by_parameterization, plot_ntk_err_inf_vs_width,
    plot_param_change_layers_vs_width,
)
from ntk_lab.analysis.report import ReportFigure, write_report
from ntk_lab.analysis.report_html import write_html_report
from ntk_lab.records import atomic_write_text

log = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"
RUNS_FILE = "runs.csv"
FITS_FILE = "fits.csv"
REPORT_FILE = "report.md"
CATAPULT_FILE = "catapult.csv"
CATAPULT_FITS_FILE = "catapult_fits.csv"
TRANSFER_FILE = "lr_transfer.csv"
FLUCTUATION_FILE = fluctuation_check.FLUCTUATION_FILE
TRANSFER_FITS_FILE = "lr_transfer_fits.csv"
HTML_REPORT_FILE = "report.html"


@dataclass(frozen=True)
class FigureSpec:
    """One sweep figure: its file, the function drawing it, what theory predicts, and what
    data it needs (said in the report when it is not drawn)."""

    name: str
    draw: Callable[[Sweep, FitTable, Path], bool]
    caption: str
    needs: str


# Captions state the expectation of docs/conventions.md; the figures show what was measured.
FIGURES = (
    FigureSpec(
        "ntk_err_inf_vs_width.png", plot_ntk_err_inf_vs_width,
        "Distance of Θ_0 to Θ_∞ at init vs width. Theory: falls like width^(−1/2), the "
        "fluctuation of a sum of n independent terms (dashed reference).",
        "ntk_err_inf at step 0 for ≥ 2 widths"),
    FigureSpec(
        "kappa_vs_width.png", plot_kappa_vs_width,
        "Kernel drift after training vs width. Theory (ntk parameterization, fixed η): falls "
        "with width, between O(n^(−1/2)) (Lee et al. 2019 bound) and O(n^(−1)) (Dyer & "
        "Gur-Ari 2019).",
        "final kappa for ≥ 2 widths"),
    FigureSpec(
        "jacot_fig1.png", plot_jacot_fig1,
        "Θ(x₀, x(γ)) on the unit circle at init and after training, Θ_∞ dashed. Theory "
        "(Jacot et al. 2018, Fig. 1): both curves approach Θ_∞ and move less as width grows.",
        "ok runs with dataset=circle and a kernels.pt holding probe_angle"),
    FigureSpec(
        "kappa_vs_step.png", plot_kappa_vs_step,
        "Kernel drift during training, one line per width. Theory: wider networks stay "
        "closer to their initial kernel at every step (lazy training).",
        "kappa at steps > 0"),
    FigureSpec(
        "param_change_layers_vs_width.png", plot_param_change_layers_vs_width,
        "Relative weight change per layer after training. Theory (Lee et al. 2019): input "
        "and readout layers ∝ n^(−1/2), hidden-to-hidden layers ∝ n^(−1).",
        "param_change_layer* columns for ≥ 2 widths"),
    FigureSpec(
        "kappa_heatmap_depth_lr.png", plot_kappa_heatmap_depth_lr,
        "Final kernel drift at the largest width on the depth × learning-rate grid. Theory "
        "gives no single number here; the measured exponents depend on depth and training "
        "length (docs/conventions.md).",
        "≥ 2 depths or ≥ 2 learning rates"),
    FigureSpec(
        "kappa_vs_output_scale.png", plot_kappa_vs_output_scale,
        "Kernel drift and test loss vs output scale α. Theory (Chizat, Oyallon & Bach 2019): "
        "kappa falls like 1/α (dashed reference).",
        "output_scale swept"),
    FigureSpec(
        "kappa_vs_width_by_parameterization.png", plot_kappa_vs_width_by_parameterization,
        "Kernel drift vs width by parameterization. Theory: falls with width under ntk; "
        "under mup the kernel keeps moving (slope ≈ 0, feature learning).",
        "parameterization swept"),
    FigureSpec(
        "lee2019_training_curves.png", plot_lee2019_training_curves,
        "Train and test loss during training of the network (solid), its linearization "
        "(dashed) and the Θ_∞ gradient-flow prediction (dotted), one panel per width, mean "
        "over seeds. Theory (Lee et al. 2019, Figs. 1–2): as width grows the three curves "
        "coincide in the ntk parameterization.",
        "train/test_loss_lin or train/test_loss_inf columns (lazy.linearized or "
        "lazy.infinite_width)"),
    FigureSpec(
        "lazy_gaps_vs_width.png", plot_lazy_gaps_vs_width,
        "Final lin_gap = ‖f − f_lin‖/‖f − f_0‖, inf_gap (same with the Θ_∞ prediction), the "
        "Hessian κ and jac_change vs width, fitted slopes in the legend. Theory: lin_gap and "
        "kappa_hessian fall with width in the ntk parameterization (Lee et al. 2019, "
        "∝ n^(−1/2) dashed; Liu, Zhu & Belkin 2020), while under mup they do not (feature "
        "learning).",
        "final lin_gap, inf_gap or kappa_hessian for ≥ 2 widths (lazy=full)"),
    FigureSpec(
        "accuracy_vs_width.png", plot_accuracy_vs_width,
        "Final test accuracy of the network (solid) and of its Θ_∞ gradient-flow prediction "
        "(dashed), and final train accuracy, vs width, one color per group (e.g. CNN vs "
        "MLP). Theory: the network's accuracy approaches the Θ_∞ prediction's as width "
        "grows (ntk parameterization); no power law is fitted to a bounded quantity.",
        "test_acc (classification data) for ≥ 2 widths"),
    FigureSpec(
        "kernel_gaps_vs_depth_over_width.png", plot_kernel_gaps_vs_depth_over_width,
        "Distance of Θ_0 to Θ_∞ at init and final kernel drift vs depth/width, one colour per "
        "model, one marker per width. Theory (Hanin & Nica 2019): at finite width both grow "
        "with depth/width; scaled-down residual branches keep them smaller at equal depth.",
        "≥ 2 depths"),
    FigureSpec(
        "alignment_vs_step.png", plot_alignment_vs_step,
        "Centered kernel-target alignment A(Θ_t, yyᵀ) on the probe set during training, one "
        "line per width (Cortes, Mohri & Rostamizadeh 2012). Theory: under ntk the kernel, "
        "and so its alignment, moves less as width grows; under mup it keeps moving.",
        "the alignment column (runs with probe targets)"),
    FigureSpec(
        "ntk_spectrum.png", plot_spectrum,
        "Normalized eigenvalues of Θ at init (solid) and after training (dashed), one color "
        "per width, and of Θ_∞ (dotted). Theory: Θ_0 → Θ_∞ as width grows; training moves "
        "the spectrum less at larger width under ntk.",
        "eigvals in kernels.pt (spectra are computed up to ntk.spectrum_max_probe probes)"),
    FigureSpec(
        "eig_overlap_init_vs_width.png", plot_eig_overlap_vs_width,
        "Overlap ‖U_Tᵀ U_0‖²_F/k of the final top-k eigenspace with the initial one vs "
        "width, and 1 − overlap on log–log axes with fitted slopes (Fort et al. 2020). "
        "Theory: → 1 as width grows under ntk; stays below 1 under mup.",
        "final eig_overlap_init for ≥ 2 widths"),
    FigureSpec(
        "kappa_layers_vs_width.png", plot_kappa_layers_vs_width,
        "Per-layer NTK drift κ_l after training vs width, and the conjugate kernel's drift "
        "(dashed), fitted slopes in the legend. Theory: every layer's kernel moves less as "
        "width grows under ntk (lazy); not under mup.",
        "kappa_layer* columns for ≥ 2 widths"),
    FigureSpec(
        "catapult_phase_diagram.png", catapult.plot_phase_diagram,
        "Final kernel drift against the learning rate in units of η_crit = 2/λ_max(Θ_0/N), "
        "one line per width, mean over seeds; × marks rates that diverged. Theory (Lewkowycz "
        "et al. 2020): below η_crit κ falls with width (lazy); between η_crit and η_max it "
        "stays of order one at every width (catapult); above η_max training diverges.",
        "train.lr_unit=crit with ≥ 2 rates and ≥ 2 widths"),
    FigureSpec(
        "catapult_curves.png", catapult.plot_training_curves,
        "Training loss and η·λ_max(Θ_t/N) against step at the widest width, for rates on both "
        "sides of η_crit. Theory: above η_crit the loss first rises, λ_max falls until "
        "η·λ_max < 2, and the loss then falls (the catapult).",
        "train.lr_unit=crit with ≥ 2 rates and ≥ 2 widths"),
    FigureSpec(
        "lr_transfer_loss_vs_lr.png", lr_transfer.plot_loss_vs_lr,
        "Train loss after the last step against the learning rate, one curve per width, one "
        "panel per parameterization (Yang et al. 2022, Tensor Programs V, Fig. 1). Theory: "
        "under mup the curves' minima line up across widths; under standard they move.",
        "≥ 5 learning rates and ≥ 2 widths"),
    FigureSpec(
        "lr_transfer_optimum_vs_width.png", lr_transfer.plot_optimum_vs_width,
        "The optimal learning rate η* (parabola through the best grid point and its "
        "neighbours; squares: the grid point) against width, the transfer regret (the loss at "
        "the narrowest width's best rate over the width's own best), and at each optimum κ and "
        "λ_max(Θ/N) at init and at the end. Theory (Adam): η* ∝ width^−1 under standard, "
        "width^0 under mup, where the regret stays ≈ 1 and the kernel's scale and motion do "
        "not depend on width.",
        "≥ 5 learning rates and ≥ 2 widths"),
)


def analyze_sweep(root: Path, out_dir: Path | None = None, *, progress: bool = False) -> Path:
    """Analyse every run folder under ``root`` and write the analysis folder.

    Writes ``runs.csv`` (one row per run × checkpoint), ``fits.csv`` (scaling exponents with
    confidence intervals), the figures the data supports, ``report.md`` and the
    self-contained ``report.html`` (figures embedded).

    Args:
        root: a multirun folder, a single run folder, or any folder holding run folders.
        out_dir: where to write; ``root / "analysis"`` by default.
        progress: tqdm bars over the run folders read and the figures drawn.

    Returns:
        The analysis folder.

    Raises:
        FileNotFoundError: ``root`` is not a directory. Damaged run folders never raise.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    out_dir = Path(out_dir) if out_dir is not None else root / ANALYSIS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = add_geometry_columns(collect_sweep(root, progress))
    atomic_write_text(out_dir / RUNS_FILE, sweep.runs.to_csv(index=False))
    fits = fit_sweep(sweep)
    atomic_write_text(out_dir / FITS_FILE, fits.table.to_csv(index=False))
    drawn, not_drawn, notes = draw_figures(sweep, fits, out_dir, progress)
    notes += _study_tables(sweep, out_dir)
    write_report(sweep, fits, drawn, not_drawn, notes, out_dir / REPORT_FILE)
    write_html_report(sweep, fits, drawn, not_drawn, notes, out_dir / HTML_REPORT_FILE)
    log.info("analysis of %d run folders written to %s", len(sweep.records), out_dir)
    return out_dir


# The study tables some sweeps add beside fits.csv: (the study's module, {file: table function}).
# A module says whether the sweep is one of its kind (``applies``) and what the report says.
STUDY_TABLES = (
    (catapult, {CATAPULT_FILE: catapult.eta_max_table, CATAPULT_FITS_FILE: catapult.phase_fits}),
    (lr_transfer, {TRANSFER_FILE: lr_transfer.optima, TRANSFER_FITS_FILE: lr_transfer.transfer_fits}),
    (fluctuation_check, {FLUCTUATION_FILE: fluctuation_check.prediction_table}),
)


def _study_tables(sweep: Sweep, out_dir: Path) -> list[str]:
    """Write the tables of every study the sweep is (a catapult sweep: η_max/η_crit per width
    and κ per phase; a transfer sweep: η*, regret and drift per width or depth, and η*'s fit),
    remove stale ones, and return the report's lines on them."""
    lines: list[str] = []
    for study, tables in STUDY_TABLES:
        for name in tables:
            (out_dir / name).unlink(missing_ok=True)
        if not study.applies(sweep):
            continue
        for name, table in tables.items():
            atomic_write_text(out_dir / name, table(sweep).to_csv(index=False))
        lines += study.report_lines(sweep)
    return lines


def draw_figures(
    sweep: Sweep, fits: FitTable, out_dir: Path, progress: bool = False
) -> tuple[list[ReportFigure], list[tuple[str, str]], list[str]]:
    """Draw every figure of :data:`FIGURES` the data supports.

    Returns:
        (drawn figures with captions, (name, needs) of those not drawn, notes on failures).
        A figure left from an earlier analysis that is not drawn now is removed, so the
        folder always matches the report.
    """
    drawn, not_drawn, notes = [], [], []
    for spec in tqdm(FIGURES, desc="figures", unit="figure", disable=not progress, leave=False):
        path = out_dir / spec.name
        path.unlink(missing_ok=True)
        try:
            ok = spec.draw(sweep, fits, path) if sweep.records else False
        except Exception as err:  # a plotting failure must not lose the tables and report
            log.warning("figure %s not drawn: %s: %s", spec.name, err.__class__.__name__, err)
            notes.append(f"`{spec.name}` failed: {err.__class__.__name__}: {err}")
            path.unlink(missing_ok=True)
            continue
        if ok:
            drawn.append(ReportFigure(spec.name, spec.caption))
        elif sweep.records:
            not_drawn.append((spec.name, spec.needs))
    return drawn, not_drawn, notes
