"""``logger=tensorboard``: the run's events in ``<run_dir>/tb/``, written by torch's SummaryWriter.

- every metrics.csv column (``step`` is the x axis) as a scalar at its step, flushed at each
  checkpoint so a long run can be watched live;
- at the end, the single-run figures (``plots/*.png``) as images at the last step, the
  summary as text, and the settings with the final metrics (``final/<metric>``) on the
  HParams dashboard — so ``tensorboard --logdir <sweep>`` compares every job of a sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ntk_lab.loggers.base import final_metrics, metric_values, run_figures

TB_DIR = "tb"
FINAL_PREFIX = "final/"  # HParams metric tags, apart from the per-step scalars
FIGURE_PREFIX = "plots/"


class TensorBoardLogger:
    """Writes one run's TensorBoard events.

    Args:
        run_dir: the run folder; events go to ``run_dir / "tb"``.
    """

    def __init__(self, run_dir: Path):
        self.log_dir = Path(run_dir) / TB_DIR
        self.writer = None
        self.params: dict[str, Any] = {}
        self.last_step = 0

    def start(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.params = hparam_values(params)

    def log_row(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for tag, value in metric_values(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        self.last_step = step

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        for path in run_figures(run_dir):
            self.writer.add_image(FIGURE_PREFIX + path.stem, read_png(path), self.last_step,
                                  dataformats="HWC")
        text = json.dumps({k: v for k, v in summary.items() if k != "versions"}, indent=2,
                          sort_keys=True, default=str)
        self.writer.add_text("summary", "```\n" + text + "\n```", self.last_step)
        finals = {FINAL_PREFIX + k: v for k, v in final_metrics(summary).items() if k != "step"}
        params = {**self.params, "status": str(summary.get("status", ""))}
        # run_name "." keeps the HParams session in this run's folder (torch's default is a
        # new timestamped sub-folder, which TensorBoard would list as a second run).
        self.writer.add_hparams(params, finals, run_name=".", global_step=self.last_step)
        self.writer.close()
        self.writer = None

    def abandon(self) -> None:
        """Close the writer after a failure (whatever it still holds may be lost)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def hparam_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as HParams accepts them: numbers stay numbers; bools and None become text
    (torch files a bool as the number 1/0 and drops None, which would lose the setting)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, bool) or value is None:
            out[key] = str(value).lower() if value is not None else "none"
        elif isinstance(value, (int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def read_png(path: Path) -> np.ndarray:
    """A PNG as an (H, W, 3) uint8 array (alpha dropped: the figures are opaque)."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def tensorboard_missing() -> Optional[str]:
    """None when torch's SummaryWriter can be used, else why not (the ImportError)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        return str(err)
    return None
