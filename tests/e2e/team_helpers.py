"""The starting point of docs/team.md, shared by the team tests: built once per test session."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params

ARCHIVES = ["NEU-data-TrainTest.zip", "AirCompressor_Data.zip"]
# A hang guard, not a timing: a tiny `dvc repro` takes about 1.5 minutes on 2 idle cores, and more
# than 15 on a machine shared with several other test sessions.
REPRO_TIMEOUT_S = 3600


def build_team_baseline(dest: Path) -> Path:
    """A repository copy with tiny params whose archives live in data/raw, tracked by `dvc add`, reproduced.

    Stand-ins for the real archives are made by the sample_data stage, as a user copies theirs.
    """
    repo = copy_repo(dest)
    update_params(repo, TINY_PIPELINE)
    run(["python", "stages/sample_data.py"], repo)
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        shutil.copy2(repo / "data" / "sample" / name, repo / "data" / "raw" / name)
    update_params(repo, {"ingest.vision_archive": f"data/raw/{ARCHIVES[0]}",
                         "ingest.acoustic_archive": f"data/raw/{ARCHIVES[1]}"})
    run(["bash", "-c", "dvc add data/raw/*.zip && git add data/raw/*.dvc"], repo)  # as in docs/team.md
    run(["dvc", "repro"], repo, timeout=REPRO_TIMEOUT_S)
    git_commit(repo, "archives tracked in data/raw, tiny pipeline reproduced")
    return repo


def clone_copy(repo: Path, dest: Path) -> Path:
    """A private copy of a repository: git history, DVC cache, outputs and MLflow store."""
    return Path(shutil.copytree(repo, dest, symlinks=True))
