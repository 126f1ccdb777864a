"""A command timed as it runs: wall and CPU seconds and the peak memory of its process tree."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def timed_run(command: list[str], cwd: Path, env: dict[str, str], log) -> dict[str, float]:
    """Run a command, returning its wall seconds and the peak RSS of it and its descendants."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log.name}")
    # ru_maxrss is in KiB on Linux (bytes on macOS) and covers waited-for descendants too.
    scale = 1 if sys.platform == "darwin" else 1024
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss * scale / 2**20, 1)}
