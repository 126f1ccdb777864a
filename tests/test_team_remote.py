"""The team flow of docs/team.md through a real OpenSSH server on 127.0.0.1 (DVC's SSH remote).

One clone tracks the archives with `dvc add data/raw/*.zip`, reproduces, pushes and runs an
experiment; a fresh clone pulls and finds nothing to reproduce; an unreachable remote fails with
DVC's error and loses nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import git_commit, run
from tests.servers import closed_port, running_sshd, sshd_binary
from tests.team_helpers import REPRO_TIMEOUT_S, clone_copy

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sshd_binary() is None, reason="sshd not found: apt-get install openssh-server")]

EXPERIMENT = "svm-c1"
TRACKED = ["data/raw", "data/interim", "data/features", "models", "metrics"]


def stages_run(dvc_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


def sh(command: str, repo: Path) -> subprocess.CompletedProcess:
    """A documented shell line as a user types it (globs included), in the test's environment."""
    return run(["bash", "-c", command], repo)


def file_hashes(repo: Path, folders: list[str] = TRACKED) -> dict[str, str]:
    return {str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted((repo / folder).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def team(tmp_path_factory, sshd, team_baseline):
    """First clone: archives tracked, reproduced, remote set up and pushed, one experiment pushed; a bare origin."""
    base = tmp_path_factory.mktemp("team")
    store = base / "dvc-store"
    store.mkdir()
    first = clone_copy(team_baseline, base / "first")
    # docs/team.md, "A shared DVC remote over SSH"
    sh(f"make remote URL=ssh://{sshd.user}@127.0.0.1{store} KEYFILE={sshd.client_key}", first)
    run(["dvc", "remote", "modify", "team", "port", str(sshd.port)], first)
    run(["git", "add", ".dvc/config"], first)
    git_commit(first, "DVC remote: team")
    pushed = run(["dvc", "push"], first)
    origin = base / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    run(["git", "remote", "add", "origin", str(origin)], first)
    run(["git", "push", "-q", "origin", "HEAD:main"], first)
    commit = run(["git", "rev-parse", "HEAD"], first).stdout.strip()
    hashes = file_hashes(first)

    # docs/team.md, "Share an experiment"
    run(["dvc", "exp", "run", "-S", "acoustic_svm.C_grid=[1.0]", "--name", EXPERIMENT], first,
        timeout=REPRO_TIMEOUT_S)
    experiment_metrics = (first / "metrics" / "acoustic_svm.json").read_bytes()
    run(["dvc", "exp", "push", "origin", EXPERIMENT], first)
    return {"first": first, "origin": origin, "store": store, "commit": commit, "hashes": hashes,
            "pushed": pushed.stdout, "experiment_metrics": experiment_metrics, "base": base}


@pytest.fixture(scope="module")
def second(team, sshd):
    """docs/team.md, "Join": a fresh clone, the personal key in .dvc/config.local, dvc pull."""
    clone = team["base"] / "second"
    subprocess.run(["git", "clone", "-q", str(team["origin"]), str(clone)], check=True)
    run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(sshd.client_key)], clone)
    pulled = run(["dvc", "pull"], clone)
    return {"repo": clone, "pulled": pulled.stdout}


def test_push_reaches_the_ssh_server(team, sshd):
    assert re.search(r"\d+ files? pushed", team["pushed"]), team["pushed"]
    stored = [p for p in (team["store"] / "files" / "md5").rglob("*") if p.is_file()]
    assert stored, "nothing arrived in the remote's folder"
    config = (team["first"] / ".dvc" / "config").read_text()
    assert f"port = {sshd.port}" in config and "remote = team" in config
    assert "keyfile" not in config  # personal: in .dvc/config.local, never committed
    assert "keyfile" in (team["first"] / ".dvc" / "config.local").read_text()
    assert "Accepted publickey" in sshd.log.read_text()


def test_fresh_clone_pulls_everything_and_reproduces_nothing(team, second):
    clone = second["repo"]
    assert run(["git", "rev-parse", "HEAD"], clone).stdout.strip() == team["commit"]
    # Byte for byte what the first clone had at that commit: archives, intermediate data, models, metrics.
    assert file_hashes(clone) == team["hashes"]
    status = run(["dvc", "status"], clone).stdout
    assert "Data and pipelines are up to date" in status, status
    reproduced = run(["dvc", "repro"], clone, timeout=REPRO_TIMEOUT_S)
    assert stages_run(reproduced.stdout) == set(), reproduced.stdout
    diff = run(["dvc", "metrics", "diff", team["commit"], "--json"], clone).stdout
    assert json.loads(diff or "{}") == {}
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], clone).stdout)
    assert shown, "no metrics in the clone"


def test_experiment_travels_with_exp_push_and_exp_pull(team, second):
    clone = second["repo"]
    run(["dvc", "exp", "pull", "origin", EXPERIMENT], clone)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], clone).stdout
    assert EXPERIMENT in shown
    run(["dvc", "exp", "apply", EXPERIMENT], clone)
    assert (clone / "metrics" / "acoustic_svm.json").read_bytes() == team["experiment_metrics"]
    # Its outputs came from the remote (exp push sends the cache too): checked out, nothing to rerun.
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    run(["git", "checkout", "--", "."], clone)
    run(["dvc", "checkout", "-q"], clone)


def test_unreachable_remote_fails_with_dvc_error_and_loses_nothing(team, second, tmp_path):
    clone = second["repo"]
    before_files = file_hashes(clone)
    before_cache = file_hashes(clone, [".dvc/cache"])
    with closed_port() as port:
        run(["dvc", "remote", "modify", "--local", "team", "port", str(port)], clone)
        try:
            for command in (["dvc", "push"], ["dvc", "pull"], ["dvc", "status", "--cloud"]):
                proc = run(command, clone, check=False)
                assert proc.returncode != 0, command
                assert f"Connect call failed ('127.0.0.1', {port})" in proc.stderr, proc.stderr
                assert proc.stderr.lstrip().startswith("ERROR"), proc.stderr
                assert "Traceback" not in proc.stderr
        finally:
            run(["dvc", "remote", "modify", "--local", "--unset", "team", "port"], clone)
    assert file_hashes(clone) == before_files
    assert file_hashes(clone, [".dvc/cache"]) == before_cache
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    # And a fresh clone whose remote is away gets the error, its git files, and nothing half-written.
    third = tmp_path / "third"
    subprocess.run(["git", "clone", "-q", str(team["origin"]), str(third)], check=True)
    with closed_port() as port:
        run(["dvc", "remote", "modify", "--local", "team", "port", str(port)], third)
        proc = run(["dvc", "pull"], third, check=False)
    assert proc.returncode != 0 and "failed to pull data from the cloud" in proc.stderr, proc.stderr
    assert not (third / "models").exists()
    assert (third / "dvc.lock").read_text() == run(["git", "show", f"{team['commit']}:dvc.lock"], team["first"]).stdout

