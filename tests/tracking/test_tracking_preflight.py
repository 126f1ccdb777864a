"""A tracking server that is away or refuses: one line, few requests, never a long retry loop.

Real sockets on 127.0.0.1: a bound port nobody listens on, and a tiny HTTP server answering a fixed
status (what a proxy in front of a broken MLflow server does).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import closed_port, http_status_server
from vapm.tracking import runs as tracking

SEARCH = ("POST", "/api/2.0/mlflow/experiments/search")


@pytest.fixture
def quick_retries(monkeypatch):
    """Two retries without waiting between them, so the request count shows the retry policy."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text, repr(text)
    return text


def test_closed_port_fails_with_one_line_naming_the_uri(quick_retries):
    with closed_port() as port:
        uri = f"http://127.0.0.1:{port}"
        with pytest.raises(tracking.TrackingError) as caught:
            tracking.preflight(uri)
    message = one_line(caught.value)
    assert message.startswith(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer")
    assert "connection refused" in message and "make mlflow-server" in message
    assert isinstance(caught.value, tracking.VapmError)


def test_server_answering_503_is_asked_once_plus_the_configured_retries(quick_retries, monkeypatch):
    with http_status_server(503) as server:
        with pytest.raises(tracking.TrackingError) as caught:
            tracking.preflight(server.uri)
        assert server.requests == [SEARCH] * 3
        message = one_line(caught.value)
        assert f"{server.uri} (MLFLOW_TRACKING_URI) answered HTTP 503" in message
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        server.requests.clear()
        with pytest.raises(tracking.TrackingError):
            tracking.preflight(server.uri)
        assert server.requests == [SEARCH]


def test_refused_access_says_which_credentials_to_set(quick_retries):
    with http_status_server(401) as server:
        with pytest.raises(tracking.TrackingError) as caught:
            tracking.preflight(server.uri)
    assert "MLFLOW_TRACKING_USERNAME" in one_line(caught.value)


def test_answering_server_passes_and_local_stores_are_not_contacted(quick_retries, tmp_path):
    with http_status_server(200) as server:
        tracking.preflight(server.uri)
        assert server.requests == [SEARCH]
    tracking.preflight(f"sqlite:///{tmp_path}/absent/mlflow.db")  # SQLite creates its file when logging


def test_tracked_run_checks_before_its_block_runs(quick_retries, monkeypatch, tmp_path):
    entered = []
    with closed_port() as port:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(tracking.TrackingError, match=f"127.0.0.1:{port}"):
            with tracking.tracked_run("vapm-test", "s", "m", {}, []):
                entered.append(True)
    assert entered == []


def test_server_failing_after_the_check_ends_in_one_line(quick_retries, monkeypatch, tmp_path):
    # Answers the preflight, then 503 to everything: a server whose database went away meanwhile.
    with http_status_server(lambda method, path: 200 if (method, path) == SEARCH else 503) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(tracking.TrackingError) as caught:
            with tracking.tracked_run("vapm-test", "s", "svm", {}, []):
                pass
    message = one_line(caught.value)
    assert message.startswith(f"MLflow store {server.uri} failed while logging svm:")
    assert "dvc repro" in message


def test_fast_failure_defaults_are_set_and_user_values_win():
    keys = sorted(tracking.HTTP_DEFAULTS)
    code = f"import os, vapm.tracking.runs; print(*[os.environ[k] for k in {keys!r}])"
    env = {k: v for k, v in os.environ.items() if k not in tracking.HTTP_DEFAULTS}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "5"  # the user's choice
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = [("5" if k == "MLFLOW_HTTP_REQUEST_MAX_RETRIES" else tracking.HTTP_DEFAULTS[k]) for k in keys]
    assert proc.stdout.split() == expected
