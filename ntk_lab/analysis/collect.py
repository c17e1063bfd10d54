"""Collect the run folders under a sweep root into one tidy pandas table.

Runs are read only through :mod:`ntk_lab.records` (docs/architecture.md): ``find_runs`` finds the
folders and ``read_run`` parses them without raising. This module adds what the analysis
needs on top: numeric metric columns, the run's config on every checkpoint row, and which
config knobs the sweep varied.

Every flat (non-dict, non-list) key of ``summary.json`` other than the run bookkeeping in
:data:`RUN_INFO_COLUMNS` is taken as a config value. Per-run bookkeeping that is not
config (versions, host names, timestamps) must therefore live inside a dict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
from pandas.api.types import is_numeric_dtype
from tqdm.auto import tqdm

from ntk_lab.records import METRIC_COLUMNS, STATUS_OK, RunRecord, find_runs, read_run

STATUS_INCOMPLETE = "incomplete"

# summary.json keys that describe how the run went rather than what it was.
RUN_INFO_COLUMNS = ("diverged_step", "wall_time_s", "message", "last_step", "user_error")

# The resolved config keys, in the order the tables show them (docs/conventions.md, *Output files*); other flat
# summary keys follow, sorted.
CONFIG_ORDER = (
    "width", "depth", "lr", "seed", "activation", "parameterization", "w_std", "b_std",
    "dataset", "n_train", "n_probe", "ntk_method", "device", "dtype", "steps", "out_dim",
    "output_scale", "center", "batch_size",
)
NUMERIC_CONFIG = (
    "width", "depth", "lr", "seed", "w_std", "b_std", "n_train", "n_probe", "steps",
    "out_dim", "output_scale", "batch_size",
)

# Config columns never used to group runs: width is the x axis, seeds are replicates, and
# the NTK method and device change no number (every method returns the same kernel).
NOT_GROUP_KEYS = ("width", "seed", "ntk_method", "device")

# A missing config value means "not recorded" (an older run), not a setting of its own —
# except where null is itself a setting: batch_size null is full-batch gradient descent.
NULL_IS_SETTING = ("batch_size",)

_LAYER_COLUMN = re.compile(r"^param_change_layer(\d+)$")


def layer_columns(columns: Sequence[str]) -> list[str]:
    """The ``param_change_layer<l>`` columns, ordered by layer number."""
    found = [(int(m.group(1)), c) for c in columns if (m := _LAYER_COLUMN.match(c))]
    return [c for _, c in sorted(found)]


def layer_number(column: str) -> int:
    """The layer number l of a ``param_change_layer<l>`` column."""
    match = _LAYER_COLUMN.match(column)
    if match is None:
        raise ValueError(f"not a per-layer column: {column!r}")
    return int(match.group(1))


def sort_key(value: Any) -> tuple:
    """A key that sorts values of mixed types: numbers, then strings, then missing values."""
    if is_missing(value):
        return (2, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def is_missing(value: Any) -> bool:
    """True for None, NaN and pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def same_value(a: Any, b: Any) -> bool:
    """Equality where missing equals missing and 2 == 2.0."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    return bool(a == b)


def distinct_values(series: pd.Series) -> list:
    """Distinct values of a column (a missing value counts once), sorted by :func:`sort_key`."""
    out: list = []
    for value in series.tolist():
        if not any(same_value(value, seen) for seen in out):
            out.append(value)
    return sorted(out, key=sort_key)


def setting_values(series: pd.Series, column: str) -> list:
    """The distinct settings of a config column; missing values count only where null is a
    setting (:data:`NULL_IS_SETTING`)."""
    values = distinct_values(series)
    if column in NULL_IS_SETTING:
        return values
    return [v for v in values if not is_missing(v)]


def format_value(value: Any) -> str:
    """A short text form of a config value: 0.1, 64, ntk, none."""
    if is_missing(value):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def group_label(group: Mapping[str, Any]) -> str:
    """``depth=2, lr=0.1``, or ``all runs`` for the empty group."""
    if not group:
        return "all runs"
    return ", ".join(f"{k}={format_value(v)}" for k, v in group.items())


def iter_groups(
    frame: pd.DataFrame, keys: Sequence[str]
) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """Yield ``(group values, rows)`` for each combination of ``keys``, in sorted order.

    Missing values form their own group (a knob left unset is still a setting).
    """
    keys = list(keys)
    if not keys:
        if len(frame):
            yield {}, frame
        return
    grouped = frame.groupby(keys, dropna=False, sort=False)
    items = [(dict(zip(keys, k if isinstance(k, tuple) else (k,))), g) for k, g in grouped]
    items.sort(key=lambda item: tuple(sort_key(item[0][k]) for k in keys))
    yield from items


@dataclass
class Sweep:
    """Every run under one root, read and tabulated.

    Attributes:
        root: the folder that was searched.
        records: one :class:`~ntk_lab.records.RunRecord` per run folder found.
        runs: the tidy table, one row per run × checkpoint: ``run_dir``, ``status``, the
            config columns, every metric column, then the run-info columns.
        run_info: one row per run folder (also those without metrics): ``run_dir``,
            ``status``, ``problem``, the config columns and the run-info columns.
        config_columns: the config columns, in display order.
        metric_columns: the metric columns, ``step`` first.
        knobs: the config columns (less :data:`NOT_GROUP_KEYS`) that take more than one
            setting across ok runs, each with its sorted settings.
    """

    root: Path
    records: list[RunRecord]
    runs: pd.DataFrame
    run_info: pd.DataFrame
    config_columns: list[str]
    metric_columns: list[str]
    knobs: dict[str, list] = field(default_factory=dict)

    @property
    def group_keys(self) -> list[str]:
        """The swept knobs that split runs into fit groups."""
        return list(self.knobs)

    def ok_rows(self) -> pd.DataFrame:
        """All checkpoint rows of runs whose status is ok."""
        if not len(self.runs):
            return self.runs
        return self.runs[self.runs["status"] == STATUS_OK]

    def at_init(self) -> pd.DataFrame:
        """The step-0 row of every ok run (runs without a step-0 checkpoint are absent)."""
        rows = self.ok_rows()
        if not len(rows):
            return rows
        return rows[rows["step"] == 0]

    def at_final(self) -> pd.DataFrame:
        """The last checkpoint row of every ok run."""
        rows = self.ok_rows()
        if not len(rows):
            return rows
        return rows.sort_values(["run_dir", "step"]).groupby("run_dir", sort=True).tail(1)

    def values(self, column: str, ok_only: bool = True) -> list:
        """Distinct settings of a config column over (ok) runs (see :func:`setting_values`)."""
        info = self.run_info
        if ok_only and len(info):
            info = info[info["status"] == STATUS_OK]
        if column not in info.columns or not len(info):
            return []
        return setting_values(info[column], column)


def collect_sweep(root: Path, progress: bool = False) -> Sweep:
    """Read every run folder under ``root`` into a :class:`Sweep`; never raises on a bad run.
    ``progress``: a tqdm bar over the folders (a sweep of thousands of runs takes minutes)."""
    root = Path(root)
    folders = find_runs(root)
    records = [_read_record(path) for path in tqdm(folders, desc="reading runs", unit="run",
                                                   disable=not progress, leave=False)]
    metrics = [_clean_metrics(record.metrics) for record in records]
    metric_columns = _metric_columns([m for m in metrics if m is not None])
    config_columns = _config_columns(records, exclude=metric_columns)
    info_rows, frames = [], []
    for record, run_metrics in zip(records, metrics):
        info = {
            "run_dir": _relative(record.path, root), "status": record.status,
            "problem": record.problem,
            **{k: record.summary.get(k) for k in (*config_columns, *RUN_INFO_COLUMNS)},
        }
        info_rows.append(info)
        if run_metrics is not None and len(run_metrics):
            frames.append(_with_run_columns(run_metrics, info))
    run_info = _coerce_config(pd.DataFrame(info_rows, columns=_info_columns(config_columns)))
    columns = ["run_dir", "status", *config_columns, *metric_columns, *RUN_INFO_COLUMNS]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    runs = _coerce_config(runs.reindex(columns=columns))
    knobs = swept_knobs(run_info, config_columns)
    return Sweep(root, records, runs, run_info, config_columns, metric_columns, knobs)


def swept_knobs(run_info: pd.DataFrame, config_columns: Sequence[str]) -> dict[str, list]:
    """The config columns (less :data:`NOT_GROUP_KEYS`) with more than one setting in ok runs."""
    if not len(run_info):
        return {}
    ok = run_info[run_info["status"] == STATUS_OK]
    knobs = {}
    for column in config_columns:
        if column in NOT_GROUP_KEYS:
            continue
        values = setting_values(ok[column], column)
        if len(values) > 1:
            knobs[column] = values
    return knobs


def _read_record(path: Path) -> RunRecord:
    """``read_run``, hardened: a summary that is not a JSON object makes the run incomplete."""
    try:
        record = read_run(path)
    except Exception as err:  # read_run is meant not to raise; a damaged folder still must not
        return RunRecord(path, {}, None, STATUS_INCOMPLETE, _error_text("unreadable run", err))
    if not isinstance(record.summary, dict):
        return RunRecord(path, {}, record.metrics, STATUS_INCOMPLETE,
                         "summary.json is not a JSON object")
    if not isinstance(record.status, str) or not record.status:
        record.status = STATUS_INCOMPLETE
        record.problem = record.problem or "summary.json has no status"
    return record


def _error_text(what: str, err: BaseException) -> str:
    return f"{what} ({err.__class__.__name__}: {err})"


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return rel or "."


def _config_columns(records: Sequence[RunRecord], exclude: Sequence[str]) -> list[str]:
    owned = {"run_dir", "status", "problem", *RUN_INFO_COLUMNS, *exclude}
    keys: set[str] = set()
    for record in records:
        for key, value in record.summary.items():
            if key not in owned and not isinstance(value, (dict, list)):
                keys.add(key)
    known = [k for k in CONFIG_ORDER if k in keys]
    return known + sorted(keys - set(known))


def _info_columns(config_columns: Sequence[str]) -> list[str]:
    return ["run_dir", "status", "problem", *config_columns, *RUN_INFO_COLUMNS]


def _coerce_config(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers written as text in an old summary become numbers; anything else is kept."""
    frame = frame.copy()
    for column in NUMERIC_CONFIG:
        if column in frame.columns and not is_numeric_dtype(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.notna().sum() == frame[column].notna().sum():
                frame[column] = converted
    return frame


def _clean_metrics(metrics: Any) -> pd.DataFrame | None:
    """Numeric columns, one row per step (the last written wins), sorted by step."""
    if not isinstance(metrics, pd.DataFrame) or "step" not in metrics.columns:
        return None
    frame = metrics.loc[:, [c for c in metrics.columns if isinstance(c, str)]].copy()
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame.dropna(subset=["step"])
    frame = frame.drop_duplicates("step", keep="last").sort_values("step")
    frame["step"] = frame["step"].astype("int64")
    return frame.reset_index(drop=True)


def _with_run_columns(metrics: pd.DataFrame, info: Mapping[str, Any]) -> pd.DataFrame:
    """The metric rows with the run's folder, status and config repeated on each."""
    frame = metrics.copy()
    for key, value in info.items():
        if key != "problem" and key not in frame.columns:
            frame[key] = [value] * len(frame)
    return frame


def _metric_columns(frames: Sequence[pd.DataFrame]) -> list[str]:
    """``step`` and the fixed columns (docs/conventions.md, *Output files*) first, per-layer columns by layer, the rest sorted."""
    reserved = {"run_dir", "status", "problem", *RUN_INFO_COLUMNS}
    seen: set[str] = set()
    for frame in frames:
        seen.update(c for c in frame.columns if c not in reserved)
    fixed = [c for c in METRIC_COLUMNS if c in seen]
    layers = layer_columns(sorted(seen))
    rest = sorted(seen - set(fixed) - set(layers))
    return fixed + layers + rest
