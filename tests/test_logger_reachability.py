"""A tracking server that does not answer: one short check, one warning line, and the run (or
the sweep) goes on without the tracker instead of sitting through MLflow's retries.

The servers are real sockets on 127.0.0.1: a port with nothing listening (refused at once),
one that listens and never accepts (the kernel completes the TCP handshake, no HTTP answer
ever comes), and a tiny HTTP server (the control: any status is a server). The check and
the make-logger path touch no MLflow code, so only the test of MLflow's retry caps needs the
package.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from ntk_lab.loggers import GuardedLogger, log_sweep_end, make_logger, prepare_sweep
from ntk_lab.loggers import mlflow_logger
from ntk_lab.loggers.mlflow_logger import (
    HTTP_ENV_DEFAULTS, REACHABILITY_TIMEOUT_S, ServerUnreachable, open_client, server_unreachable,
)

SHORT_TIMEOUT_S = 0.5
"""The timeout of the direct checks: short, so that the silent server's case costs half a
second; the make-logger tests use the real :data:`REACHABILITY_TIMEOUT_S`."""

TIMING_MARGIN_S = 1.5
"""Slack over a timeout for starting the probe's thread and the interpreter's scheduling on a
loaded test machine; far below MLflow's own first retry (seconds) and its 120 s timeout."""

EARLY_FRACTION = 0.8
"""A wait on a silent server must last most of the timeout: a faster verdict would mean the
check stopped on something other than the timeout (timers are coarse on some machines)."""


