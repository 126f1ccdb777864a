"""The team's MLflow server (PostgreSQL + served artifacts) and DVC's experiment queue, for real.

`mlflow server` on a PostgreSQL cluster of its own (the code behind `make mlflow-server`), both on
127.0.0.1 and stopped by process id at the end; training stages of a tiny reproduced pipeline log
to it at the same time; a server that is away or refuses fails a stage with one line; queued
experiments (`dvc queue start -j 2`) each land in MLflow tagged with their name, in the repository's
SQLite store and on the server.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import pipeline_env, run, update_params
from tests.servers import closed_port, fixed_port_held, http_status_server
from tests.readme import readme_command, start_readme_command, stop, wait_for_http
from tests.e2e.team_helpers import REPRO_TIMEOUT_S, clone_copy
from vapm.tracking.server import start_mlflow
from vapm.tracking.processes import ServerError
from vapm.tracking.postgres import postgres_bindir, postgres_os_user, start_postgres
from vapm.bench.queue import wait_for_queue

pytestmark = pytest.mark.slow

EXPERIMENT = "vapm"  # params.yaml mlflow.experiment
# Hang guards, not timings (this file asserts no durations; docs/team.md has the measured ones).
STAGE_TIMEOUT_S = 300  # a stage against a closed port took 308 s before the fix


def stages_run(dvc_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def no_tracking_uri_left_behind(monkeypatch):
    """The servers here stop with this module: no later test may inherit a URI pointing at them."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)  # MLflow's global, and the variable it exports


@pytest.fixture(scope="module")
def mlflow_server():
    """PostgreSQL + `mlflow server --serve-artifacts` in a temp folder, both on 127.0.0.1."""
    try:
        postgres_bindir()
        postgres_os_user()
    except ServerError as err:
        pytest.skip(str(err))
    # Not under pytest's 0700 temp root: as root the cluster runs as the postgres user, who must reach it.
    folder = Path(tempfile.mkdtemp(prefix="vapm-mlflow-"))
    folder.chmod(0o755)
    password = secrets.token_urlsafe(16)
    postgres = server = None
    try:
        postgres = start_postgres(folder / "pgdata", password, log=folder / "postgres.log")
        server = start_mlflow(postgres.uri(with_password=False), folder / "artifacts", log=folder / "mlflow.log",
                              db_password=password)
        yield {"uri": server.uri, "artifacts": folder / "artifacts", "backend": postgres.uri()}
    finally:
        if server:
            server.stop()
        if postgres:
            postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workspace(team_baseline, tmp_path) -> Path:
    """A private copy of the reproduced tiny pipeline (git history, DVC cache, its runs in mlflow.db)."""
    return clone_copy(team_baseline, tmp_path / "repo")


def env_with(repo: Path, **extra: str) -> dict[str, str]:
    return {**pipeline_env(repo), **extra}


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def runs_by_model(uri: str, experiment: str = EXPERIMENT, filter_string: str = "") -> dict[str, list]:
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], filter_string=filter_string) if found else []
    by_model: dict[str, list] = {}
    for item in runs:
        by_model.setdefault(item.data.tags.get("model"), []).append(item)
    return by_model


def test_two_stages_logging_at_once_both_land_on_the_server(workspace, mlflow_server):
    env = env_with(workspace, MLFLOW_TRACKING_URI=mlflow_server["uri"])
    commands = {"vision_scratch": ["python", "stages/train.py", "vision_scratch"],
                "acoustic_cnn": ["python", "stages/train.py", "acoustic_cnn"]}
    procs = {model: subprocess.Popen(cmd, cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True) for model, cmd in commands.items()}
    for model, proc in procs.items():
        out, err = proc.communicate(timeout=STAGE_TIMEOUT_S)
        assert proc.returncode == 0, f"{model}: {out[-2000:]}\n{err[-3000:]}"

    on_server = runs_by_model(mlflow_server["uri"])
    in_sqlite = runs_by_model(f"sqlite:///{workspace}/mlflow.db")
    assert set(on_server) == set(commands)
    assert len(list(mlflow_server["artifacts"].rglob("MLmodel"))) == len(commands)
    client = client_for(mlflow_server["uri"])
    for model in commands:
        (run_,) = on_server[model]
        (reference,) = in_sqlite[model]  # the same stage, same params, logged by the baseline `dvc repro`
        assert run_.info.status == "FINISHED"
        assert run_.data.params == reference.data.params
        assert set(run_.data.metrics) == set(reference.data.metrics)
        epochs = len(pd.read_csv(workspace / "models" / model / "history.csv"))
        assert len(client.get_metric_history(run_.info.run_id, "loss")) == epochs
        predictions = pd.read_parquet(workspace / "models" / model / "predictions.parquet")
        assert run_.data.metrics["test_accuracy"] == pytest.approx((predictions.y_true == predictions.y_pred).mean())
        assert run_.data.tags["stage"] and run_.data.tags["git_commit"] == run(
            ["git", "rev-parse", "HEAD"], workspace).stdout.strip()
        # Artifacts went through the server into its artifact folder; the model comes back whole.
        assert run_.info.artifact_uri.startswith("mlflow-artifacts:/")
        on_disk = mlflow_server["artifacts"] / run_.info.artifact_uri.removeprefix("mlflow-artifacts:/")
        assert (on_disk / "evaluation" / "confusion_test.png").is_file()
        import mlflow

        # The registered version (champion) is the very model file the stage wrote.
        mlflow.set_tracking_uri(mlflow_server["uri"])
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/vapm-{model}@champion"))
        (served,) = downloaded.rglob("model.keras")
        assert served.read_bytes() == (workspace / "models" / model / "model.keras").read_bytes()


