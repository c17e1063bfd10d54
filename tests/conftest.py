"""Shared test helpers: float64 tiny networks and running the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tiny settings that make a real run take a second or two on a 2-core CPU.
TINY = ["width=16", "depth=1", "train.steps=5", "ntk.checkpoints=3", "data.n_probe=8",
        "data.n_test=16", "progress=false"]


def run_cli(args: list[str], cwd: Path, module: str = "ntk_lab.run", timeout: int = 300,
            env_extra: dict | None = None,
            address_space_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` in ``cwd`` (not the repo root) and capture output.

    ``address_space_bytes``: an RLIMIT_AS (``ulimit -v``) for the child, so that a large
    allocation fails for real while the memory preflight (which reads free RAM) lets it start.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    limit = None
    if address_space_bytes is not None:
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory outside the repository, as a user's would be."""
    d = tmp_path / "work"
    d.mkdir()
    return d
