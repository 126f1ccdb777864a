"""ingest and featurize on a real Dask cluster (issue 24): a `dask scheduler` and two one-thread `dask worker`
processes on 127.0.0.1, started and stopped by `vapm cluster`, against `dvc repro` on the sample data.

The stages write the same bytes (and dvc.lock the same hashes) as the local run; with one worker killed by
SIGKILL in the middle of featurize, the stage still finishes with the same bytes, or fails in one line and
leaves no output.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import copy_repo, pipeline_env, run, update_params

pytestmark = pytest.mark.slow

OUTPUTS = ("data/interim/vision", "data/interim/acoustic", "data/features", "metrics/ingest_report.json", "dvc.lock")
FEATURES = ("data/features/image", "data/features/acoustic_image", "data/features/wavelet")


def snapshot(repo: Path) -> dict[str, str]:
    """SHA-256 of every file of the ingest and featurize outputs, and of dvc.lock."""
    files = []
    for name in OUTPUTS:
        path = repo / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def dask_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the repository with sample_data, ingest and featurize reproduced locally, and their outputs."""
    repo = copy_repo(tmp_path_factory.mktemp("dask") / "repo")
    run(["dvc", "repro", "featurize"], repo, timeout=1200)
    local = snapshot(repo)
    assert any(name.startswith("data/features/wavelet/") for name in local)
    return repo, local


@pytest.fixture(scope="module")
def dask_cluster(dask_repo, tmp_path_factory):
    """`vapm cluster start --workers 2` on 127.0.0.1 with the copy's code; stopped by its process ids after."""
    repo, _ = dask_repo
    state = tmp_path_factory.mktemp("cluster") / "cluster.json"
    started = run([sys.executable, "-m", "vapm", "cluster", "start", "--workers", "2", "--state", str(state)], repo,
                  timeout=300)
    document = json.loads(state.read_text())
    assert started.stdout.strip() == document["address"] and document["address"].startswith("tcp://127.0.0.1:")
    try:
        yield document
    finally:
        run([sys.executable, "-m", "vapm", "cluster", "stop", "--state", str(state)], repo, timeout=120)
        from vapm.core.processes import pid_alive

        assert not any(pid_alive(pid) for pid in document["pids"].values())


def task_prefixes(address: str) -> set[str]:
    """The names of the functions the cluster's scheduler has run tasks of."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)))


def test_ingest_and_featurize_on_the_cluster_write_the_local_bytes(dask_repo, dask_cluster):
    repo, local = dask_repo
    address = dask_cluster["address"]
    proc = run(["dvc", "repro", "--force", "--single-item", "ingest", "featurize"], repo, timeout=1200,
               env={"DASK_SCHEDULER_ADDRESS": address})
    assert f"ingest: hashing and decoding on the Dask cluster {address}" in proc.stdout
    assert f"on the Dask cluster {address}" in proc.stdout.split("Running stage 'featurize'")[1]
    assert {"hash_chunk", "decode_chunk", "clip_range_task"} <= task_prefixes(address)
    assert snapshot(repo) == local


def test_crossval_folds_on_the_cluster_write_the_local_bytes(dask_repo, dask_cluster):
    repo, _ = dask_repo
    address = dask_cluster["address"]
    update_params(repo, {"crossval.folds": 2})
    metrics = repo / "metrics" / "crossval" / "acoustic_svm.json"
    run([sys.executable, "-m", "vapm", "crossval", "acoustic_svm"], repo, timeout=900)
    local = metrics.read_bytes()
    metrics.unlink()
    proc = run([sys.executable, "-m", "vapm", "crossval", "acoustic_svm"], repo, timeout=900,
               env={"DASK_SCHEDULER_ADDRESS": address})
    assert f"2-fold cross-validation, on the Dask cluster {address}" in proc.stdout
    assert "fold_task" in task_prefixes(address)
    assert metrics.read_bytes() == local


def featurize_killing(repo: Path, address: str, victims: list[int]) -> tuple[subprocess.CompletedProcess, int]:
    """`dvc repro --force --single-item featurize`, SIGKILLing each of `victims` (worker pids) as soon as a
    featurize task is on it; (the finished run, how many were killed)."""
    from distributed import Client

    killed = 0
    with Client(address, set_as_default=False) as client:
        addresses = {pid: worker for worker, pid in client.run(os.getpid).items()}
        targets = [addresses[pid] for pid in victims]
        stage = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "featurize"], cwd=repo,
                                 env=pipeline_env(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 900
        while stage.poll() is None and killed < len(victims) and time.monotonic() < deadline:
            processing = client.processing(workers=[targets[killed]]).get(targets[killed], ())
            if any(str(key).startswith("clip_range_task") for key in processing):
                os.kill(victims[killed], signal.SIGKILL)
                killed += 1
            time.sleep(0.01)
        stdout, stderr = stage.communicate(timeout=900)
    return subprocess.CompletedProcess(stage.args, stage.returncode, stdout, stderr), killed


def test_a_worker_killed_mid_featurize_changes_no_byte(dask_repo, dask_cluster):
    """compute.scheduler in params.yaml this time: it invalidates no stage (no stage lists it). The scheduler runs
    the dead worker's tasks again on the other one."""
    repo, local = dask_repo
    address = dask_cluster["address"]
    update_params(repo, {"compute.scheduler": address})
    assert "changed" not in run(["dvc", "status", "ingest", "featurize"], repo).stdout
    proc, killed = featurize_killing(repo, address, [dask_cluster["pids"]["worker-1"]])
    assert killed == 1, f"the featurize tasks never reached worker-1\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"on the Dask cluster {address}" in proc.stdout
    assert snapshot(repo) == local


def test_with_every_worker_killed_featurize_fails_in_one_line_and_leaves_no_output(dask_repo, dask_cluster):
    """The last worker killed mid-featurize: after 60 s without a worker the stage gives up, in one line."""
    repo, _ = dask_repo
    address = dask_cluster["address"]
    proc, killed = featurize_killing(repo, address, [dask_cluster["pids"]["worker-2"]])
    assert killed == 1 and proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("featurize:")]
    assert lines == [f"featurize: Dask cluster {address}: featurize: no worker for 60 s; start workers "
                     "(vapm cluster start) or unset the scheduler"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not any((repo / folder).exists() and any((repo / folder).iterdir()) for folder in FEATURES)
