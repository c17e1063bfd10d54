"""Records: the run folder on disk — atomic writes, summary.json, metrics.csv, kernels.pt
and its storage policy (``storage``), reading runs back (``run_folder``), and how a sweep was
launched (``launch``).

The floor of the house: imports nothing of ntk_lab. The analysis and the loggers read runs
only through it.
"""

from ntk_lab.records.run_folder import (
    FINISHED_STATUSES, KERNELS_FILE, METRIC_COLUMNS, METRICS_FILE, PLOTS_DIR, STATUS_DIVERGED,
    STATUS_FAILED, STATUS_INTERRUPTED, STATUS_OK, STATUS_RUNNING, SUMMARY_FILE, RunRecord,
    RunRecorder, atomic_write_text, find_runs, is_run_dir, iter_records, load_kernels,
    metrics_columns, read_run, save_kernels, write_metrics, write_summary,
)

__all__ = [
    "FINISHED_STATUSES", "KERNELS_FILE", "METRIC_COLUMNS", "METRICS_FILE", "PLOTS_DIR",
    "STATUS_DIVERGED", "STATUS_FAILED", "STATUS_INTERRUPTED", "STATUS_OK", "STATUS_RUNNING",
    "SUMMARY_FILE", "RunRecord", "RunRecorder", "atomic_write_text", "find_runs", "is_run_dir",
    "iter_records", "load_kernels", "metrics_columns", "read_run", "save_kernels",
    "write_metrics", "write_summary",
]