def closed_port() -> int:
    """A port that was free a moment ago and has nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (in the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@contextmanager
def http_server(status: int) -> Iterator[tuple[int, list[str]]]:
    """A server answering every GET with ``status``; yields its port and the paths asked."""
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            paths.append(self.path)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", f"http://127.0.0.1:{closed_port()}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()


def timed(call):
    start = time.monotonic()
    value = call()
    return value, time.monotonic() - start


def warning_records(caplog) -> list[logging.LogRecord]:
    """Every warning of the test, whichever logger emitted it (urllib3's retries included)."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- the check itself


def test_nothing_listening_is_unreachable_at_once():
    reason, took = timed(lambda: server_unreachable(f"http://127.0.0.1:{closed_port()}",
                                                    SHORT_TIMEOUT_S))
    assert reason == "connection refused"
    assert took < SHORT_TIMEOUT_S + TIMING_MARGIN_S


def test_a_server_that_never_answers_is_unreachable_after_the_timeout():
    with silent_server() as port:
        reason, took = timed(lambda: server_unreachable(f"http://127.0.0.1:{port}",
                                                        SHORT_TIMEOUT_S))
    assert reason == f"no answer within {SHORT_TIMEOUT_S:g} s"
    assert EARLY_FRACTION * SHORT_TIMEOUT_S <= took < SHORT_TIMEOUT_S + TIMING_MARGIN_S


@pytest.mark.parametrize("status", [200, 302, 401, 404, 500])
def test_any_http_answer_is_a_server(status):
    """The control for the two above: a status code, a redirect (not followed) or an error
    page all mean something answers; the prefix path is asked, the credentials are not sent
    as part of the host."""
    with http_server(status) as (port, paths):
        reason = server_unreachable(f"http://user:secret@127.0.0.1:{port}/mlflow",
                                    SHORT_TIMEOUT_S)
    assert reason is None
    assert paths == ["/mlflow"]


@pytest.mark.parametrize("uri", ["sqlite:////tmp/nowhere/mlflow.db", "file:///tmp/nowhere",
                                 "/tmp/nowhere", "databricks"])
def test_local_stores_are_not_asked(uri, monkeypatch):
    def no_network(*args):
        raise AssertionError(f"{uri} was checked over the network")

    monkeypatch.setattr(mlflow_logger, "_ask", no_network)
    assert server_unreachable(uri, SHORT_TIMEOUT_S) is None


# ---------------------------------------------------------------- the run's logger


def test_a_run_against_nothing_listening_goes_on_without_the_logger(tmp_path, caplog):
    port = closed_port()
    with caplog.at_level(logging.WARNING):
        logger, took = timed(lambda: make_logger(
            "mlflow", tmp_path / "run", tracking_uri=f"http://user:secret@127.0.0.1:{port}",
            default_store_dir=tmp_path / "store"))
        logger.start({"width": 16})  # forwards nothing: no client, no retries, no warning
        logger.log_row({"step": 0, "loss": 1.0})
        logger.finish({"status": "ok"}, tmp_path / "run")
    assert took < REACHABILITY_TIMEOUT_S + TIMING_MARGIN_S
    assert isinstance(logger, GuardedLogger) and not logger.active
    assert logger.failure and "connection refused" in logger.failure
    warnings = warning_records(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert f"http://127.0.0.1:{port}" in line and "secret" not in line and "\n" not in line
    assert "the run goes on without the logger" in line
    assert not (tmp_path / "store").exists()


def test_a_run_against_a_silent_server_waits_the_timeout_then_goes_on(tmp_path, caplog):
    with silent_server() as port, caplog.at_level(logging.WARNING):
        logger, took = timed(lambda: make_logger(
            "mlflow", tmp_path / "run", tracking_uri=f"http://127.0.0.1:{port}"))
    assert EARLY_FRACTION * REACHABILITY_TIMEOUT_S <= took
    assert took < REACHABILITY_TIMEOUT_S + TIMING_MARGIN_S
    assert not logger.active
    warnings = warning_records(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"no answer within {REACHABILITY_TIMEOUT_S:g} s" in warnings[0].getMessage()


def test_a_run_against_a_server_that_answers_keeps_the_logger(tmp_path, caplog):
    with http_server(200) as (port, _), caplog.at_level(logging.WARNING):
        logger = make_logger("mlflow", tmp_path / "run", tracking_uri=f"http://127.0.0.1:{port}")
    assert logger.active and isinstance(logger.inner, mlflow_logger.MlflowLogger)
    assert not warning_records(caplog)


# ---------------------------------------------------------------- the sweep's hooks


def test_the_sweep_hooks_ask_once_and_warn_once(tmp_path, caplog, monkeypatch):
    asked: list[str] = []

    def counting(uri, timeout=REACHABILITY_TIMEOUT_S):
        asked.append(uri)
        return real(uri, timeout)

    real = mlflow_logger.server_unreachable
    monkeypatch.setattr(mlflow_logger, "server_unreachable", counting)
    uri = f"http://127.0.0.1:{closed_port()}"
    with caplog.at_level(logging.WARNING):
        _, took = timed(lambda: prepare_sweep("mlflow", tracking_uri=uri, experiment="s"))
        assert asked == [uri] and took < REACHABILITY_TIMEOUT_S + TIMING_MARGIN_S
        _, took = timed(lambda: log_sweep_end("mlflow", tmp_path, None, tracking_uri=uri,
                                              experiment="s"))
        assert asked == [uri, uri] and took < REACHABILITY_TIMEOUT_S + TIMING_MARGIN_S
    warnings = [r.getMessage() for r in warning_records(caplog)]
    assert len(warnings) == 2, warnings
    assert "could not prepare the store" in warnings[0] and "not reachable" in warnings[0]
    assert "failed to record the sweep" in warnings[1] and "not reachable" in warnings[1]


def test_open_client_refuses_a_server_that_does_not_answer():
    with pytest.raises(ServerUnreachable, match="not reachable .connection refused.$"):
        open_client(f"http://127.0.0.1:{closed_port()}")


def test_mlflow_retries_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    """Once a client is open on a server, its requests give up in seconds; a value the user
    set stays."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    env = {key: value for key, value in os.environ.items() if key not in HTTP_ENV_DEFAULTS}
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "60"
    monkeypatch.setattr(os, "environ", env)
    with http_server(200) as (port, _):
        open_client(f"http://127.0.0.1:{port}")
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    for key, value in HTTP_ENV_DEFAULTS.items():
        if key != "MLFLOW_HTTP_REQUEST_TIMEOUT":
            assert env[key] == value
    import mlflow.environment_variables as mlflow_env

    for key in HTTP_ENV_DEFAULTS:  # names MLflow reads (a renamed one would cap nothing)
        assert getattr(mlflow_env, key).name == key