def stage_stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_stage_fails_in_one_line_when_the_server_is_down_or_refuses(workspace):
    before = folder_hashes(workspace / "models" / "acoustic_svm")
    with closed_port() as port, http_status_server(503) as refusing:
        for uri, what in ((f"http://127.0.0.1:{port}", "does not answer: connection refused"),
                          (refusing.uri, "answered HTTP 503")):
            proc = subprocess.run(["python", "stages/train.py", "acoustic_svm"], cwd=workspace,
                                  env=env_with(workspace, MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
                                  timeout=STAGE_TIMEOUT_S)
            assert proc.returncode == 1
            lines = stage_stderr_lines(proc)
            assert len(lines) == 1, proc.stderr
            assert lines[0].startswith(f"train@acoustic_svm: MLflow tracking server {uri} (MLFLOW_TRACKING_URI) {what}")
            assert "Traceback" not in proc.stderr
            assert proc.stdout.strip() == ""  # nothing loaded, nothing trained
        # Checked before training: the stage's outputs are exactly what they were.
        assert folder_hashes(workspace / "models" / "acoustic_svm") == before


def test_dvc_repro_against_an_absent_server_keeps_the_last_good_outputs_recoverable(workspace):
    lock = (workspace / "dvc.lock").read_bytes()
    cached = folder_hashes(workspace / "models" / "acoustic_svm")
    update_params(workspace, {"acoustic_svm.C_grid": [0.5]})
    with closed_port() as port:
        uri = f"http://127.0.0.1:{port}"
        proc = subprocess.run(["dvc", "repro", "train@acoustic_svm"], cwd=workspace,
                              env=env_with(workspace, MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
                              timeout=STAGE_TIMEOUT_S)
    assert proc.returncode != 0
    assert f"train@acoustic_svm: MLflow tracking server {uri}" in proc.stderr and "Traceback" not in proc.stderr
    # DVC removed the stage's outputs before running it (they are in its cache) and recorded nothing.
    assert (workspace / "dvc.lock").read_bytes() == lock
    assert not (workspace / "models" / "acoustic_svm").exists()
    run(["dvc", "checkout", "train@acoustic_svm"], workspace)
    assert folder_hashes(workspace / "models" / "acoustic_svm") == cached
    # With a store that works, the stage runs again (it is not marked done).
    rerun = run(["dvc", "repro", "train@acoustic_svm"], workspace, timeout=REPRO_TIMEOUT_S)
    assert stages_run(rerun.stdout) == {"train@acoustic_svm"}


def test_dvc_repro_against_a_server_failing_midway_keeps_outputs_but_not_the_stage(workspace):
    lock = (workspace / "dvc.lock").read_bytes()
    update_params(workspace, {"acoustic_svm.C_grid": [0.5]})
    search = ("POST", "/api/2.0/mlflow/experiments/search")
    with http_status_server(lambda method, path: 200 if (method, path) == search else 503) as flaky:
        proc = subprocess.run(["dvc", "repro", "train@acoustic_svm"], cwd=workspace,
                              env=env_with(workspace, MLFLOW_TRACKING_URI=flaky.uri), capture_output=True, text=True,
                              timeout=STAGE_TIMEOUT_S)
    assert proc.returncode != 0
    assert f"train@acoustic_svm: MLflow store {flaky.uri} failed while logging acoustic_svm" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The outputs written before logging are there; DVC did not record the stage, so it is still due.
    assert (workspace / "models" / "acoustic_svm" / "model.skops").is_file()
    assert (workspace / "dvc.lock").read_bytes() == lock
    assert "train@acoustic_svm" in run(["dvc", "status"], workspace).stdout
    rerun = run(["dvc", "repro", "train@acoustic_svm"], workspace, timeout=REPRO_TIMEOUT_S)
    assert stages_run(rerun.stdout) == {"train@acoustic_svm"}


def queue_the_readmes_three(repo: Path, env: dict[str, str]) -> list[str]:
    """The README's queue: three experiments queued, `dvc queue start -j 2`, then wait for them."""
    readme_command("dvc exp run --queue -S acoustic_svm.C_grid='[0.2]' --name svm-c0p2", repo, env=env)
    readme_command("dvc exp run --queue -S acoustic_svm.C_grid='[2.0]' --name svm-c2", repo, env=env)
    readme_command("dvc exp run --queue -S acoustic_svm.C_grid='[20.0]' --name svm-c20", repo, env=env)
    readme_command("dvc queue start -j 2", repo, env=env)
    return ["svm-c0p2", "svm-c2", "svm-c20"]


def check_queue(repo: Path, env: dict[str, str], names: list[str], uri: str) -> None:
    assert wait_for_queue(repo, names, env=env, timeout=REPRO_TIMEOUT_S) == {n: "Success" for n in names}
    shown = readme_command("dvc exp show", repo, env={**env, "COLUMNS": "400"}).stdout
    for name in names:
        assert name in shown, shown
    runs = runs_by_model(uri, filter_string="tags.model = 'acoustic_svm'")["acoustic_svm"]
    tagged = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    for name in names:
        assert tagged[name].info.status == "FINISHED", name
        c = json.loads(tagged[name].data.params["acoustic_svm.C_grid"])
        assert f"c{c[0]:g}".replace(".", "p") in name
        assert tagged[name].data.tags["dvc_exp_baseline_rev"] == run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def test_queued_experiments_run_two_at_a_time_into_the_repositorys_sqlite_store(workspace):
    # A fresh store, as in a new clone: the first two queued stages create it at the same time.
    (workspace / "mlflow.db").unlink()
    shutil.rmtree(workspace / "mlruns")
    env = env_with(workspace)
    names = queue_the_readmes_three(workspace, env)
    check_queue(workspace, env, names, f"sqlite:///{workspace}/mlflow.db")
    # Queued runs execute in temporary copies: their artifacts still belong to the real repository.
    runs = runs_by_model(f"sqlite:///{workspace}/mlflow.db", filter_string="tags.model = 'acoustic_svm'")
    for item in runs["acoustic_svm"]:
        assert item.info.artifact_uri.startswith(str(workspace.resolve() / "mlruns"))
    assert not list((workspace / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))


def test_queued_experiments_log_to_the_tracking_server(workspace, mlflow_server):
    # The queue's workers inherit the environment of `dvc queue start`.
    env = env_with(workspace, MLFLOW_TRACKING_URI=mlflow_server["uri"])
    names = queue_the_readmes_three(workspace, env)
    check_queue(workspace, env, names, mlflow_server["uri"])


def test_make_mlflow_server_takes_the_readmes_stages(team_baseline):
    """`make mlflow-server` as the README runs it, then a stage logging there through the exported URI."""
    try:
        postgres_bindir()
        postgres_os_user()
    except ServerError as err:
        pytest.skip(str(err))
    # Outside pytest's 0700 temp root: as root the cluster runs as the postgres user, who must reach it.
    with fixed_port_held(5000):  # make ui listens there too
        folder = Path(tempfile.mkdtemp(prefix="vapm-make-mlflow-"))
        folder.chmod(0o755)
        try:
            repo = clone_copy(team_baseline, folder / "repo")
            repo.chmod(0o755)
            server = start_readme_command("make mlflow-server", repo)
            uri = "http://127.0.0.1:5000"
            try:
                wait_for_http(f"{uri}/health", server)
                update_params(repo, {"acoustic_svm.C_grid": [0.5]})
                proc = readme_command("dvc repro", repo, env={"MLFLOW_TRACKING_URI": uri}, timeout=REPRO_TIMEOUT_S)
                assert stages_run(proc.stdout) == {"train@acoustic_svm", "evaluate"}
                (logged,) = runs_by_model(uri)["acoustic_svm"]
                assert logged.info.status == "FINISHED" and logged.info.artifact_uri.startswith("mlflow-artifacts:/")
            finally:
                output = stop(server)
            assert "MLflow tracking server on http://127.0.0.1:5000" in output, output[-3000:]
            # Both servers stopped with it: nothing listens any more, PostgreSQL's pid file is gone.
            assert not (repo / ".mlflow-server" / "pgdata" / "postmaster.pid").exists()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

