"""What a run tells an experiment tracker, and the guard that keeps a tracker from stopping it.

The protocol has three calls, in this order (lightning-hydra-template's loggers have the same
shape: hyperparameters, then metrics by step, then the end):

- :meth:`RunLogger.start` once, with the run's resolved settings (summary.json's config keys);
- :meth:`RunLogger.log_row` at every checkpoint, with the metrics.csv row (``step`` in it);
- :meth:`RunLogger.finish` once, with the final summary (status, final metrics) and the run
  folder, whose ``plots/*.png`` and ``summary.json`` are then on disk.

A tracker is a convenience: the run folder is the record. :class:`GuardedLogger` therefore
turns any exception of a tracker (disk full, store locked, a server gone) into one warning,
after which the tracker is left alone and the run goes on writing its files.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

log = logging.getLogger("ntk_lab.loggers")


class RunLogger(Protocol):
    """One run's connection to an experiment tracker."""

    def start(self, params: Mapping[str, Any]) -> None:
        """The run's settings (flat: name -> number, string, bool or None)."""

    def log_row(self, row: Mapping[str, Any]) -> None:
        """One metrics.csv row: ``row["step"]`` and a value per metric column."""

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        """The end of the run: its summary (``status``, ``final`` metrics) and its folder."""


class NullLogger:
    """``logger=none``: the run folder alone."""

    def start(self, params: Mapping[str, Any]) -> None:
        pass

    def log_row(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        pass


class GuardedLogger:
    """Forwards to ``inner`` until it first raises; then warns once and forwards nothing more.

    Args:
        inner: the tracker.
        name: its name in the warning (``tensorboard``, ``mlflow``).
    """

    def __init__(self, inner: RunLogger, name: str):
        self.inner = inner
        self.name = name
        self.failure: Optional[str] = None  # the first error, once there is one

    @classmethod
    def off(cls, name: str, reason: str) -> "GuardedLogger":
        """A tracker that could not be used from the start (its server does not answer): it
        forwards nothing and reports ``reason`` as its failure; the caller has warned."""
        guarded = cls(NullLogger(), name)
        guarded.failure = reason
        return guarded

    @property
    def active(self) -> bool:
        return self.failure is None

    def start(self, params: Mapping[str, Any]) -> None:
        self._call("start", params)

    def log_row(self, row: Mapping[str, Any]) -> None:
        self._call("log_row", row)

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        self._call("finish", summary, run_dir)

    def _call(self, method: str, *args: Any) -> None:
        if self.failure is not None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as err:  # any tracker error: the run and its files come first
            self.failure = f"{type(err).__name__}: {err}".splitlines()[0]
            log.warning("logger=%s failed in %s (%s); the run goes on without it and keeps "
                        "its files", self.name, method, self.failure)
            close = getattr(self.inner, "abandon", None)
            if close is not None:
                try:
                    close()
                except Exception:  # already failing: nothing more to report
                    pass


def metric_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The metric columns of a metrics.csv row as floats, as a tracker plots them: ``step``
    left out, and so are cells without a value — empty (None), not a number, or NaN (a metric
    undefined at that step, such as ``inf_gap`` at step 0, where it is 0/0). ±inf is kept:
    it is how a diverging loss looks."""
    out = {}
    for key, value in row.items():
        if key == "step" or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            out[str(key)] = number
    return out


def final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite final metrics of a summary (its ``final`` row, ``step`` included)."""
    final = summary.get("final") or {}
    values = {k: v for k, v in metric_values(final).items() if math.isfinite(v)}
    if isinstance(final.get("step"), (int, float)):
        values["step"] = float(final["step"])
    return values


def run_figures(run_dir: Path) -> list[Path]:
    """The single-run figures, ``<run_dir>/plots/*.png``, sorted."""
    return sorted((Path(run_dir) / "plots").glob("*.png"))
