"""Sweeps that survive: bad input, divergence, failure, interruption, resume, launchers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntk_lab.records import load_kernels, read_run
from tests.conftest import TINY, run_cli

BAD_INPUTS = [
    (["width=0"], "width=0 is invalid: must be an integer >= 1"),
    (["+depth=-1"], "depth=-1 is invalid: must be an integer >= 1"),
    (["lr=-0.5"], "lr=-0.5 is invalid: must be a number > 0"),
    (["data.n_probe=1"], "data.n_probe=1 is invalid: must be an integer >= 2"),
    (["model.activation=swish"], "model.activation='swish' is invalid: allowed: relu, leaky_relu"),
    (["model.parameterization=lecun"], "allowed: ntk, standard, mup"),
    (["ntk.method=fast"], "allowed: auto, jacrev, ntvp, structured"),
    (["data=file", "data.path=missing.npz"], "data.path: file not found"),
    (["data=file", "data.path=bad.npz"], "data.path: bad.npz lacks array(s) ['y']"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_a_nonzero_exit(workdir, args, message):
    import numpy as np

    np.savez(workdir / "bad.npz", x=np.ones((10, 2)))
    keys = {a.lstrip("+").split("=")[0] for a in args}
    result = run_cli([*[a for a in TINY if a.split("=")[0] not in keys], *args], workdir)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and message in errors[0], result.stderr
    assert errors[0].startswith("ntk_lab: error: ")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args,message", [
    (["data=imagenet"], "data='imagenet' is invalid: allowed: cifar10, circle, digits, fashion_mnist, file, mnist, sphere_teacher"),
    (["-m", "data=circle,imagenet"], "data='imagenet' is invalid"),
    (["experiment=wdth_sweep"], "experiment='wdth_sweep' is invalid: allowed: alpha_sweep"),
    (["model.activaton=tanh"], "model.activaton is not a setting; model has: activation"),
    (["+widht=64"], "widht is not a setting; top-level keys: analyze, depth"),
])
def test_an_unknown_option_or_key_gives_one_line_with_the_allowed_ones(workdir, args, message):
    result = run_cli([*TINY, *args], workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_bad_sweep_value_stops_the_sweep_before_any_job(workdir):
    result = run_cli(["-m", "+width=8,0", *[a for a in TINY if not a.startswith("width")]], workdir)
    assert result.returncode == 2
    assert "width=0 is invalid" in result.stderr and "Traceback" not in result.stderr
    assert not list(workdir.rglob("metrics.csv"))


def test_sweep_with_a_diverging_and_a_failing_job_finishes_the_others(workdir):
    # Width 20000 needs 1.6 GB per copy of its hidden matrix: the memory preflight (free RAM)
    # lets it start, and the child's 2 GB address-space limit makes the allocation fail for
    # real — a resource error in that job, not a bad input.
    tiny = [a for a in TINY if not a.startswith(("width", "train.steps", "depth"))]
    result = run_cli(["-m", "+width=8,20000", "+lr=0.5,1e8", "train.steps=30", "depth=2", *tiny],
                     workdir, address_space_bytes=2 * 10**9)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((workdir / "outputs" / "multirun").glob("*/*"))
    statuses = {}
    for job in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        s = read_run(job).summary
        statuses[(s["width"], s["lr"])] = s["status"]
    assert statuses[(8, 0.5)] == "ok"
    assert statuses[(8, 1e8)] == "diverged"
    assert statuses[(20000, 0.5)] == statuses[(20000, 1e8)] == "failed"
    report = (sweep / "analysis" / "report.md").read_text()
    assert "diverged" in report and "failed" in report


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    start = time.time()
    while not path.exists():
        if time.time() - start > timeout:
            raise TimeoutError(path)
        time.sleep(0.2)


def test_sigterm_mid_run_leaves_interrupted_loadable_files_and_resume_completes(workdir):
    sweep_dir = workdir / "sweep"
    tiny = [a for a in TINY if not a.startswith(("width", "train.steps", "ntk.checkpoints"))]
    args = ["-m", "+width=8,16", "train.steps=200000", "ntk.checkpoints=200", *tiny,
            f"hydra.sweep.dir={sweep_dir}", "analyze=false"]
    proc = subprocess.Popen([sys.executable, "-m", "ntk_lab.run", *args], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(sweep_dir / "0" / "metrics.csv")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    first = read_run(sweep_dir / "0")
    assert first.status == "interrupted", first.summary
    assert load_kernels(sweep_dir / "0")["theta"].shape[0] == len(first.metrics)
    # the same sweep again without resume: refused, nothing overwritten
    again = run_cli(args, workdir)
    assert again.returncode == 2 and "already holds runs" in again.stderr
    # with resume and a short training: the interrupted job reruns, job 1 runs
    resume = [a if not a.startswith("train.steps") else "train.steps=5" for a in args]
    result = run_cli([*resume, "resume=true"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_run(sweep_dir / "0").status == "ok" and read_run(sweep_dir / "1").status == "ok"
    # resuming a finished sweep skips every job
    result = run_cli([*resume, "resume=true"], workdir)
    assert result.stdout.count("already finished") == 2


@pytest.mark.parametrize("launcher", ["local_parallel", pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_launchers_run_a_two_job_sweep(workdir, launcher):
    tiny = [a for a in TINY if not a.startswith("width")]
    result = run_cli(["-m", f"hydra/launcher={launcher}", "+width=8,16", *tiny], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(workdir.rglob("summary.json"))
    assert len(summaries) == 2
    assert all(json.loads(p.read_text())["status"] == "ok" for p in summaries)
