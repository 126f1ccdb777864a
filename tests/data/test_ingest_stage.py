"""stages/ingest.py end to end, in a scratch directory with its own params.yaml."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE = REPO_ROOT / "stages" / "ingest.py"


def run_stage(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAPM_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, str(STAGE)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def ingest_workdir(tmp_path, ingest_make_zip, ingest_encode_image) -> Path:
    """A scratch project: params.yaml (the repo's, with 0.06 s clips) and two tiny archives in raw/."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["audio"]["clip_seconds"] = 0.06  # 1000 samples at 50000/3 Hz
    rng = np.random.default_rng(0)
    vision = {f"NEU-data-TrainTest/{split}/{name}/{name.lower()}_{number}.png":
              ingest_encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8))
              for name in params["vision"]["classes"] for split in ("train", "test") for number in range(2)}
    acoustic = {f"AirCompressor_Data/{name}/preprocess_Reading{number}.dat":
                "\n".join(str(value) for value in rng.normal(size=1000)).encode()
                for name in params["audio"]["classes"] for number in range(5)}
    acoustic["AirCompressor_Data/license.txt"] = b"copyright"
    params["ingest"]["vision_archive"] = str(ingest_make_zip("NEU-data-TrainTest.zip", vision))
    params["ingest"]["acoustic_archive"] = str(ingest_make_zip("AirCompressor_Data.zip", acoustic))
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workdir / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    return workdir


def test_stage_writes_interim_data_and_the_report(ingest_workdir):
    result = run_stage(ingest_workdir)

    assert result.returncode == 0, result.stderr
    assert "vision: 24 files kept (12 train, 12 test, split from archive)" in result.stdout
    assert "acoustic: 40 files kept (32 train, 8 test, split from stratified)" in result.stdout
    report_text = (ingest_workdir / "metrics" / "ingest_report.json").read_text()
    report = json.loads(report_text)
    assert report_text == json.dumps(report, sort_keys=True, indent=2) + "\n"
    assert report["vision"]["status"] == report["acoustic"]["status"] == "ok"
    assert [entry["file"] for entry in report["acoustic"]["ignored"]] == ["AirCompressor_Data/license.txt"]
    interim = ingest_workdir / "data" / "interim"
    assert np.load(interim / "acoustic" / "clips.npy").shape == (40, 1000)
    assert np.load(interim / "vision" / "pixels.npy").shape == (24 * 64,)
    assert len(pd.read_parquet(interim / "vision" / "manifest.parquet")) == 24
    assert sorted(path.name for path in ingest_workdir.iterdir()) == ["data", "metrics", "models.yaml", "params.yaml"]


def test_stage_exits_1_naming_bad_files_and_still_writes_the_report(ingest_workdir):
    params = yaml.safe_load((ingest_workdir / "params.yaml").read_text())
    archive = Path(params["ingest"]["acoustic_archive"])
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("AirCompressor_Data/LIV/broken.dat", "1.0\nNaN\n" + "0\n" * 998)

    result = run_stage(ingest_workdir)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "AirCompressor_Data/LIV/broken.dat: non-finite value 'NaN' at line 2" in result.stderr
    report = json.loads((ingest_workdir / "metrics" / "ingest_report.json").read_text())
    assert report["vision"]["status"] == "ok"
    assert report["acoustic"]["status"] == "failed"
    assert report["acoustic"]["bad"] == [{"file": "AirCompressor_Data/LIV/broken.dat",
                                          "reason": "non-finite value 'NaN' at line 2"}]
    assert not (ingest_workdir / "data" / "interim" / "acoustic" / "clips.npy").exists()


def test_stage_rejects_a_bad_param_in_one_line(ingest_workdir):
    params = yaml.safe_load((ingest_workdir / "params.yaml").read_text())
    params["ingest"]["on_bad_file"] = "ignore"
    (ingest_workdir / "params.yaml").write_text(yaml.safe_dump(params))

    result = run_stage(ingest_workdir)

    assert result.returncode == 1
    assert result.stderr.strip() == ("ingest: params.yaml: ingest.on_bad_file: input should be 'fail' or 'skip' "
                                     "(got 'ignore')")


