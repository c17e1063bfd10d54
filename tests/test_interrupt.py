"""Ctrl-C (SIGINT) and SIGTERM end a run within moments wherever it is — computing Θ_∞ before
training, or training — as ``interrupted``, with every file already written intact and the
exit code 128 + the signal (130, 143). A real interpreter per case: the signal handling of a
command line is under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# From the signal to the process's end: the handler raises at the next bytecode, the runner
# writes summary.json (and kernels.pt), the interpreter exits. ~0.3 s when the machine is
# quiet; the bound leaves room for a loaded 2-core CI machine.
EXIT_WITHIN_S = 6.0
START_TIMEOUT_S = 120.0

# A globally pooled CNN's Θ_∞ on 256 + 512 digits images takes minutes: a signal lands in it.
DURING_THETA_INF = ["model=cnn", "data=digits", "+width=16", "lazy.infinite_width=true"]
# A small MLP trained for far longer than the test waits: a signal lands in training.
DURING_TRAINING = ["+width=64", "train.steps=1000000", "ntk.checkpoints=40",
                   "lazy.infinite_width=false"]


def _start(args: list[str], run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "ntk_lab.run", *args, "progress=false",
                             f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, signum: int) -> tuple[float, str]:
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return time.monotonic() - sent, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_theta_inf_ends_the_run_at_once(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(DURING_THETA_INF, run_dir)
    _wait_for(run_dir / ".hydra" / "config.yaml", proc)
    time.sleep(2.0)  # into the data and Θ_∞ (the first checkpoint is minutes away)
    assert not (run_dir / "metrics.csv").exists(), "training began: the case lost its point"
    took, err = _stop(proc, signum)
    assert proc.returncode == 128 + signum, err
    assert took < EXIT_WITHIN_S, took
    assert err.strip().splitlines()[-1].startswith("ntk_lab: interrupted by"), err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert signal.Signals(signum).name in summary["message"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_keeps_the_rows_and_kernels_reached(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(DURING_TRAINING, run_dir)
    _wait_for(run_dir / "metrics.csv", proc)
    time.sleep(1.0)
    took, err = _stop(proc, signum)
    assert proc.returncode == 128 + signum, err
    assert took < EXIT_WITHIN_S, took
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "during training" in summary["message"]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert len(metrics) >= 1 and metrics["step"].is_monotonic_increasing
    kernels = torch.load(run_dir / "kernels.pt", weights_only=True)
    assert kernels["checkpoint_steps"].tolist() == metrics["step"].tolist()
    assert summary["final"]["step"] == metrics["step"].iloc[-1]
