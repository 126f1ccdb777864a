"""The README's commands, exactly as written: read from README.md and run through bash.

`readme_command(text, repo)` refuses a command the README does not show, so a test can only run what a
reader types; tests/project/test_readme.py checks that every command the README shows is run by some test.
"""
from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

from tests.helpers import REPO_ROOT, pipeline_env

SETUP_INPUTS = ("pyproject.toml", "uv.lock", "Makefile")  # what `make` re-syncs .venv from (Makefile: .synced)
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "vapm", "GIT_AUTHOR_EMAIL": "vapm@localhost",
                "GIT_COMMITTER_NAME": "vapm", "GIT_COMMITTER_EMAIL": "vapm@localhost"}


@cache
def readme_commands(readme: Path = REPO_ROOT / "README.md") -> tuple[str, ...]:
    """Every command line of the README's ```bash blocks, without its trailing `# comment`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
        for line in block.splitlines():
            # A comment starts at " #" outside quotes; the README's commands quote no " #".
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return tuple(commands)


def readme_environment(repo: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a reader has after `source .venv/bin/activate` in the repository (and a git identity)."""
    return {**pipeline_env(repo), **GIT_IDENTITY, **(extra or {})}


def readme_command(command: str, repo: Path, check: bool = True, timeout: float = 1800,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one command of the README, verbatim, in `repo` through bash; fail with its output if it fails."""
    assert command in readme_commands(), f"not a command of README.md: {command}"
    proc = subprocess.run(["bash", "-c", command], cwd=repo, env=readme_environment(repo, env), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"README command `{command}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def start_readme_command(command: str, repo: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A long-running README command (a server, the monitor) in its own process group; stop it with `stop`."""
    assert command in readme_commands(), f"not a command of README.md: {command}"
    return subprocess.Popen(["bash", "-c", command], cwd=repo, env=readme_environment(repo, env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(process: subprocess.Popen) -> str:
    """Stop a started command's whole process group by its id; return what it printed."""
    import os
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.stdout.read() if process.stdout else ""


def link_environment(repo: Path) -> None:
    """The copy uses this checkout's environment (.venv, .tools) as its own, as `make` set it up."""
    for name in (".venv", ".tools"):
        if (REPO_ROOT / name).exists() and not (repo / name).exists():
            (repo / name).symlink_to(REPO_ROOT / name)
    # `make` re-syncs .venv when its inputs are newer than .venv/.synced; the copy's are (they were just written),
    # and a sync from the copy would point the shared environment's editable install at the copy's src/. So the
    # copy's unchanged inputs get the original's times, never later than .synced (an edited, not yet synced
    # Makefile in this checkout must not make a test re-sync the shared environment from its copy).
    synced = REPO_ROOT / ".venv" / ".synced"
    synced_ns = synced.stat().st_mtime_ns if synced.exists() else None
    for name in SETUP_INPUTS:
        original, copied = REPO_ROOT / name, repo / name
        if copied.exists() and copied.read_bytes() == original.read_bytes():
            stat = original.stat()
            modified = stat.st_mtime_ns if synced_ns is None else min(stat.st_mtime_ns, synced_ns)
            os.utime(copied, ns=(stat.st_atime_ns, modified))


def wait_for_http(url: str, process, seconds: float = 600) -> None:
    """Poll `url` until it answers (a hang guard, not a timing: a first `mlflow server` start on a busy machine
    took 100 s); fail early if the process died."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {stop(process)[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer: {stop(process)[-3000:]}")
