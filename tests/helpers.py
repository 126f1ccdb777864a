"""Shared test utilities: a throw-away copy of the repository to run the real DVC pipeline in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vapm.bench.pipeline import copy_worktree, set_params
from vapm.bench.pipeline import git_commit as commit_all
from vapm.bench.queue import SMALL_BASELINE

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VENV_BIN = Path(sys.executable).parent


def pipeline_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")  # the copy's code, not the editable install's
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_EXP_NAME", None)
    env["VAPM_NO_PROGRESS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run(cmd: list[str], repo: Path, check: bool = True, timeout: float = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env={**pipeline_env(repo), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def copy_repo(dest: Path) -> Path:
    return copy_worktree(REPO_ROOT, dest)


def git_commit(repo: Path, message: str) -> None:
    commit_all(repo, message)


def update_params(repo: Path, changes: dict[str, object]) -> None:
    """Set dotted keys in the copy's params.yaml (e.g. {'train.epochs': 2})."""
    set_params(repo / "params.yaml", changes)


# Small enough that a whole `dvc repro` takes about a minute on 2 cores, big enough to learn something; the same
# scale as `make bench-queue`'s baseline, so there is one definition of it.
TINY_PIPELINE = SMALL_BASELINE