def set_params(workdir: Path, changes: dict[str, object]) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_report(workdir: Path) -> dict:
    return json.loads((workdir / "metrics" / "ingest_report.json").read_text())


def earlier_successful_run(workdir: Path) -> None:
    """What an earlier run left: an "ok" report and outputs (their content does not matter here)."""
    (workdir / "metrics").mkdir()
    (workdir / "metrics" / "ingest_report.json").write_text(json.dumps({"vision": {"status": "ok"},
                                                                        "acoustic": {"status": "ok"}}))
    for name, data in (("vision", "pixels.npy"), ("acoustic", "clips.npy")):
        (workdir / "data" / "interim" / name).mkdir(parents=True)
        for file in ("manifest.parquet", data):
            (workdir / "data" / "interim" / name / file).write_text("earlier output")


@pytest.mark.parametrize("changes, message", [
    ({"ingest.max_member_mb": "lots"},
     "ingest: params.yaml: ingest.max_member_mb: input should be a valid number (got 'lots')"),
    ({"ingest.n_jobs": "two"}, "ingest: params.yaml: ingest.n_jobs: input should be a valid integer (got 'two')"),
    ({"ingest.vision_archive": None},
     "ingest: params.yaml: ingest.vision_archive: input should be a valid string (got None)"),
])
def test_a_params_error_rewrites_the_report_as_failed_and_removes_stale_outputs(ingest_workdir, changes, message):
    earlier_successful_run(ingest_workdir)
    set_params(ingest_workdir, changes)

    result = run_stage(ingest_workdir)

    assert result.returncode == 1
    assert result.stderr.strip() == message
    error = message.removeprefix("ingest: ")
    assert read_report(ingest_workdir) == {name: {"status": "failed", "error": error}
                                           for name in ("vision", "acoustic")}
    assert not [path for path in (ingest_workdir / "data" / "interim").rglob("*") if path.is_file()]


def test_an_unexpected_crash_still_rewrites_the_report_as_failed(ingest_workdir):
    # audio.clip_seconds is not yet validated by type here (the typed settings will); whatever fails, the
    # report must not keep saying "ok".
    earlier_successful_run(ingest_workdir)
    set_params(ingest_workdir, {"audio.clip_seconds": "three"})

    result = run_stage(ingest_workdir)

    assert result.returncode != 0
    report = read_report(ingest_workdir)
    assert {report[name]["status"] for name in ("vision", "acoustic")} == {"failed"}


def test_hostile_member_names_are_escaped_and_the_report_is_reproducible(ingest_workdir):
    params = yaml.safe_load((ingest_workdir / "params.yaml").read_text())
    archive = Path(params["ingest"]["acoustic_archive"])
    forged = "AirCompressor_Data/LIV/\x1b[2K\rFAKE: all files ok\nx.wav"
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(forged, b"this is not a sound file")  # libsndfile's error named the buffer's address
        zf.writestr("AirCompressor_Data/LIV/\u202egnp.wav", b"RIFF" + bytes(40))

    first = run_stage(ingest_workdir)
    first_report = (ingest_workdir / "metrics" / "ingest_report.json").read_bytes()
    second = run_stage(ingest_workdir)

    assert first.returncode == second.returncode == 1
    assert "\x1b" not in first.stderr and "\r" not in first.stderr and "\u202e" not in first.stderr
    assert not any(line.startswith("FAKE") for line in first.stderr.splitlines())
    assert ("\n  'AirCompressor_Data/LIV/\\x1b[2K\\rFAKE: all files ok\\nx.wav': cannot decode audio: "
            "Format not recognised.\n") in first.stderr
    assert first.stderr == second.stderr
    assert (ingest_workdir / "metrics" / "ingest_report.json").read_bytes() == first_report
    report = read_report(ingest_workdir)
    assert [entry["file"] for entry in report["acoustic"]["bad"]] == [
        "'AirCompressor_Data/LIV/\\u202egnp.wav'", "'AirCompressor_Data/LIV/\\x1b[2K\\rFAKE: all files ok\\nx.wav'"]
    assert "0x" not in first_report.decode()
