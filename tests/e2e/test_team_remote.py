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

from tests.helpers import run
from tests.readme import readme_command
from tests.servers import closed_port, running_sshd, sshd_binary
from tests.e2e.team_helpers import REPRO_TIMEOUT_S, clone_copy

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sshd_binary() is None, reason="sshd not found: apt-get install openssh-server")]

EXPERIMENT = "svm-c1"
TRACKED = ["data/raw", "data/interim", "data/features", "models", "metrics"]


def stages_run(dvc_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


@pytest.fixture(scope="module")
def user_home(tmp_path_factory, sshd) -> Path:
    """A home folder whose ~/.ssh/id_ed25519 is the key the test's sshd accepts (the README's key path)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir(mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    key.write_bytes(sshd.client_key.read_bytes())
    key.chmod(0o600)
    return home


def file_hashes(repo: Path, folders: list[str] = TRACKED) -> dict[str, str]:
    return {str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted((repo / folder).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def team(tmp_path_factory, sshd, team_baseline, user_home):
    """First clone: archives tracked, reproduced, remote set up and pushed, one experiment pushed; a bare origin."""
    base = tmp_path_factory.mktemp("team")
    store = base / "dvc-store"
    store.mkdir()
    first = clone_copy(team_baseline, base / "first")
    # The README's "Working as a team", with the reader's own values: the store on the test's sshd, their home.
    env = {"DVC_REMOTE": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{store}", "HOME": str(user_home)}
    readme_command("make remote URL=$DVC_REMOTE KEYFILE=~/.ssh/id_ed25519", first, env=env)
    readme_command("git add .dvc/config", first, env=env)
    readme_command('git commit -m "DVC remote: team"', first, env=env)
    pushed = readme_command("dvc push", first, env=env)
    origin = base / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    run(["git", "remote", "add", "origin", str(origin)], first)
    run(["git", "push", "-q", "origin", "HEAD:main"], first)
    commit = run(["git", "rev-parse", "HEAD"], first).stdout.strip()
    hashes = file_hashes(first)

    # docs/team.md, "Share an experiment"
    run(["dvc", "exp", "run", "-S", "acoustic_svm.C_grid=[1.0]", "--name", EXPERIMENT], first,
        timeout=REPRO_TIMEOUT_S)
    experiment_metrics = (first / "metrics" / "scores" / "acoustic_svm.json").read_bytes()
    run(["dvc", "exp", "push", "origin", EXPERIMENT], first)
    return {"first": first, "origin": origin, "store": store, "commit": commit, "hashes": hashes,
            "pushed": pushed.stdout, "experiment_metrics": experiment_metrics, "base": base, "env": env}


@pytest.fixture(scope="module")
def second(team, sshd):
    """The README's join: a fresh clone, the personal key in .dvc/config.local, dvc pull."""
    clone = team["base"] / "second"
    subprocess.run(["git", "clone", "-q", str(team["origin"]), str(clone)], check=True)
    readme_command("dvc remote modify --local team keyfile ~/.ssh/id_ed25519", clone, env=team["env"])
    pulled = readme_command("dvc pull", clone, env=team["env"])
    return {"repo": clone, "pulled": pulled.stdout}


def test_push_reaches_the_ssh_server(team, sshd):
    assert re.search(r"\d+ files? pushed", team["pushed"]), team["pushed"]
    stored = [p for p in (team["store"] / "files" / "md5").rglob("*") if p.is_file()]
    assert stored, "nothing arrived in the remote's folder"
    config = (team["first"] / ".dvc" / "config").read_text()
    assert f"@127.0.0.1:{sshd.port}/" in config and "remote = team" in config
    assert "keyfile" not in config  # personal: in .dvc/config.local, never committed
    assert "keyfile" in (team["first"] / ".dvc" / "config.local").read_text()
    assert "Accepted publickey" in sshd.log.read_text()


def test_fresh_clone_pulls_everything_and_reproduces_nothing(team, second):
    clone = second["repo"]
    assert run(["git", "rev-parse", "HEAD"], clone).stdout.strip() == team["commit"]
    # Byte for byte what the first clone had at that commit: archives, intermediate data, models, metrics.
    assert file_hashes(clone) == team["hashes"]
    status = readme_command("dvc status", clone).stdout
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
    assert (clone / "metrics" / "scores" / "acoustic_svm.json").read_bytes() == team["experiment_metrics"]
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

