"""Fixtures only the end-to-end tests use (shared ones are in tests/conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def team_baseline(tmp_path_factory, worker_id: str) -> Path:
    """docs/team.md's starting point (tiny params, archives in data/raw under `dvc add`, reproduced), built once
    per test run: under `make test-slow`'s worker processes (pytest-xdist) the first worker to need it builds it in
    the run's shared temp folder while the others wait on a lock, then all copy it (tests never change it)."""
    from tests.e2e.team_helpers import build_team_baseline
    from tests.servers import file_lock

    if worker_id == "master":  # one process
        return build_team_baseline(tmp_path_factory.mktemp("team-baseline") / "repo")
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    repo, done = shared / "team-baseline" / "repo", shared / "team-baseline.done"
    with file_lock(shared / "team-baseline.lock"):
        if not done.exists():
            shutil.rmtree(repo.parent, ignore_errors=True)  # what a worker that failed to build it left
            build_team_baseline(repo)
            done.touch()
    return repo
