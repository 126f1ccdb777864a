"""SIGKILL of the ingest stage mid-write (issue 23, item 4): the report never says an earlier run's "ok" beside
missing data, and the next run removes what the killed one left half-written, then succeeds."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE = REPO_ROOT / "stages" / "ingest.py"


def png(rng: np.random.Generator, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def workspace(tmp_path: Path) -> Path:
    """A project whose vision archive takes a few seconds to hash and decode: time to kill it mid-write."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["audio"]["clip_seconds"] = 0.06
    rng = np.random.default_rng(0)
    vision = tmp_path / "vision.zip"
    with zipfile.ZipFile(vision, "w") as zf:
        for name in params["vision"]["classes"]:
            for split, count in (("train", 60), ("test", 15)):
                for n in range(count):
                    zf.writestr(f"NEU-data-TrainTest/{split}/{name}/{name.lower()}_{n}.png", png(rng, 200))
    acoustic = tmp_path / "acoustic.zip"
    with zipfile.ZipFile(acoustic, "w") as zf:
        for name in params["audio"]["classes"]:
            for n in range(5):
                zf.writestr(f"AirCompressor_Data/{name}/preprocess_Reading{n}.dat",
                            "\n".join(str(v) for v in rng.normal(size=1000)))
    params["ingest"].update(vision_archive=str(vision), acoustic_archive=str(acoustic), n_jobs=1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    return project


def run_stage(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STAGE)], cwd=project, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VAPM_NO_PROGRESS": "1"})


def test_a_sigkilled_ingest_leaves_a_running_report_and_the_next_run_cleans_up(tmp_path):
    project = workspace(tmp_path)
    assert run_stage(project).returncode == 0  # an earlier run's "ok" report and outputs
    report_file = project / "metrics" / "ingest_report.json"
    assert {entry["status"] for entry in json.loads(report_file.read_text()).values()} == {"ok"}

    partial = project / "data" / "interim" / "vision" / "pixels.npy.partial"
    process = subprocess.Popen([sys.executable, str(STAGE)], cwd=project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "VAPM_NO_PROGRESS": "1"})
    deadline = time.monotonic() + 120
    # The point chosen: once the images are being written (their array exists, half-written).
    while not (partial.is_file() and partial.stat().st_size > 0) and process.poll() is None:
        assert time.monotonic() < deadline, "the stage never started writing pixels"
        time.sleep(0.002)
    assert process.poll() is None, "the stage finished before it could be killed: make the archive larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    report = json.loads(report_file.read_text())
    assert {entry["status"] for entry in report.values()} == {"running"}, report  # never the earlier "ok"
    assert partial.is_file()  # what SIGKILL leaves; the next run must remove it

    again = run_stage(project)
    assert again.returncode == 0, again.stderr
    assert "removed" in again.stderr and "pixels.npy.partial" in again.stderr
    assert not list((project / "data" / "interim").glob("*/*.partial"))
    assert not list((project / "metrics").glob("*.partial"))
    assert {entry["status"] for entry in json.loads(report_file.read_text()).values()} == {"ok"}
