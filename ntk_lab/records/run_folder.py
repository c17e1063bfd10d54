"""A run folder on disk: write it atomically, read it back.

Layout (docs/conventions.md, *Output files*)::

    <run_dir>/metrics.csv    one row per checkpoint step
    <run_dir>/summary.json   resolved config, final metrics, status, message, wall time
    <run_dir>/kernels.pt     probe inputs, Θ_∞, NNGP_∞, Θ at each checkpoint (plain tensors)
    <run_dir>/plots/         single-run figures

Every file is written to a temporary name in the same folder and then renamed, so a run that
is interrupted never leaves a half-written file. The analysis stage reads runs only through
:func:`find_runs` and :func:`read_run`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from ntk_lab.records.storage import StoragePlan

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
KERNELS_FILE = "kernels.pt"
PLOTS_DIR = "plots"

# Status values of summary.json. "running" is written when a run starts, so a run killed
# without warning (SIGKILL, node loss) is recognisable as incomplete.
STATUS_RUNNING = "running"
STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"
FINISHED_STATUSES = (STATUS_OK, STATUS_DIVERGED)

# The leading columns of metrics.csv, in this order (docs/conventions.md, *Output files*); others follow sorted.
METRIC_COLUMNS = (
    "step", "time", "train_loss", "test_loss", "kappa", "kernel_distance", "ntk_err_inf",
    "param_change", "jac_change",
)


def _atomic_write(path: Path, write: Any, mode: str) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(text), "w")


def _jsonable(value: Any) -> Any:
    """Turn tensors, numpy scalars and non-finite floats into JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; the status and message say why
    return value


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary.json`` atomically."""
    text = json.dumps(_jsonable(summary), indent=2, sort_keys=True)
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, text + "\n")


def metrics_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column order: the fixed columns (docs/conventions.md, *Output files*), then every other key sorted."""
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    fixed = [c for c in METRIC_COLUMNS if c in keys or c in ("step", "time")]
    return fixed + sorted(keys - set(fixed))


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write all checkpoint rows to ``metrics.csv`` atomically (the whole file each time)."""
    columns = metrics_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(Path(run_dir) / METRICS_FILE, buf.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision, so reruns can be compared byte for byte
    return value


def save_kernels(run_dir: Path, kernels: Mapping[str, Any]) -> None:
    """Save plain tensors (and lists / dicts of them) to ``kernels.pt`` atomically."""
    payload = {k: _to_cpu(v) for k, v in kernels.items()}
    _atomic_write(Path(run_dir) / KERNELS_FILE, lambda f: torch.save(payload, f), "wb")


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def load_kernels(run_dir: Path) -> dict[str, Any]:
    """Load ``kernels.pt`` safely (``weights_only=True``: tensors only, no code), memory-mapped:
    a reader that takes a few rows of the stored Θ_t touches only those pages (a figure of
    one kernel row used to load all K·N² entries, 190 MB at N = 1536, K = 20, and hold them
    again in float64). Writes to the tensors stay private to the process."""
    return torch.load(Path(run_dir) / KERNELS_FILE, map_location="cpu", weights_only=True, mmap=True)


@dataclass
class RunRecord:
    """One run folder as read back.

    Attributes:
        path: the run folder.
        summary: the parsed summary.json (empty when missing or unreadable).
        metrics: metrics.csv as a pandas DataFrame, or ``None`` when missing or unreadable.
        status: summary's status, or ``"incomplete"`` when the folder has no usable summary.
        problem: why the folder is incomplete, if it is.
    """

    path: Path
    summary: dict
    metrics: Optional[Any]
    status: str
    problem: str = ""


def read_run(run_dir: Path) -> RunRecord:
    """Read one run folder; never raises on a damaged or half-written folder."""
    import pandas as pd  # the analysis is the only caller that needs pandas

    run_dir = Path(run_dir)
    summary: dict = {}
    problems = []
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except FileNotFoundError:
        problems.append("no summary.json")
    except (OSError, ValueError) as err:
        problems.append(f"unreadable summary.json ({err.__class__.__name__})")
    metrics = None
    try:
        metrics = pd.read_csv(run_dir / METRICS_FILE)
    except FileNotFoundError:
        problems.append("no metrics.csv")
    except (OSError, ValueError) as err:
        problems.append(f"unreadable metrics.csv ({err.__class__.__name__})")
    status = summary.get("status", "incomplete") if summary else "incomplete"
    if status == STATUS_RUNNING:
        status = "incomplete"
        problems.append("status still 'running' (killed or still in progress)")
    return RunRecord(run_dir, summary, metrics, status, "; ".join(problems))


def is_run_dir(path: Path) -> bool:
    """A run folder has a summary.json, a metrics.csv, or Hydra's ``.hydra`` folder."""
    path = Path(path)
    return any((path / name).exists() for name in (SUMMARY_FILE, METRICS_FILE, ".hydra"))


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (recursively, ``root`` included), sorted.

    ``analysis/``, ``plots/`` and ``.hydra/`` folders are not searched. A multirun's own folder
    holds only ``multirun.yaml`` and so is not a run.
    """
    root = Path(root)
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("analysis", ".hydra", PLOTS_DIR))
        path = Path(dirpath)
        if is_run_dir(path):
            found.append(path)
    return sorted(set(found))


def iter_records(root: Path) -> Iterable[RunRecord]:
    """Read every run under ``root``."""
    for path in find_runs(root):
        yield read_run(path)


class RunRecorder:
    """Collects checkpoint rows and kernels of one run and keeps its folder up to date.

    ``metrics.csv`` is rewritten (atomically) at every checkpoint, so an interrupted run keeps
    every row it reached; ``kernels.pt`` and ``summary.json`` are written by :meth:`finish`.
    Which Θ_t are held (and stored) follows ``plan`` (:mod:`ntk_lab.records.storage`): every one, the
    first and the latest, or none — so memory does not grow with the checkpoints when the
    kernels are large.

    ``kernels.pt`` holds the static tensors given (``probe_x``, ``theta_inf`` and ``nngp_inf``
    as the plan allows, ...), ``checkpoint_steps`` (K,) every checkpoint step, ``steps`` (K',)
    the steps whose Θ is stored, ``theta`` (K', N, N), and ``store`` (the level). With the
    checkpoint geometry's arrays (:mod:`ntk_lab.measures.checkpoint_geometry`) it also holds
    ``eigvals`` (K, N), Θ_t's eigenvalues in decreasing order at every checkpoint (NaN rows
    where none were computed), and — at ``layers_level`` (all / ends / none) —
    ``theta_layers`` (K'', L, N, N) with their steps ``layer_steps`` (K'',).
    """

    _LIMITS = ("theta_inf", "nngp_inf")

    def __init__(self, run_dir: Path, static_kernels: Optional[Mapping[str, Any]] = None,
                 plan: Optional[StoragePlan] = None,
                 on_row: Optional[Callable[[Mapping[str, Any]], None]] = None,
                 layers_level: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.on_row = on_row  # e.g. an experiment tracker's log_row, after metrics.csv is written
        self.rows: list[dict] = []
        self.checkpoint_steps: list[int] = []
        self.steps: list[int] = []
        self.thetas: list[torch.Tensor] = []
        self.plan = plan or StoragePlan("all", None, None, 0)
        self.static_kernels = {k: v for k, v in dict(static_kernels or {}).items()
                               if k not in self._LIMITS or self._keeps(k)}
        self.layers_level = self.plan.level if layers_level is None else layers_level
        self.eigvals: list[Optional[torch.Tensor]] = []
        self.layer_steps: list[int] = []
        self.theta_layers: list[torch.Tensor] = []

    def _keeps(self, name: str) -> bool:
        return self.plan.keeps_nngp if name == "nngp_inf" else self.plan.keeps_limits

    def checkpoint(self, row: Mapping[str, Any], theta: Optional[torch.Tensor],
                   arrays: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        self.rows.append(dict(row))
        step = int(row["step"])
        self.checkpoint_steps.append(step)
        if theta is not None:
            _keep(self.plan.level, self.thetas, self.steps, self.plan.cast_theta(theta.detach()), step)
        arrays = arrays or {}
        eigvals = arrays.get("eigvals")
        self.eigvals.append(None if eigvals is None else eigvals.detach().cpu())
        if arrays.get("theta_layers") is not None:
            _keep(self.layers_level, self.theta_layers, self.layer_steps,
                  self.plan.cast_theta(arrays["theta_layers"].detach()), step)
        write_metrics(self.run_dir, self.rows)
        if self.on_row is not None:
            self.on_row(row)

    def kernels(self) -> dict[str, Any]:
        payload = {k: (self.plan.cast_limit(v) if k in self._LIMITS else v)
                   for k, v in self.static_kernels.items()}
        payload["checkpoint_steps"] = torch.tensor(self.checkpoint_steps, dtype=torch.int64)
        payload["steps"] = torch.tensor(self.steps, dtype=torch.int64)
        payload["store"] = self.plan.level
        if self.thetas:
            payload["theta"] = _stack_in_place(self.thetas)
        present = [e for e in self.eigvals if e is not None]
        if present:
            missing = torch.full_like(present[0], float("nan"))
            payload["eigvals"] = torch.stack([missing if e is None else e for e in self.eigvals])
        if self.theta_layers:
            payload["theta_layers"] = _stack_in_place(self.theta_layers)
            payload["layer_steps"] = torch.tensor(self.layer_steps, dtype=torch.int64)
        return payload

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write metrics.csv once more, kernels.pt, then summary.json last (its status marks the
        run finished). metrics.csv again because a stop signal can land inside
        :meth:`checkpoint` after a row and its Θ_t are kept but before the file is rewritten;
        the two files must hold the same checkpoints."""
        write_metrics(self.run_dir, self.rows)
        save_kernels(self.run_dir, self.kernels())
        write_summary(self.run_dir, summary)


def _stack_in_place(items: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(items)`` without holding the kernels twice: each item is copied into the
    result and replaced in the list by its view of it, so the peak is the stacked tensor plus
    one item (a run storing every Θ_t at N = 1536 peaked 380 MB higher with torch.stack)."""
    out = items[0].new_empty((len(items), *items[0].shape))
    for i in range(len(items)):
        out[i].copy_(items[i])
        items[i] = out[i]
    return out


def _keep(level: str, kept: list, steps: list, value: torch.Tensor, step: int) -> None:
    """Hold ``value`` as ``level`` says: every one (all), the first and the latest (ends), or
    none."""
    if level == "none":
        return
    if level == "ends" and len(kept) == 2:  # keep the first, replace the latest
        kept.pop()
        steps.pop()
    kept.append(value.cpu())
    steps.append(step)
