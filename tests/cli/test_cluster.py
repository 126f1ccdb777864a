"""`vapm cluster` without a cluster: what it says (tests/e2e/test_dask_cluster.py starts and stops a real one)."""
from __future__ import annotations

import subprocess
import sys


def vapm_cluster(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vapm", "cluster", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_stop_and_status_without_a_cluster_say_so(tmp_path):
    state = str(tmp_path / "none.json")
    stop = vapm_cluster("stop", "--state", state, cwd=tmp_path)
    assert stop.returncode == 0 and stop.stdout.strip() == f"no cluster: {state} does not exist"
    status = vapm_cluster("status", "--state", state, cwd=tmp_path)
    assert status.returncode == 1 and status.stdout.strip() == f"no cluster: {state} does not exist"


def test_a_bad_address_or_worker_count_is_one_line(tmp_path):
    worker = vapm_cluster("worker", "localhost:8786", cwd=tmp_path)
    assert worker.returncode == 1
    assert worker.stderr.strip().splitlines() == [
        "cluster: 'localhost:8786' is not a Dask scheduler address such as tcp://127.0.0.1:8786 (tcp:// or tls://, "
        "a host and a port 1-65535)"]
    start = vapm_cluster("start", "--workers", "0", "--state", str(tmp_path / "s.json"), cwd=tmp_path)
    assert start.returncode == 1 and start.stderr.strip() == "cluster: --workers must be at least 1, got 0"
    assert not (tmp_path / "s.json").exists()
