"""The analysis stage: collect run folders, fit scaling exponents, draw figures, report.

    from ntk_lab.analysis import analyze_sweep
    analyze_sweep(Path("outputs/multirun/…"))   # -> the folder holding runs.csv, fits.csv,
                                                #    the figures and report.md

Runs are read only through :mod:`ntk_lab.records`; nothing here imports the training code.
"""

from ntk_lab.analysis.collect import Sweep, collect_sweep
from ntk_lab.analysis.fit import FitTable, PowerLawFit, fit_power_law, fit_sweep
from ntk_lab.analysis.pipeline import analyze_sweep

__all__ = [
    "FitTable", "PowerLawFit", "Sweep", "analyze_sweep", "collect_sweep", "fit_power_law",
    "fit_sweep",
]
