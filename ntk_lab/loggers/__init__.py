"""Experiment trackers a run can report to besides its folder: ``logger=none|tensorboard|mlflow``.

    from ntk_lab.loggers import make_logger
    logger = make_logger("tensorboard", run_dir)           # a GuardedLogger
    logger.start(settings); logger.log_row(row); …; logger.finish(summary, run_dir)

The run folder is always written; a tracker only mirrors it (:mod:`ntk_lab.loggers.base`).
Each tracker's package is an optional extra, imported only when that tracker is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ntk_lab.loggers.base import GuardedLogger, NullLogger, RunLogger, log

LOGGERS = ("none", "tensorboard", "mlflow")
# The pip extra of ntk_lab that installs each tracker's package.
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
DEFAULT_STORE_DIR = Path("outputs") / "mlflow"  # relative to the folder a command runs from
SINGLE_RUN_EXPERIMENT = "ntk_lab runs"  # the experiment of runs started without -m

__all__ = [
    "DEFAULT_STORE_DIR", "EXTRAS", "LOGGERS", "GuardedLogger", "NullLogger", "RunLogger",
    "experiment_name", "log_sweep_end", "logger_unavailable", "make_logger", "prepare_sweep",
]


def logger_unavailable(name: str) -> Optional[str]:
    """The one-line error for a tracker whose package is not installed, else None."""
    if name == "tensorboard":
        from ntk_lab.loggers.tensorboard_logger import tensorboard_missing as missing
    elif name == "mlflow":
        from ntk_lab.loggers.mlflow_logger import mlflow_missing as missing
    else:
        return None
    if missing() is None:
        return None
    extra = EXTRAS[name]
    return (f"logger={name} needs the {extra} package, which is not installed: "
            f"pip install -e \".[{extra}]\" (or pip install \"ntk_lab[{extra}]\")")


def experiment_name(setting: Optional[str], sweep_dir: Optional[Path], cwd: Path) -> str:
    """The MLflow experiment of a run: ``setting`` when given; for a sweep its folder
    (relative to ``cwd`` when inside it), so that one sweep is one experiment and two sweeps
    are two; for a run started without ``-m``, :data:`SINGLE_RUN_EXPERIMENT`."""
    if setting:
        return setting
    if sweep_dir is None:
        return SINGLE_RUN_EXPERIMENT
    sweep_dir, cwd = Path(sweep_dir).resolve(), Path(cwd).resolve()
    try:
        return sweep_dir.relative_to(cwd).as_posix()
    except ValueError:
        return sweep_dir.as_posix()


def make_logger(
    name: str, run_dir: Path, *, tracking_uri: Optional[str] = None,
    experiment: str = SINGLE_RUN_EXPERIMENT, run_name: Optional[str] = None,
    default_store_dir: Path = DEFAULT_STORE_DIR, tags: Optional[Mapping[str, str]] = None,
) -> RunLogger:
    """The tracker ``name`` for the run in ``run_dir``, guarded (:class:`GuardedLogger`).

    Args:
        name: one of :data:`LOGGERS`.
        run_dir: the run folder (TensorBoard writes into ``run_dir/tb``).
        tracking_uri: MLflow's ``logger.tracking_uri`` (a folder or a URI; None: the default
            store in ``default_store_dir``).
        experiment: MLflow experiment (:func:`experiment_name`).
        run_name: MLflow run name (default: the run folder's name).
        default_store_dir: where the default MLflow store lives.
        tags: further MLflow tags.

    Returns an inactive logger (``active`` false, ``failure`` the reason) after one warning
    when ``tracking_uri`` names a tracking server that does not answer within
    :data:`~ntk_lab.loggers.mlflow_logger.REACHABILITY_TIMEOUT_S`.

    Raises:
        ValueError: an unknown name (config validation stops that earlier).
    """
    run_dir = Path(run_dir)
    if name == "none":
        return NullLogger()
    if name == "tensorboard":
        from ntk_lab.loggers.tensorboard_logger import TensorBoardLogger

        return GuardedLogger(TensorBoardLogger(run_dir), name)
    if name == "mlflow":
        from ntk_lab.loggers.mlflow_logger import (
            MlflowLogger, TAG_RUN_DIR, resolve_tracking_uri, unreachable_message,
        )

        uri = resolve_tracking_uri(tracking_uri, default_store_dir)
        problem = unreachable_message(uri)  # before MLflow's client would retry for minutes
        if problem:
            log.warning("logger=mlflow: %s; the run goes on without the logger and keeps its "
                        "files", problem)
            return GuardedLogger.off(name, problem)
        all_tags = {TAG_RUN_DIR: str(run_dir.resolve()), **dict(tags or {})}
        return GuardedLogger(MlflowLogger(uri, experiment, run_name or run_dir.name, all_tags),
                             name)
    raise ValueError(f"logger={name!r} is invalid: allowed: {', '.join(LOGGERS)}")


def prepare_sweep(
    name: str, *, tracking_uri: Optional[str], experiment: str,
    default_store_dir: Path = DEFAULT_STORE_DIR,
) -> None:
    """Before a multirun's jobs: ``mlflow`` creates the store and the sweep's experiment once,
    so that parallel jobs (``hydra/launcher=local_parallel``) do not race to create them.
    Never raises: a failure, a tracking server that does not answer among them (asked once,
    :func:`~ntk_lab.loggers.mlflow_logger.open_client`), is one warning (each job then warns
    as it finds the store)."""
    if name != "mlflow":
        return
    from ntk_lab.loggers.mlflow_logger import open_client, open_experiment, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(tracking_uri, default_store_dir)
        open_experiment(open_client(uri), experiment, uri)
    except Exception as err:  # the jobs' run folders do not depend on the tracker
        log.warning("logger=mlflow could not prepare the store (%s: %s); the sweep goes on",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")


def log_sweep_end(
    name: str, sweep_dir: Path, analysis_dir: Optional[Path], *, tracking_uri: Optional[str],
    experiment: str, default_store_dir: Path = DEFAULT_STORE_DIR,
) -> None:
    """At the end of a multirun: ``mlflow`` records the sweep as its jobs' parent run (the
    command, the status counts, fits.csv, the analysis folder); the other trackers need
    nothing more (``tensorboard --logdir <sweep>`` finds every job's ``tb/``). Never raises:
    a tracker failure (a tracking server that does not answer is found in one short request)
    is one warning, the sweep's files are already written."""
    if name != "mlflow":
        return
    from ntk_lab.loggers.mlflow_logger import log_sweep, resolve_tracking_uri, sweep_params
    from ntk_lab.records import iter_records

    try:
        counts: dict[str, int] = {}
        for record in iter_records(sweep_dir):
            counts[record.status] = counts.get(record.status, 0) + 1
        log_sweep(resolve_tracking_uri(tracking_uri, default_store_dir), experiment,
                  Path(sweep_dir), analysis_dir, sweep_params(Path(sweep_dir)), counts)
    except Exception as err:  # the sweep's folders are the record; the tracker is extra
        log.warning("logger=mlflow failed to record the sweep (%s: %s); its files are "
                    "complete", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
