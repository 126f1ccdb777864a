"""The SQLite store under queued experiments: runs land in the real repository, never in a temp copy.

`dvc queue start -j 2` runs stages in temporary copies (DVC_ROOT names the real repository), several at
once, often before the repository has an mlflow.db.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vapm.tracking import runs as tracking

# A stage's logging, started by a go-file so that several processes hit a fresh store together.
STAGE = """
import sys, time
from pathlib import Path
from vapm.tracking import runs as tracking
go, name = Path(sys.argv[1]), sys.argv[2]
while not go.exists():
    time.sleep(0.01)
with tracking.tracked_run("vapm-test", "train_x", name, {"n": name}, []):
    tracking.log_metrics({"accuracy": 0.5})
    artifact = Path(name + ".txt")
    artifact.write_text(name)
    tracking.log_artifact(artifact)
"""


def stage_env(repo: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME")}
    env["DVC_ROOT"] = str(repo)  # what `dvc exp run --queue` exports to every stage
    return env


def test_parallel_stages_in_temp_copies_share_the_real_repositorys_fresh_store(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    go = tmp_path / "go"
    names = ["model_a", "model_b", "model_c"]
    procs = []
    for name in names:
        copy = repo / ".dvc" / "tmp" / "exps" / f"tmp{name}"  # each queued experiment's temporary copy
        copy.mkdir(parents=True)
        procs.append(subprocess.Popen([sys.executable, "-c", STAGE, str(go), name], cwd=copy, env=stage_env(repo),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(0.5)  # not a timing assertion: only lets the processes reach their wait loop before "go"
    go.touch()
    for name, proc in zip(names, procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"

    import mlflow

    uri = f"sqlite:///{repo.resolve()}/mlflow.db"
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("vapm-test").experiment_id])
    assert sorted(r.info.run_name for r in runs) == names
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        # Beside the real repository's store, where it outlives the temporary copy.
        assert run.info.artifact_uri.startswith(str(repo.resolve() / "mlruns")), run.info.artifact_uri
        stored = Path(run.info.artifact_uri) / f"{run.info.run_name}.txt"
        assert stored.read_text() == run.info.run_name
    assert not list((repo / ".dvc").rglob("mlflow.db")) and not list((repo / ".dvc").rglob("mlruns"))


def test_artifacts_beside_a_chosen_sqlite_store_and_the_servers_choice_otherwise(tmp_path):
    assert tracking._artifact_location(f"sqlite:///{tmp_path}/store/x.db") == str(tmp_path.resolve() / "store" / "mlruns")
    assert tracking._artifact_location("http://127.0.0.1:5000") is None
