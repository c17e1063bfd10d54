"""Loggers end to end (slow): sweeps from the command line with ``logger=tensorboard`` and
``logger=mlflow``, read back with TensorBoard's and MLflow's own readers, and trackers that
fail (a store that cannot be written, one broken or locked mid-run, a missing package).

Each sweep is two tiny jobs in a working folder outside the repository, as a user runs it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from ntk_lab.records import read_run
from tests.conftest import TINY, run_cli
from tests.test_loggers import LOGGER, run_with

pytestmark = pytest.mark.slow

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import (  # noqa: E402
    EventMultiplexer,
)

from ntk_lab.loggers import make_logger  # noqa: E402
from ntk_lab.loggers.mlflow_logger import (  # noqa: E402
    STORE_DB, TAG_PARENT, TAG_ROLE, fit_metrics, resolve_tracking_uri,
)

WIDTHS = ("16", "32")
SWEEP = ["-m", f"width={','.join(WIDTHS)}", *[a for a in TINY if not a.startswith("width")]]


def sweep(workdir: Path, name: str, *extra: str) -> Path:
    result = run_cli([*SWEEP, *extra, f"hydra.sweep.dir=sweeps/{name}"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return workdir / "sweeps" / name


def test_tensorboard_sweep_is_one_logdir_with_a_run_per_job(workdir):
    root = sweep(workdir, "tb", "logger=tensorboard")
    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(root))
    events.Reload()
    runs = events.Runs()
    assert sorted(runs) == ["0/tb", "1/tb"]  # what `tensorboard --logdir <sweep>` lists
    for job, width in zip(("0", "1"), WIDTHS):
        frame = read_run(root / job).metrics
        kappa = events.Scalars(f"{job}/tb", "kappa")
        assert [e.step for e in kappa] == frame["step"].tolist()
        assert [e.value for e in kappa] == pytest.approx(frame["kappa"].tolist(), rel=1e-6)
        assert events.PluginRunToTagToContent("hparams")[f"{job}/tb"]  # the HParams session
        assert runs[f"{job}/tb"]["images"] == ["plots/loss_kappa", "plots/ntk_circle"]
    assert (root / "analysis" / "report.html").is_file()


def test_two_mlflow_sweeps_go_into_one_default_store_under_outputs(workdir):
    roots = [sweep(workdir, name, "logger=mlflow") for name in ("first", "second")]
    store = workdir / "outputs" / "mlflow"
    assert (store / STORE_DB).is_file()
    client = MlflowClient(resolve_tracking_uri(None, store))
    names = sorted(e.name for e in client.search_experiments())
    assert names == ["Default", "sweeps/first", "sweeps/second"]
    for root in roots:
        experiment = client.get_experiment_by_name(f"sweeps/{root.name}")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags[TAG_ROLE] == "sweep"]
        jobs = sorted((r for r in runs if r.data.tags[TAG_ROLE] == "job"),
                      key=lambda r: r.info.run_name)
        assert [r.info.run_name.split(":")[0] for r in jobs] == ["0", "1"]
        for job, width in zip(jobs, WIDTHS):
            assert job.data.params["width"] == width and job.info.status == "FINISHED"
            assert job.data.tags[TAG_PARENT] == parent.info.run_id
            frame = read_run(Path(job.data.tags["ntk_lab.run_dir"])).metrics
            history = client.get_metric_history(job.info.run_id, "kappa")
            assert [(m.step, m.value) for m in history] == list(zip(frame["step"], frame["kappa"]))
        fits = root / "analysis" / "fits.csv"
        expected = dict(fit_metrics(fits))
        assert expected and {k: v for k, v in parent.data.metrics.items()
                             if not k.startswith("runs_")} == expected
        assert parent.data.metrics["runs_ok"] == 2
        assert parent.data.params["command"].startswith("python -m ntk_lab.run -m width=16,32")
        shown = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
        assert {"analysis/report.html", "analysis/fits.csv", "analysis/report.md"} <= shown
        assert pd.read_csv(fits)["slope"].notna().all()


def test_a_store_that_cannot_be_written_leaves_the_sweep_and_its_files_intact(workdir):
    (workdir / "blocker").write_text("a file, not a folder")
    root = sweep(workdir, "blocked", "logger=mlflow", "logger.tracking_uri=blocker/store")
    for job in ("0", "1"):
        record = read_run(root / job)
        assert record.status == "ok" and (root / job / "plots" / "loss_kappa.png").is_file()
    log = (root / "0" / "run.log").read_text()
    assert log.count("logger=mlflow failed") == 1 and "the run goes on" in log
    assert (root / "analysis" / "report.html").is_file()


def test_a_missing_package_is_one_line_naming_the_extra_before_any_job(workdir):
    hide = workdir / "hide"
    (hide / "mlflow").mkdir(parents=True)
    (hide / "mlflow" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'mlflow'\")\n")
    result = run_cli([*SWEEP, "logger=mlflow", "hydra.sweep.dir=sweeps/none"], workdir,
                     env_extra={"PYTHONPATH": str(hide)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ntk_lab: error: logger=mlflow needs the mlflow package")
    assert '".[mlflow]"' in lines[0]
    assert not list((workdir / "sweeps").rglob("summary.json"))


def _broken_after_first_row(logger, action):
    """The real guarded logger, with ``action`` done to its store after the first row."""
    seen = []

    class Tap:
        start, finish = logger.start, logger.finish

        @staticmethod
        def log_row(row):
            logger.log_row(row)
            seen.append(row["step"])
            if len(seen) == 1:
                action()

    return Tap(), seen


def test_a_store_broken_mid_run_warns_once_and_the_run_keeps_its_files(tmp_path, caplog):
    folder, run_dir = tmp_path / "store", tmp_path / "run"
    logger = make_logger("mlflow", run_dir, tracking_uri=str(folder), experiment="broken")

    def disk_fails():  # the store's file becomes garbage under the open client
        db = folder / STORE_DB
        db.write_bytes(b"\0" * db.stat().st_size)

    tap, seen = _broken_after_first_row(logger, disk_fails)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        outcome, record = run_with(tap, run_dir)
    assert outcome.status == "ok" and len(seen) == len(record.metrics) >= 4
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "logger=mlflow failed in log_row" in warnings[0], warnings
    assert "not a database" in warnings[0]
    assert (run_dir / "plots" / "loss_kappa.png").is_file()


def test_a_store_locked_mid_run_warns_once_and_the_run_goes_on(tmp_path, caplog):
    folder, run_dir = tmp_path / "store", tmp_path / "run"
    logger = make_logger("mlflow", run_dir, tracking_uri=str(folder), experiment="locked")
    release = threading.Event()

    def hold_lock():  # another process holds the database: writers wait, then give up
        def holder():
            con = sqlite3.connect(folder / STORE_DB, isolation_level=None,
                                  check_same_thread=False)
            con.execute("BEGIN EXCLUSIVE")
            release.wait(120)
            con.execute("ROLLBACK")
            con.close()
        threading.Thread(target=holder, daemon=True).start()
        time.sleep(0.5)

    tap, _ = _broken_after_first_row(logger, hold_lock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        outcome, record = run_with(tap, run_dir)
    release.set()
    assert outcome.status == "ok" and record.status == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "database is locked" in warnings[0], warnings


def test_parallel_jobs_share_a_fresh_store_without_racing(workdir):
    """joblib's two worker processes start together; the store and the experiment were made
    before them, so neither fails on a half-created schema."""
    root = sweep(workdir, "parallel", "logger=mlflow", "hydra/launcher=local_parallel",
                 "hydra.launcher.n_jobs=2")
    client = MlflowClient(resolve_tracking_uri(None, workdir / "outputs" / "mlflow"))
    experiment = client.get_experiment_by_name("sweeps/parallel")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags[TAG_ROLE] for r in runs) == ["job", "job", "sweep"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for job in ("0", "1"):
        assert "logger=mlflow failed" not in (root / job / "run.log").read_text()
