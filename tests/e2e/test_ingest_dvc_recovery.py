"""A wrong archive path through `dvc repro`: what DVC removes, what the stage says, and the recovery.

DVC (3.x) removes a stage's outputs before it runs the command, and before it checks that the
dependencies exist (Stage.run: remove_outs, then run_stage -> save_deps). So no check inside the stage
can keep them: a missing archive fails in DVC itself, an archive that exists but is wrong fails in the
stage, and either way the earlier outputs are gone from the workspace (not from the cache). The stage
names the recovery; these tests run it with real DVC and check it restores every output byte for byte.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params

pytestmark = pytest.mark.slow

RECOVERY = "dvc checkout ingest && git checkout -- metrics/ingest_report.json"


def ingest_outputs(repo: Path) -> dict[str, bytes]:
    files = [path for path in (repo / "data" / "interim").rglob("*") if path.is_file()]
    files += [repo / "metrics" / "ingest_report.json"]
    return {str(path.relative_to(repo)): path.read_bytes() for path in files if path.is_file()}


@pytest.fixture(scope="module")
def ingested_repo(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    repo = copy_repo(tmp_path_factory.mktemp("dvc_recovery") / "repo")
    update_params(repo, {key: value for key, value in TINY_PIPELINE.items() if key.startswith("sample_data")})
    run(["dvc", "repro", "ingest"], repo)
    git_commit(repo, "ingested")
    outputs = ingest_outputs(repo)
    assert sorted(outputs) == ["data/interim/acoustic/clips.npy", "data/interim/acoustic/manifest.parquet",
                               "data/interim/acoustic/record.json", "data/interim/vision/manifest.parquet",
                               "data/interim/vision/pixels.npy", "metrics/ingest_report.json"]
    return repo, outputs


def recover(repo: Path) -> None:
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    run(["dvc", "checkout", "ingest"], repo)
    subprocess.run(["git", "checkout", "--", "metrics/ingest_report.json"], cwd=repo, check=True)


def test_an_archive_that_is_not_a_zip_fails_in_the_stage_naming_it_and_the_recovery(ingested_repo):
    repo, outputs = ingested_repo
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (repo / "data" / "raw" / "NEU.zip").write_text("not a zip")
    update_params(repo, {"ingest.vision_archive": "data/raw/NEU.zip"})

    result = run(["dvc", "repro", "ingest"], repo, check=False)

    assert result.returncode != 0
    assert "ingest: vision: not a readable zip archive: data/raw/NEU.zip (File is not a zip file)" in result.stderr
    assert f"ingest: dvc removed the earlier ingest outputs before this run; fix the cause and run dvc repro " \
           f"again, or restore the last committed ones: {RECOVERY}" in result.stderr
    assert '"status": "failed"' in (repo / "metrics" / "ingest_report.json").read_text()
    assert not (repo / "data" / "interim" / "vision" / "manifest.parquet").exists()

    recover(repo)

    assert ingest_outputs(repo) == outputs
    assert "Data and pipelines are up to date" in run(["dvc", "status", "ingest"], repo).stdout


def test_a_missing_archive_fails_in_dvc_itself_and_the_same_recovery_restores_everything(ingested_repo):
    repo, outputs = ingested_repo
    update_params(repo, {"ingest.vision_archive": "data/raw/typo.zip"})

    result = run(["dvc", "repro", "ingest"], repo, check=False)

    assert result.returncode != 0
    assert "data/raw/typo.zip" in result.stderr  # DVC's own message; the stage never ran
    assert ingest_outputs(repo) == {}  # DVC removed them all, the report in git too

    recover(repo)

    assert ingest_outputs(repo) == outputs
    assert "Data and pipelines are up to date" in run(["dvc", "status", "ingest"], repo).stdout
