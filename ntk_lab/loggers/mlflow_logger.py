"""``logger=mlflow``: a sweep is one MLflow experiment, each job a run, the fits a parent run.

- Store: a local SQLite tracking store, ``./outputs/mlflow/mlflow.db`` by default, with the
  artifacts beside it in ``./outputs/mlflow/artifacts/`` — what ``mlflow ui
  --backend-store-uri sqlite:///outputs/mlflow/mlflow.db`` opens. ``logger.tracking_uri`` may
  name another folder (a store is made there) or any MLflow URI (``sqlite:///…``,
  ``http://host:5000`` for a tracking server shared by a cluster's jobs).
- Each job: a run with the settings as params, every metrics.csv column as a metric history
  by step, and at the end the figures (``plots/``), ``summary.json`` and ``metrics.csv`` as
  artifacts, the status as a tag, and MLflow's run status (FINISHED, FAILED, KILLED).
- The sweep (:func:`log_sweep`, at the end of a multirun): a parent run holding the command,
  the grid, the status counts, every fitted exponent of fits.csv with its confidence
  interval, and the analysis folder (report.html, fits.csv, figures) as artifacts; the
  jobs become its children (MLflow's ``mlflow.parentRunId`` tag).

The MLflow client is used with an explicit tracking URI, never MLflow's process-global
"active run", so nothing leaks between runs in one process.

A tracking server (``http(s)://``) is asked for one HTTP answer, within
:data:`REACHABILITY_TIMEOUT_S`, before a client is opened on it (:func:`server_unreachable`):
MLflow's own client would retry a dead server for minutes. Requests once a client is open
are capped by :data:`HTTP_ENV_DEFAULTS`, so a server that goes away mid-run stalls a run for
seconds, not minutes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from ntk_lab.loggers.base import metric_values, run_figures

STORE_DB = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
TAG_ROLE = "ntk_lab.role"  # "job" or "sweep"
TAG_STATUS = "ntk_lab.status"
TAG_RUN_DIR = "ntk_lab.run_dir"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
ROLE_JOB, ROLE_SWEEP = "job", "sweep"
# ntk_lab's run status -> MLflow's run status.
RUN_STATUS = {"ok": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "interrupted": "KILLED"}
# MLflow's limits (mlflow.utils.validation): batch sizes and the length of a param value.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000
# Characters MLflow accepts in a metric or param name on every platform.
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")

REACHABILITY_TIMEOUT_S = 3.0
"""How long a tracking server has to answer one HTTP request before a run goes on without it:
a server on the same network answers in milliseconds, and a run waits at most this long at
its start (and a sweep at its start and its end) for one that is down."""

HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
"""MLflow's REST client retries a failed request 7 times with a backoff factor of 2 and waits
120 s for each answer: minutes per call, a warning per retry, against a server that went away
mid-run. These caps (set only where the environment does not already set them) end such a call
within about 50 s when the server is silent and a few seconds when it refuses connections;
15 s without a byte is far longer than a working server takes even for an artifact upload."""


def resolve_tracking_uri(setting: Optional[str], default_dir: Path) -> str:
    """The tracking URI: ``setting`` when it is a URI, a SQLite store in the folder it
    names otherwise, and in ``default_dir`` when it is None."""
    if setting and ("://" in setting or setting.startswith("sqlite:")):
        return setting
    folder = Path(setting) if setting else Path(default_dir)
    return "sqlite:///" + str((folder.expanduser().resolve() / STORE_DB))


def local_store_dir(tracking_uri: str) -> Optional[Path]:
    """The folder of a SQLite store's database file, None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):]).parent


class ServerUnreachable(RuntimeError):
    """A tracking server that did not answer within :data:`REACHABILITY_TIMEOUT_S`."""


