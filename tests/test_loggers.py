"""TensorBoard and MLflow loggers, read back with their own readers.

Real runs (tiny, in-process through :func:`ntk_lab.experiment.run_experiment`) write to a real
TensorBoard event file and a real MLflow SQLite store; the tests then read those back with
TensorBoard's EventAccumulator and the MLflow client and compare them with the run folder
the same run wrote (metrics.csv, summary.json, plots/), which is the independent record.
End-to-end sweeps through the command line are in test_loggers_cli.py (slow).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntk_lab.analysis import collect_sweep, fit_sweep
from ntk_lab.experiment import run_experiment
from ntk_lab.config import ConfigError, logger_config
from ntk_lab.loggers import GuardedLogger, experiment_name, log_sweep_end, make_logger
from ntk_lab.loggers.tensorboard_logger import FINAL_PREFIX, FIGURE_PREFIX, TB_DIR
from ntk_lab.records import read_run
from tests.test_analysis import metric_rows, summary_for, write_run
from tests.test_train import tiny_config

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from ntk_lab.loggers.mlflow_logger import (  # noqa: E402
    STORE_DB, TAG_PARENT, TAG_ROLE, TAG_STATUS, MlflowLogger, fit_metrics, resolve_tracking_uri,
)

# TensorBoard stores scalars as float32: a float64 metric comes back within float32's
# relative rounding (2^-24 ≈ 6e-8); 1e-6 leaves room and still catches a wrong value.
FLOAT32_REL = 1e-6
# MLflow stores metrics as float64: they come back exactly.
LOGGER = "ntk_lab.loggers"


def run_with(logger, run_dir: Path, **overrides):
    outcome = run_experiment(tiny_config(**overrides), run_dir, logger=logger)
    return outcome, read_run(run_dir)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "step"]


# ---------------------------------------------------------------- one run, both trackers


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store for this module (creating its schema takes seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = resolve_tracking_uri(str(folder), folder)
    MlflowClient(uri).search_experiments()  # creates the schema
    return folder, uri, MlflowClient(uri)


class Both:
    """Hands every call to two trackers (one tiny run then feeds both readers)."""

    def __init__(self, *loggers):
        self.loggers = loggers

    def start(self, params):
        for logger in self.loggers:
            logger.start(params)

    def log_row(self, row):
        for logger in self.loggers:
            logger.log_row(row)

    def finish(self, summary, run_dir):
        for logger in self.loggers:
            logger.finish(summary, run_dir)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, store):
    """A tiny run logged to TensorBoard and to MLflow (experiment "one run")."""
    folder, _, _ = store
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    tb = make_logger("tensorboard", run_dir)
    ml = make_logger("mlflow", run_dir, tracking_uri=str(folder), experiment="one run",
                     run_name="tiny")
    outcome, record = run_with(Both(tb, ml), run_dir)
    assert outcome.status == "ok" and tb.active and ml.active
    return run_dir, record


@pytest.fixture(scope="module")
def tb_run(tracked_run):
    run_dir, record = tracked_run
    events = EventAccumulator(str(run_dir / TB_DIR),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return run_dir, record, events


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_has_every_metrics_csv_column_at_its_steps(tb_run):
    _, record, events = tb_run
    frame = record.metrics
    assert "kappa" in frame.columns and len(frame) >= 4
    scalars = set(events.Tags()["scalars"])
    for column in metric_columns(frame):
        expected = frame[["step", column]].dropna()
        assert column in scalars, column
        logged = events.Scalars(column)
        assert [e.step for e in logged] == expected["step"].tolist(), column
        for event, value in zip(logged, expected[column]):
            assert event.value == pytest.approx(value, rel=FLOAT32_REL, abs=1e-30), column


def test_tensorboard_images_are_the_run_figures(tb_run):
    run_dir, record, events = tb_run
    figures = sorted((run_dir / "plots").glob("*.png"))
    assert [p.name for p in figures] == ["loss_kappa.png", "ntk_circle.png"]
    from PIL import Image

    assert sorted(events.Tags()["images"]) == [FIGURE_PREFIX + p.stem for p in figures]
    for path in figures:
        (image,) = events.Images(FIGURE_PREFIX + path.stem)
        with Image.open(path) as png:
            assert (image.width, image.height) == png.size
        assert image.step == record.metrics["step"].iloc[-1]


def test_tensorboard_hparams_hold_the_settings_and_final_metrics(tb_run):
    _, record, events = tb_run
    content = events.PluginTagToContent("hparams")
    data = {k: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items()}
    start = next(d.session_start_info for d in data.values()
                 if d.WhichOneof("data") == "session_start_info")
    summary = record.summary
    for key in ("width", "depth", "lr", "seed", "w_std", "b_std", "n_probe"):
        assert start.hparams[key].number_value == summary[key], key
    for key in ("activation", "parameterization", "dataset", "status"):
        assert start.hparams[key].string_value == str(summary[key]), key
    assert start.hparams["batch_size"].string_value == "none"  # None kept, as text
    experiment = next(d.experiment for d in data.values() if d.WhichOneof("data") == "experiment")
    tags = {m.name.tag for m in experiment.metric_infos}
    assert FINAL_PREFIX + "kappa" in tags and FINAL_PREFIX + "train_loss" in tags
    (final_kappa,) = events.Scalars(FINAL_PREFIX + "kappa")
    assert final_kappa.value == pytest.approx(summary["final"]["kappa"], rel=FLOAT32_REL)


# ---------------------------------------------------------------- MLflow


def runs_of(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return client.search_runs([found.experiment_id])


def test_mlflow_run_holds_params_metric_histories_and_artifacts(store, tracked_run, tmp_path):
    _, uri, client = store
    run_dir, record = tracked_run
    (run,) = runs_of(client, "one run")
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.tags[TAG_STATUS] == "ok" and run.data.tags[TAG_ROLE] == "job"
    summary = record.summary
    for key in ("width", "depth", "lr", "seed", "activation", "parameterization", "dataset"):
        assert run.data.params[key] == str(summary[key]), key
    assert run.data.params["batch_size"] == "none"
    frame = record.metrics
    for column in metric_columns(frame):
        history = client.get_metric_history(run.info.run_id, column)
        expected = frame[["step", column]].dropna()
        assert [m.step for m in history] == expected["step"].tolist(), column
        assert [m.value for m in history] == expected[column].tolist(), column
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"plots", "summary.json", "metrics.csv"}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_kappa.png", "plots/ntk_circle.png"}
    fetched = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="summary.json", tracking_uri=uri,
        dst_path=str(tmp_path / "download")))
    assert json.loads(fetched.read_text()) == summary
    assert client.get_run(run.info.run_id).data.tags["ntk_lab.run_dir"] == str(run_dir.resolve())


def test_two_sweeps_into_one_store_with_parent_runs_holding_the_fits(store, tmp_path):
    folder, uri, client = store
    sweeps = {}
    for name, slope_depth in (("sweep_a", 1), ("sweep_b", 2)):
        root = tmp_path / name
        experiment = experiment_name(None, root, tmp_path)
        assert experiment == name
        for index, width in enumerate((64, 128, 256)):
            summary = summary_for(width, slope_depth, 0)
            rows = metric_rows(width, slope_depth, 0)
            run_dir = write_run(root / str(index), summary, rows)
            logger = MlflowLogger(uri, experiment, f"{index}: width={width}")
            logger.start({k: summary[k] for k in ("width", "depth", "seed")})
            for row in rows:
                logger.log_row(row)
            logger.finish(summary, run_dir)
        analysis = root / "analysis"
        analysis.mkdir()
        fits = fit_sweep(collect_sweep(root)).table
        fits.to_csv(analysis / "fits.csv", index=False)
        (analysis / "report.html").write_text("<!DOCTYPE html><title>r</title>")
        log_sweep_end("mlflow", root, analysis, tracking_uri=str(folder), experiment=experiment)
        sweeps[name] = (root, fits)

    for name, (root, fits) in sweeps.items():
        runs = runs_of(client, name)
        parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
        jobs = [r for r in runs if r.data.tags.get(TAG_ROLE) == "job"]
        assert len(parents) == 1 and len(jobs) == 3, name
        parent = parents[0]
        assert all(j.data.tags[TAG_PARENT] == parent.info.run_id for j in jobs)
        assert parent.data.metrics["runs_ok"] == 3
        assert parent.data.params["sweep_dir"] == str(root.resolve())
        # every fit of fits.csv, read here with pandas, is a metric of the parent run
        kappa = fits[fits["metric"] == "kappa"].iloc[0]
        assert parent.data.metrics["kappa_vs_width/slope"] == kappa["slope"]
        assert parent.data.metrics["kappa_vs_width/n_runs"] == kappa["n_runs"]
        logged = {k: v for k, v in parent.data.metrics.items() if not k.startswith("runs_")}
        assert logged == dict(fit_metrics(root / "analysis" / "fits.csv"))
        n_intervals = int(fits["ci_low"].notna().sum())
        assert sum(k.endswith("/ci_low") for k in logged) == n_intervals
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
        assert artifacts == {"analysis/fits.csv", "analysis/report.html"}
    # the two sweeps' slopes differ (depth 1 vs 2 laws), so nothing was mixed up
    a = runs_of(client, "sweep_a")
    b = runs_of(client, "sweep_b")
    slope = lambda runs: next(r for r in runs if r.data.tags[TAG_ROLE] == "sweep"  # noqa: E731
                              ).data.metrics["kappa_vs_width/slope"]
    assert slope(a) != pytest.approx(slope(b), abs=0.1)


def test_a_store_that_cannot_be_written_warns_once_then_stays_quiet(tmp_path, caplog):
    """The tracker fails at start; later calls do nothing. (A whole run against such a store,
    keeping its files, is in test_loggers_cli.py.)"""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    run_dir = write_run(tmp_path / "run", summary_for(64, 1, 0), metric_rows(64, 1, 0))
    logger = make_logger("mlflow", run_dir, tracking_uri=str(blocker / "store"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        logger.start({"width": 64})
        for row in metric_rows(64, 1, 0):
            logger.log_row(row)
        logger.finish(summary_for(64, 1, 0), run_dir)
        log_sweep_end("mlflow", tmp_path, None, tracking_uri=str(blocker / "store"),
                      experiment="x")
    assert not logger.active
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 2, warnings  # one for the run, one for the sweep's parent run
    assert "logger=mlflow failed in start" in warnings[0] and "the run goes on" in warnings[0]
    assert "failed to record the sweep" in warnings[1]
    assert not (blocker.parent / "store").exists()


# ---------------------------------------------------------------- guard, names, settings


class Flaky:
    """A tracker that fails at its second row, as a full disk would."""

    def __init__(self):
        self.calls = []

    def start(self, params):
        self.calls.append("start")

    def log_row(self, row):
        self.calls.append(row["step"])
        if len(self.calls) == 3:
            raise OSError(28, "No space left on device")

    def finish(self, summary, run_dir):
        self.calls.append("finish")


def test_guard_forwards_until_the_first_failure_then_nothing(caplog):
    inner = Flaky()
    guard = GuardedLogger(inner, "tensorboard")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard.start({})
        for step in range(5):
            guard.log_row({"step": step})
        guard.finish({}, Path("."))
    assert inner.calls == ["start", 0, 1]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "logger=tensorboard failed in log_row" in warning and "No space left" in warning


def test_missing_packages_are_one_line_errors_naming_the_extra(monkeypatch):
    for package, extra in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, package, None)  # `import mlflow` now raises ImportError
            with pytest.raises(ConfigError) as err:
                logger_config({"name": package})
        message = str(err.value)
        assert "\n" not in message
        assert f"logger={package}" in message and f'".[{extra}]"' in message
    assert logger_config({"name": "none"}).name == "none"
    with pytest.raises(ConfigError, match="allowed: none, tensorboard, mlflow"):
        logger_config({"name": "wandb"})
    with pytest.raises(ConfigError, match="logger.tracking_uri"):
        logger_config({"name": "mlflow", "tracking_uri": 3})


def test_tracking_uri_and_experiment_names(tmp_path):
    assert resolve_tracking_uri(None, tmp_path / "d") == f"sqlite:///{tmp_path}/d/{STORE_DB}"
    assert resolve_tracking_uri(str(tmp_path / "x"), tmp_path) == f"sqlite:///{tmp_path}/x/{STORE_DB}"
    for uri in ("sqlite:///a/b.db", "http://127.0.0.1:5000", "postgresql://u@h/db"):
        assert resolve_tracking_uri(uri, tmp_path) == uri
    sweep = tmp_path / "outputs" / "multirun" / "2026-01-01" / "10-00-00_000001"
    assert experiment_name(None, sweep, tmp_path) == "outputs/multirun/2026-01-01/10-00-00_000001"
    assert experiment_name(None, Path("/elsewhere/s"), tmp_path) == "/elsewhere/s"
    assert experiment_name("mine", sweep, tmp_path) == "mine"
    assert experiment_name(None, None, tmp_path) == "ntk_lab runs"


def test_fit_metric_names_are_valid_mlflow_names(tmp_path):
    fits = pd.DataFrame([
        {"metric": "kappa", "step": 100, "x": "width", "depth": 2.0, "lr": 0.1,
         "slope": -0.9, "intercept": 1.0, "ci_low": -1.0, "ci_high": -0.8, "n_runs": 9,
         "n_widths": 3, "ci_method": "bootstrap"},
        {"metric": "kappa", "step": 100, "x": "output_scale", "depth": 2.0, "lr": math.nan,
         "slope": -1.0, "intercept": 0.0, "ci_low": math.nan, "ci_high": math.nan,
         "n_runs": 2, "n_widths": 2, "ci_method": "none"},
    ])
    fits.to_csv(tmp_path / "fits.csv", index=False)
    names = dict(fit_metrics(tmp_path / "fits.csv"))
    assert names["kappa_vs_width/depth 2 lr 0.1/slope"] == -0.9
    assert names["kappa_vs_width/depth 2 lr 0.1/ci_high"] == -0.8
    assert "kappa_vs_output_scale/depth 2/ci_low" not in names  # no interval from two points
    from mlflow.utils.validation import _validate_metric_name

    for name in names:
        _validate_metric_name(name)
    assert np.isfinite(list(names.values())).all()
