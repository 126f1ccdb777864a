"""stages/anomaly_data.py, the real stage, in a scratch directory: a small synthetic NEU-anomaly.zip in, the
detectors' images and masks out (data/interim/vision_anomaly, data/features/anomaly_image), whole or nothing."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vapm.data.synth import build_vision_archive
from vapm.data.synth.vision import ANOMALY_MASK_PATTERN, build_anomaly_archive

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE = REPO_ROOT / "stages" / "anomaly_data.py"
DEFECTS = ["Crazing", "Scratches"]
TRAIN, TEST, DEFECT_TRAIN, SIDE = 3, 2, 1, 16
OUTPUTS = ("data/interim/vision_anomaly", "data/features/anomaly_image")
REPORT = "metrics/anomaly_data_report.json"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAPM_NO_PROGRESS", "1")
        path = tmp_path_factory.mktemp("anomaly") / "NEU-anomaly.zip"
        build_anomaly_archive(path, DEFECTS, "Normal", 32, TRAIN, TEST, DEFECT_TRAIN, seed=3)
        return path


@pytest.fixture
def project(tmp_path, archive, monkeypatch) -> Path:
    """A scratch project: the repository's params.yaml, reading `archive` at SIDE pixels."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["anomaly_data"].update(archive=str(archive), image_size=SIDE)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAPM_NO_PROGRESS", "1")
    return tmp_path


def set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["anomaly_data"].update(changes)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage() -> int:
    try:
        runpy.run_path(str(STAGE), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_the_repository_params_read_the_sample_archive_with_its_masks():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    section = params["anomaly_data"]
    assert section["archive"] == f"{params['sample_data']['out_dir']}/NEU-anomaly.zip"
    assert section["mask_pattern"] == ANOMALY_MASK_PATTERN and section["classes"] == "auto"


def test_the_stage_writes_images_with_masks_for_defects_only(project, capsys):
    assert run_stage() == 0
    out = capsys.readouterr().out
    n_images = TRAIN + TEST + len(DEFECTS) * (DEFECT_TRAIN + TEST)
    assert (f"vision_anomaly: {n_images} images kept ({TRAIN + len(DEFECTS) * DEFECT_TRAIN} train, "
            f"{TEST * (1 + len(DEFECTS))} test, split from archive)") in out
    assert f"3 classes (Crazing, Normal, Scratches), {len(DEFECTS) * (DEFECT_TRAIN + TEST)} with a defect mask" in out

    manifest = pd.read_parquet(project / OUTPUTS[0] / "manifest.parquet")
    assert (manifest["mask_file"] != "").tolist() == (manifest["class"] != "Normal").tolist()
    assert all(mask.endswith(f"ground_truth/{name}/{Path(file).stem}_mask.png")
               for file, name, mask in zip(manifest["file"], manifest["class"], manifest["mask_file"]) if mask)
    with np.load(project / OUTPUTS[1] / "features.npz") as features:
        classes = features["classes"].tolist()
        assert classes == ["Crazing", "Normal", "Scratches"]  # auto: the class folders, sorted
        assert features["images"].shape == features["masks"].shape == (n_images, SIDE, SIDE)
        normal = features["labels"] == classes.index("Normal")
        np.testing.assert_array_equal(features["has_mask"], ~normal)
        assert not features["masks"][normal].any()
        assert features["masks"][~normal].any(axis=(1, 2)).all()  # every defect image, train or test, has its mask
        assert set(features["splits"][normal].tolist()) == {"train", "test"}
        assert features["files"].tolist() == manifest["file"].tolist()
    record = json.loads((project / OUTPUTS[1] / "record.json").read_text())
    assert (record["kind"], record["image_size"], record["resize"]) == ("image", SIDE, "squash")
    report = json.loads((project / REPORT).read_text())["vision_anomaly"]
    assert report["status"] == "ok" and report["classes"] == classes
    assert report["features"] == {"folder": OUTPUTS[1], "images": n_images, "image_size": SIDE, "resize": "squash",
                                  "with_mask": len(DEFECTS) * (DEFECT_TRAIN + TEST)}
    assert not list(project.glob("**/*.partial"))


@pytest.mark.parametrize("changes, message", [
    ({"mask_pattern": "ground_truth/(?P<class>[^/]+)/"},
     "anomaly_data: params.yaml: anomaly_data.mask_pattern: needs the named group(s) (?P<stem>...)"),
    ({"classes": ["Normal", "Crazing", "Rust"]}, "anomaly_data.classes lists ['Rust'] but the archive has no files"),
    ({"archive": "data/raw/none.zip"}, "data/raw/none.zip"),
])
def test_bad_settings_fail_in_one_line_and_leave_no_outputs(project, capsys, changes, message):
    # an earlier run's outputs, which must not look current after a failed run, and a killed run's leftovers
    for folder in OUTPUTS + tuple(f"{folder}.partial" for folder in OUTPUTS):
        (project / folder).mkdir(parents=True)
        (project / folder / "old.npy").write_bytes(b"old")
    set_params(project, **changes)
    assert run_stage() == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (project / "data" / "interim").exists() or not any((project / "data" / "interim").iterdir())
    assert not (project / "data" / "features").exists() or not any((project / "data" / "features").iterdir())
    report = json.loads((project / REPORT).read_text())["vision_anomaly"]
    assert report["status"] == "failed" and report["error"]


def test_an_archive_without_masks_gives_images_only(project, capsys):
    """Real data such as NEU's: no normal class of its own, no masks (the sample mask pattern matches nothing); each
    class can be the normal one in turn."""
    archive = project / "NEU-data-TrainTest.zip"
    build_vision_archive(archive, DEFECTS, 24, 2, 1, seed=4)
    set_params(project, archive=str(archive))
    assert run_stage() == 0
    assert "2 classes (Crazing, Scratches), 0 with a defect mask" in capsys.readouterr().out
    assert not (project / OUTPUTS[0] / "masks.npy").exists()
    with np.load(project / OUTPUTS[1] / "features.npz") as features:
        assert features["classes"].tolist() == DEFECTS and features["images"].shape == (6, SIDE, SIDE)
        assert "masks" not in features.files and "has_mask" not in features.files
    assert json.loads((project / REPORT).read_text())["vision_anomaly"]["features"]["with_mask"] == 0
