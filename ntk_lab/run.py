"""The Hydra entry point: compose → validate → build → train → write.

    python -m ntk_lab.run                       # Jacot et al. 2018 §6.1 at width 1024
    python -m ntk_lab.run +width=4096           # the same at width 4096
    python -m ntk_lab.run -m +width=64,256,1024 +depth=1,3 +lr=0.1,1.0   # a sweep

This is the only module that touches the Hydra config object; everything it calls takes
plain arguments.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.experimental.callback import Callback
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ntk_lab import experiment
from ntk_lab.analysis import analyze_sweep
from ntk_lab.cli import StopOnSignal, check_command_line, config_dir, execute_study
from ntk_lab.config import STUDY_BLOCKS, ConfigError, logger_config, study_of, validate
from ntk_lab.data import DataError
from ntk_lab.loggers import (
    DEFAULT_STORE_DIR, experiment_name, log_sweep_end, make_logger, prepare_sweep,
)
from ntk_lab.training.loop import Interrupted
from ntk_lab.records import (
    FINISHED_STATUSES, STATUS_FAILED, STATUS_INTERRUPTED, SUMMARY_FILE, find_runs, read_run,
    write_summary,
)

log = logging.getLogger("ntk_lab")


def _user_error(message: str, run_dir: Path, in_multirun: bool, record: bool = True) -> None:
    """Report a bad input in one line; record it; exit non-zero unless other jobs follow."""
    print(f"ntk_lab: error: {message}", file=sys.stderr)
    if record:
        write_summary(run_dir, {"status": STATUS_FAILED, "message": message, "user_error": True})
    if not in_multirun:
        sys.exit(2)


def main() -> None:
    """Console entry point: check the command line in one line, then hand over to Hydra."""
    check_command_line(sys.argv[1:])
    _hydra_main()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_multirun = hydra_cfg.mode == RunMode.MULTIRUN
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    study = study_of(plain)
    if study:  # experiment=coord_check / depth_over_width: a whole study in this one job
        return execute_study(study, cfg)
    try:
        config = validate(plain)
    except ConfigError as err:
        return _user_error(str(err), run_dir, in_multirun)

    if (run_dir / SUMMARY_FILE).exists():  # a folder reused through hydra.run.dir / sweep.dir
        previous = read_run(run_dir)
        if not config.resume:
            return _user_error(f"{run_dir} already holds a run (status {previous.status}); "
                               f"resume=true skips finished runs and reruns the others, or "
                               f"choose a new hydra.run.dir", run_dir, in_multirun, record=False)
        if previous.status in FINISHED_STATUSES:
            print(f"ntk_lab: resume: {run_dir} already finished ({previous.status}); skipped")
            return None

    stop = StopOnSignal()
    stop.install()
    started = time.time()
    try:
        outcome = experiment.run_experiment(config, run_dir, stop_requested=stop, started=started,
                                       job_num=hydra_cfg.job.num if in_multirun else None,
                                       logger=_run_logger(config, hydra_cfg, run_dir, in_multirun))
    except (ConfigError, DataError) as err:
        return _user_error(str(err), run_dir, in_multirun)
    except Interrupted as stop:  # before training began (data, Θ_∞, the prediction's kernels)
        experiment.record_interruption(config, run_dir, stop, started)
        print(f"ntk_lab: interrupted by {stop.name}: {run_dir}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Exception as err:  # a bug or a resource error: recorded, the sweep goes on
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        experiment.record_failure(config, run_dir, message, started)
        print(f"ntk_lab: run failed: {message} (traceback in {run_dir / 'traceback.txt'})",
              file=sys.stderr)
        if not in_multirun:
            sys.exit(1)
        return None
    print(f"ntk_lab: {outcome.status}: outputs in {run_dir}")
    if outcome.status == STATUS_INTERRUPTED:  # a signal ends the whole sweep, not one job
        sys.exit(128 + (stop.signal or signal.SIGINT))
    return None


def _run_logger(config, hydra_cfg, run_dir: Path, in_multirun: bool):
    """The run's experiment tracker (``logger=``): a sweep is one MLflow experiment, each job
    a run named by its number and overrides; the default store is ./outputs/mlflow."""
    cwd = Path(hydra_cfg.runtime.cwd)
    sweep_dir = cwd / hydra_cfg.sweep.dir if in_multirun else None
    run_name = (f"{hydra_cfg.job.num}: {hydra_cfg.job.override_dirname}"[:200] if in_multirun
                else run_dir.name)
    return make_logger(config.logger.name, run_dir, tracking_uri=config.logger.tracking_uri,
                       experiment=experiment_name(config.logger.experiment_name, sweep_dir, cwd),
                       run_name=run_name, default_store_dir=cwd / DEFAULT_STORE_DIR)


# A sweep larger than this is checked one swept value at a time (each value with the other
# keys at their first value) instead of job by job: composing a config takes ~30 ms.
MAX_JOBS_CHECKED_ONE_BY_ONE = 1000


def _sweep_override_sets(config: DictConfig) -> list[tuple[list[str], list[str]]]:
    """(overrides, the swept ones among them) of every job of the sweep (the Cartesian product of the swept values,
    as Hydra's basic sweeper makes it) — or, for a sweep of more than
    ``MAX_JOBS_CHECKED_ONE_BY_ONE`` jobs, one list per swept value: that value, the other
    swept keys at their first value, and every fixed override."""
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(config.hydra.overrides.task)
    params = config.hydra.sweeper.get("params") or {}
    task += [f"{key}={value}" for key, value in params.items()]
    parsed = OverridesParser.create().parse_overrides(task)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    swept = [(o.get_key_element(), list(o.sweep_string_iterator()))
             for o in parsed if o.is_sweep_override()]
    if not swept:
        return [(fixed, [])]
    n_jobs = 1
    for _, values in swept:
        n_jobs *= len(values)
    if n_jobs <= MAX_JOBS_CHECKED_ONE_BY_ONE:
        jobs = [[f"{key}={value}" for (key, _), value in zip(swept, combo)]
                for combo in product(*(values for _, values in swept))]
        return [([*fixed, *job], job) for job in jobs]
    firsts = {key: values[0] for key, values in swept}
    sets = []
    for key, values in swept:
        others = [f"{k}={v}" for k, v in firsts.items() if k != key]
        sets += [([*fixed, *others, f"{key}={value}"], [*others, f"{key}={value}"])
                 for value in values]
    return sets


class AnalyzeSweepCallback(Callback):
    """Checks every value of a sweep before any job starts, and analyses the sweep folder at
    the end of every multirun (off with ``analyze=false``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir() and find_runs(sweep_dir) and not config.get("resume", False):
            print(f"ntk_lab: error: {sweep_dir} already holds runs; resume=true skips the "
                  f"finished ones and reruns the others, or choose a new hydra.sweep.dir",
                  file=sys.stderr)
            sys.exit(2)

        jobs = _sweep_override_sets(config)
        for job_num, (overrides, swept) in enumerate(jobs):
            cfg = compose(config_name="config", overrides=overrides)
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            study = study_of(plain)
            if study and len(jobs) > 1:
                print(f"ntk_lab: error: experiment={study} is a study of its own, not a sweep "
                      f"of runs; run python -m {STUDY_COMMANDS[study]} alone", file=sys.stderr)
                sys.exit(2)
            if study:
                continue  # its settings are checked when it starts
            try:
                run_config = validate(plain)
                problem = experiment.preflight_refusal(run_config, job_num)
            except (ConfigError, DataError) as err:
                problem = str(err)
            if problem:
                job = f"; the job with {' '.join(swept)}" if swept else ""
                print(f"ntk_lab: error: {problem} (sweep stopped before any job ran{job})",
                      file=sys.stderr)
                sys.exit(2)
        _sweep_tracker(config, "start")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed_inputs = _user_errors(sweep_dir)
        if config.get("analyze", True) and sweep_dir.is_dir() and not _is_study(config):
            StopOnSignal().install()  # Ctrl-C during a long analysis: one line, not a traceback
            try:
                analysis_dir = analyze_sweep(sweep_dir, progress=bool(config.get("progress", True)))
            except Interrupted as stop:
                print(f"ntk_lab: analysis interrupted by {stop.name}; rerun it with "
                      f"python -m ntk_lab.analyze {sweep_dir}", file=sys.stderr)
                sys.exit(128 + stop.signum)
            print(f"ntk_lab: sweep analysed: {analysis_dir / 'report.md'} and report.html")
        _sweep_tracker(config, "end")
        if failed_inputs:
            print(f"ntk_lab: error: {len(failed_inputs)} job(s) had invalid settings, e.g. "
                  f"{failed_inputs[0]}", file=sys.stderr)
            sys.exit(2)


# The command line of each study preset (the study also runs here, as one job).
STUDY_COMMANDS = {"coord_check": "ntk_lab.coord_check", "depth_over_width": "ntk_lab.fluctuations"}


def _is_study(config: DictConfig) -> bool:
    """Whether the multirun's config is a study preset's (one job; no sweep analysis)."""
    return study_of({block: config.get(block) for block in STUDY_BLOCKS.values()}) is not None


def _sweep_tracker(config: DictConfig, moment: str) -> None:
    """The sweep's tracker at its ``start`` (MLflow: the store and the experiment are made
    once, before parallel jobs would race to make them) and ``end`` (MLflow: the parent run
    with fits.csv)."""
    section = config.get("logger")
    try:
        logger = logger_config(OmegaConf.to_container(section, resolve=True) if section else {})
    except ConfigError:  # already reported by the checks before any job
        return
    cwd = Path(config.hydra.runtime.cwd)
    sweep_dir = cwd / config.hydra.sweep.dir
    where = dict(tracking_uri=logger.tracking_uri, default_store_dir=cwd / DEFAULT_STORE_DIR,
                 experiment=experiment_name(logger.experiment_name, sweep_dir, cwd))
    if moment == "start":
        prepare_sweep(logger.name, **where)
    else:
        analysis_dir = sweep_dir / "analysis"
        log_sweep_end(logger.name, sweep_dir, analysis_dir if analysis_dir.is_dir() else None,
                      **where)


def _user_errors(sweep_dir: Path) -> list[str]:
    """Messages of the jobs of a sweep that stopped on invalid settings."""
    messages = []
    for path in find_runs(sweep_dir):
        summary = read_run(path).summary
        if summary.get("user_error"):
            messages.append(summary.get("message", ""))
    return messages


if __name__ == "__main__":
    main()
