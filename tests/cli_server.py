"""A fork server for the CLI tests: `python -m <module> <args>` without paying the imports.

Every CLI test used to start a fresh interpreter, and ~3 of its ~4 seconds went to importing
torch, Hydra, pandas and ntk_lab — about half of the fast suite's time. This server imports
them once; each request is run in a FORKED child, so the child is a separate process exactly
as before: its own exit code, its own stdout and stderr (files), its own working directory
and environment, nothing left behind in the server. The child runs the module as
``python -m`` does (``runpy`` with ``run_name="__main__"``, ``sys.argv[0]`` the module's
file) and ends the way the interpreter would: exit code from ``SystemExit``, a traceback on
stderr and code 1 for an uncaught exception, after atexit handlers and non-daemon threads.

Safe to fork because the server never runs a torch operation (no thread pools exist yet).

Protocol (one JSON object per line): request ``{"module", "args", "cwd", "env", "out",
"err"}`` on stdin; the server answers ``{"pid": …}`` once the child is started and
``{"returncode": …}`` when it has ended (a client that times out kills the pid).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
import traceback

PRELOAD = ("torch", "hydra", "omegaconf", "pandas", "matplotlib.pyplot", "scipy.integrate",
           "ntk_lab.run", "ntk_lab.analyze")


def _child(request: dict) -> int:
    """Run one request in this (forked) process; returns the exit code."""
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the protocol's stdin is not the child's
    os.close(devnull)
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["module"], *request["args"]]
    sys.modules.pop(request["module"], None)  # `python -m` has it as __main__ only
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 — what the interpreter does at top level
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads
        import atexit

        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def serve() -> None:
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    for name in PRELOAD:
        importlib.import_module(name)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        reply.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        reply.write(json.dumps({"returncode": code}) + "\n")


if __name__ == "__main__":
    serve()