def open_client(tracking_uri: str):
    """An MLflow client on ``tracking_uri``; a local store's folder is created first.

    Raises:
        ServerUnreachable: a tracking server that does not answer (one line, at once, instead
            of MLflow's minutes of retries).
    """
    problem = unreachable_message(tracking_uri)
    if problem:
        raise ServerUnreachable(problem)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations: one line each
    from mlflow.tracking import MlflowClient

    if _is_http(tracking_uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    folder = local_store_dir(tracking_uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def open_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (or restored from MLflow's bin) when needed.

    Jobs of a parallel sweep may race to create it; the loser reads the winner's.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        folder = local_store_dir(tracking_uri)
        location = None if folder is None else (
            folder / ARTIFACTS_DIR / safe_name(name).replace("/", "_").strip("_ ")).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


class MlflowLogger:
    """One job of a sweep as an MLflow run.

    Args:
        tracking_uri: the store (:func:`resolve_tracking_uri`).
        experiment: the experiment's name (one per sweep).
        run_name: the run's name in the UI (job number and its overrides).
        tags: further tags (``ntk_lab.run_dir`` …).
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 tags: Optional[Mapping[str, str]] = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {TAG_ROLE: ROLE_JOB, **dict(tags or {})}
        self.client = None
        self.run_id: Optional[str] = None

    def start(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client = open_client(self.tracking_uri)
        experiment_id = open_experiment(self.client, self.experiment, self.tracking_uri)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        items = [Param(safe_name(k), param_text(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_row(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step, stamp = int(row["step"]), _now_ms()
        metrics = [Metric(safe_name(k), v, stamp, step) for k, v in metric_values(row).items()]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        for path in run_figures(run_dir):
            self.client.log_artifact(self.run_id, str(path), "plots")
        for name in ("summary.json", "metrics.csv"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        status = str(summary.get("status", "failed"))
        self.client.set_tag(self.run_id, TAG_STATUS, status)
        if summary.get("message"):
            self.client.set_tag(self.run_id, "ntk_lab.message", str(summary["message"])[:5000])
        self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "FAILED"))

    def abandon(self) -> None:
        """After a failure: end the run as FAILED if the store still answers."""
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")


def log_sweep(
    tracking_uri: str, experiment: str, sweep_dir: Path, analysis_dir: Optional[Path],
    params: Mapping[str, Any], status_counts: Mapping[str, int],
) -> str:
    """Record a finished sweep as the parent run of its jobs' runs.

    Args:
        tracking_uri: the store the jobs wrote to.
        experiment: the sweep's experiment name.
        sweep_dir: the sweep folder.
        analysis_dir: its analysis folder (fits.csv, report.html, figures), or None when
            the sweep was not analysed.
        params: what to show as the parent's params (command, grid, settings).
        status_counts: runs per status (``runs_ok``, ``runs_failed`` … metrics).

    Returns:
        The parent run's id. A sweep recorded again (``resume=true``) reuses its parent run.
    """
    client = open_client(tracking_uri)  # first: a server that does not answer, at once
    from mlflow.entities import Metric, Param

    experiment_id = open_experiment(client, experiment, tracking_uri)
    found = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'",
                               max_results=1)
    if found:
        parent = found[0].info.run_id
    else:
        parent = client.create_run(experiment_id, run_name="sweep", tags={
            TAG_ROLE: ROLE_SWEEP, TAG_RUN_DIR: str(sweep_dir)}).info.run_id
        items = [Param(safe_name(k), param_text(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            client.log_batch(parent, params=chunk)
    stamp = _now_ms()
    metrics = [Metric(f"runs_{safe_name(s)}", float(n), stamp, 0)
               for s, n in status_counts.items()]
    if analysis_dir is not None and (Path(analysis_dir) / "fits.csv").is_file():
        metrics += [Metric(k, v, stamp, 0) for k, v in fit_metrics(Path(analysis_dir) / "fits.csv")]
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(parent, metrics=chunk)
    if analysis_dir is not None and Path(analysis_dir).is_dir():
        client.log_artifacts(parent, str(analysis_dir), "analysis")
    for child in _job_runs(client, experiment_id):
        client.set_tag(child, TAG_PARENT, parent)
    client.set_terminated(parent, "FINISHED")
    return parent


def sweep_params(sweep_dir: Path) -> dict[str, str]:
    """The parent run's params: the command, the preset's grid and the config-group choices
    Hydra recorded in ``multirun.yaml`` (:mod:`ntk_lab.analysis.launch`), and the folder."""
    from ntk_lab.records.launch import read_launch

    params = {"sweep_dir": str(Path(sweep_dir).resolve())}
    launch = read_launch(sweep_dir)
    if launch is not None:
        params["command"] = launch.command
        params.update({f"grid.{k}": v for k, v in launch.grid.items()})
        params.update({f"choice.{k}": v for k, v in launch.choices.items()})
        if launch.cwd:
            params["cwd"] = launch.cwd
    return params


def fit_metrics(fits_csv: Path) -> list[tuple[str, float]]:
    """fits.csv as (metric name, value) pairs: ``<metric>_vs_<x>[/<group>]/<field>`` for the
    slope, the interval ends, the intercept and the number of runs of each fit (an empty
    interval, two points, is left out)."""
    import pandas as pd

    fits = pd.read_csv(fits_csv)
    if fits.empty:
        return []
    columns = list(fits.columns)
    group_keys = columns[columns.index("x") + 1: columns.index("slope")]
    out = []
    for _, row in fits.iterrows():
        group = " ".join(f"{k} {_short(row[k])}" for k in group_keys if not _missing(row[k]))
        base = f"{row['metric']}_vs_{row['x']}" + (f"/{group}" if group else "")
        for field in ("slope", "ci_low", "ci_high", "intercept", "n_runs"):
            value = row[field]
            if not _missing(value):
                out.append((safe_name(f"{base}/{field}"), float(value)))
    return out


def _job_runs(client, experiment_id: str) -> Iterable[str]:
    token = None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = '{ROLE_JOB}'",
                                  max_results=1000, page_token=token)
        yield from (run.info.run_id for run in page)
        token = page.token
        if not token:
            return


def safe_name(name: Any) -> str:
    """A metric, param or tag name MLflow accepts on every platform."""
    return _BAD_NAME_CHARS.sub("_", str(name))


def param_text(value: Any) -> str:
    """A param value as text within MLflow's length limit."""
    text = "none" if value is None else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def unreachable_message(tracking_uri: str) -> Optional[str]:
    """One line naming the tracking server (without credentials) and why it cannot be used,
    or None: a reachable server, or a local store (``sqlite:``, ``file:``, a folder)."""
    reason = server_unreachable(tracking_uri)
    if reason is None:
        return None
    return f"the tracking server {_without_credentials(tracking_uri)} is not reachable ({reason})"


def server_unreachable(uri: str, timeout: float = REACHABILITY_TIMEOUT_S) -> Optional[str]:
    """Why the server of an ``http(s)://`` URI did not answer one HTTP request within
    ``timeout`` seconds, in a few words; None when it answered (any status — 401 and 404 are a
    server too, and a TLS handshake is one) and for every other kind of URI, which names a
    local store with no server to wait for.

    The request runs on a daemon thread joined for ``timeout``, so that neither a name lookup
    nor a server that accepts connections and never answers holds the caller longer.
    """
    if not _is_http(uri):
        return None
    outcome: list[Optional[str]] = []
    probe = threading.Thread(target=lambda: outcome.append(_ask(uri, timeout)), daemon=True,
                             name="ntk_lab-tracking-probe")
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer: the server is there (MLflow decides whether to follow it)."""

    def redirect_request(self, *args, **kwargs):
        return None


def _ask(uri: str, timeout: float) -> Optional[str]:
    """One GET of the URI (its credentials left out: any answer will do), on the probe's
    thread; None when something answered, else :func:`_why` it did not."""
    parts = urlsplit(uri)
    url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/", "", ""))
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError:  # a status code: a server answered
        return None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):  # TLS answered; its certificate is MLflow's call
            return None
        return _why(err.reason, timeout)
    except (OSError, HTTPException, ValueError) as err:
        return None if isinstance(err, ssl.SSLError) else _why(err, timeout)


def _why(err: Any, timeout: float) -> str:
    """A failed request's cause in a few words for the warning line (urllib's reasons are
    exceptions or, for a bad URL, text)."""
    if isinstance(err, str):
        return err
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, HTTPException):
        return f"no HTTP answer: {type(err).__name__}"
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is_http(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("http", "https")


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def mlflow_missing() -> Optional[str]:
    """None when MLflow can be imported, else why not (the ImportError)."""
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
