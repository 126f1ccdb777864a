"""Every command the README shows is run, exactly as written, by a test (through tests/readme.py)."""
from __future__ import annotations

import ast
import subprocess

import pytest

from tests.helpers import REPO_ROOT
from tests.readme import SETUP_INPUTS, link_environment, readme_commands

# Commands no test runs itself, and why.
NOT_RUN_BY_A_TEST = {
    "make test": "it is the test suite: CI runs it (.ci/run)",
    "source .venv/bin/activate": "every README command runs with .venv/bin first on PATH, as after this line",
    "export DVC_REMOTE=ssh://alice@storage.example.org/srv/dvc/vapm":
        "the reader's own store: tests/e2e/test_team_remote.py sets DVC_REMOTE to its sshd on 127.0.0.1",
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000":
        "tests/e2e/test_team_mlflow.py sets MLFLOW_TRACKING_URI in the environment of the commands that follow it",
}
RUNNERS = {"readme_command", "start_readme_command"}


def commands_run_by_tests() -> set[str]:
    """The literal first argument of every readme_command / start_readme_command call in tests/."""
    found = set()
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in RUNNERS and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
    return found


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert "make repro" in commands and "make test" in commands
    assert all("@@" not in c for c in commands)


def test_every_readme_command_is_run_by_a_test_as_written():
    missing = [c for c in readme_commands() if c not in commands_run_by_tests() and c not in NOT_RUN_BY_A_TEST]
    assert not missing, f"README commands no test runs: {missing}"


def test_tests_run_only_commands_the_readme_shows():
    stale = sorted(commands_run_by_tests() - set(readme_commands()))
    assert not stale, f"tests run commands the README no longer shows: {stale}"


def test_the_readme_has_no_placeholders_left():
    assert "@@" not in (REPO_ROOT / "README.md").read_text()


def test_a_copy_that_borrows_this_environment_does_not_resync_it(tmp_path):
    """`make repro` in a test's copy must not run `uv sync` on the shared .venv: that re-points its editable
    install at the copy's src/, which pytest deletes later."""
    if not (REPO_ROOT / ".venv" / ".synced").exists():
        pytest.skip("this checkout's .venv was not set up by make")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in SETUP_INPUTS:
        (repo / name).write_bytes((REPO_ROOT / name).read_bytes())  # fresh mtimes, as any copy has
    link_environment(repo)
    question = subprocess.run(["make", "-q", ".venv/.synced"], cwd=repo, capture_output=True, text=True)
    assert question.returncode == 0, f"make would re-sync the shared environment: {question.stdout}{question.stderr}"
