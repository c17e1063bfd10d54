"""Shared test helpers: float64 tiny networks and running the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
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

    The child is forked from :mod:`tests.cli_server`, which has the imports done (a separate
    process all the same: exit code, output, cwd and environment of its own); with
    ``env_extra`` (read at interpreter start, e.g. PYTHONPATH) or ``address_space_bytes``, or
    with NTK_LAB_TEST_SUBPROCESS=1, a fresh interpreter is started instead.

    ``address_space_bytes``: an RLIMIT_AS (``ulimit -v``) for the child, so that a large
    allocation fails for real while the memory preflight (which reads free RAM) lets it start.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    if env_extra is None and address_space_bytes is None and not os.environ.get("NTK_LAB_TEST_SUBPROCESS"):
        return _CLI_SERVER.run(module, args, cwd, env, timeout)
    limit = None
    if address_space_bytes is not None:
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


class _ForkServer:
    """Client of :mod:`tests.cli_server`, started on first use, one per pytest session."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_server.py")],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                         env=env, cwd=str(REPO.parent))
            self.buffer = b""
            assert self._reply(120).get("ready"), "the CLI fork server did not start"
        return self.proc

    def _reply(self, timeout: float | None) -> dict | None:
        """The server's next JSON line, or None after ``timeout`` seconds without one."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the CLI fork server exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, module: str, args: list[str], cwd: Path, env: dict, timeout: float):
        proc = self._start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd),
                       "env": env, "out": str(out), "err": str(err)}
            proc.stdin.write((json.dumps(request) + "\n").encode())
            pid = self._reply(60)["pid"]
            done = self._reply(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired([module, *args], timeout)
            code = done["returncode"]
            return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code,
                                               out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_CLI_SERVER = _ForkServer()


@pytest.fixture(scope="session", autouse=True)
def _close_cli_server():
    yield
    _CLI_SERVER.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory outside the repository, as a user's would be."""
    d = tmp_path / "work"
    d.mkdir()
    return d
