"""Runs the ingest stage's `main()` in this one process on many archives, each in its own project folder.

    python tests/data/ingest_fuzz_worker.py spec.json results.json

The parent measures this process's peak memory (`os.wait4`), which covers every run; each run's exit code,
stdout, stderr, warnings, report text, files left behind and archive digests go to results.json.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_stage():
    spec = importlib.util.spec_from_file_location("ingest_stage", REPO_ROOT / "stages" / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(path: str) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None


def run_one(stage, run: dict) -> dict:
    workdir = Path(run["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(run["params"], sort_keys=False))
    (workdir / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    archives = [run["params"]["ingest"][f"{name}_archive"] for name in ("vision", "acoustic")]
    before = [digest(archive) for archive in archives]
    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.process_time()
    os.chdir(workdir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = stage.main() or 0
            except SystemExit as exit_:
                code = exit_.code or 0
            except BaseException:  # noqa: BLE001 - recorded, the parent fails the case
                code = "exception"
                stderr.write(traceback.format_exc())
    report = workdir / "metrics" / "ingest_report.json"
    return {
        "workdir": str(workdir), "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
        "warnings": [f"{warning.category.__name__}: {warning.message}" for warning in caught],
        "report": report.read_text() if report.is_file() else None,
        "files": sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*") if path.is_file()),
        "archives_unchanged": before == [digest(archive) for archive in archives],
        "cpu_seconds": round(time.process_time() - started, 3),  # for tuning the suite's length, not asserted
    }


def main(spec_path: str, results_path: str) -> None:
    os.environ["VAPM_NO_PROGRESS"] = "1"
    stage = load_stage()
    runs = json.loads(Path(spec_path).read_text())
    results = [run_one(stage, run) for run in runs]
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
