"""The README's "Your own data" commands, as written, on a dataset laid out as published: `<Prefix>_<Class>/Imgs/`
with a same-stem `.png` defect mask beside each `.jpg`, 4 unbalanced classes (150/20/12/8) of three non-square
sizes. Every stage runs (evaluate included): each image counted once, the masks paired and resized with their
images, and scores with balanced accuracy and the majority baseline.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_readme_real_data import shrink_preset
from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params
from tests.readme import link_environment, readme_command

pytestmark = pytest.mark.slow

CLASS_COUNTS = {"Free": 150, "Fray": 20, "Crack": 12, "Blowhole": 8}
SIZES = [(60, 150), (46, 58), (90, 40)]  # (height, width): wide, near square, tall
ARCHIVE = "data/raw/my-defects.zip"


def tile(rng: np.random.Generator, class_index: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A grey tile and its defect mask: a class-specific dark blob (none for the defect-free class 0)."""
    height, width = shape
    image = rng.normal(150, 8, shape)
    mask = np.zeros(shape, np.uint8)
    if class_index:
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        bottom, right = top + height // (1 + class_index), left + width // (4 - class_index % 3)
        mask[top:bottom, left:right] = 255
        image[mask > 0] -= 40 * class_index
    return np.clip(image, 0, 255).astype(np.uint8), mask


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def build_archive(path: Path) -> dict[str, int]:
    """The published layout; every fifth image has no mask. Returns what the archive holds."""
    rng = np.random.default_rng(7)
    masks = 0
    with zipfile.ZipFile(path, "w") as archive:
        for class_index, (name, count) in enumerate(CLASS_COUNTS.items()):
            for number in range(count):
                image, mask = tile(rng, class_index, SIZES[number % len(SIZES)])
                stem = f"MagTile/MT_{name}/Imgs/exp{number}_num_{1000 + number}"
                archive.writestr(f"{stem}.jpg", encode(image, "JPEG"))
                if number % 5:
                    archive.writestr(f"{stem}.png", encode(mask, "PNG"))
                    masks += 1
        archive.writestr("MagTile/README.txt", b"magnetic tiles")
    return {"images": sum(CLASS_COUNTS.values()), "masks": masks}


def test_your_own_data_runs_every_stage_with_auto_classes_a_pattern_and_masks(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    link_environment(repo)
    update_params(repo, {key: value for key, value in TINY_PIPELINE.items() if key.startswith("sample_data.")})
    run(["python", "stages/sample_data.py"], repo)
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "data" / "sample" / "AirCompressor_Data.zip", repo / "data" / "raw" / "AirCompressor_Data.zip")
    held = build_archive(repo / ARCHIVE)
    shrink_preset(repo / "presets" / "real-data.yaml")
    git_commit(repo, "my archive in data/raw, a two-epoch preset")

    proc = readme_command("vapm preset presets/real-data.yaml --run --name my-defects -S ingest.vision_archive=data/raw/my-defects.zip "
                           "-S vision.classes=auto -S vision.resize=pad "
                           "-S \"ingest.vision_pattern='[^/]+_(?P<class>[^/_]+)/Imgs/[^/]+\\.jpg$'\" "
                           "-S \"ingest.vision_mask_pattern='[^/]+_(?P<class>[^/_]+)/Imgs/(?P<stem>[^/]+)\\.png$'\"",
                          repo, timeout=3600)
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    assert {"sample_data", "ingest", "featurize", "train@vision_scratch", "train@vision_transfer", "evaluate"} <= ran
    shown = readme_command("dvc exp show --only-changed --md", repo, env={"COLUMNS": "4000"}).stdout
    assert "my-defects" in shown and "vision.classes" in shown

    report = json.loads((repo / "metrics" / "ingest_report.json").read_text())["vision"]
    classes = sorted(CLASS_COUNTS)
    assert report["status"] == "ok" and report["classes"] == classes
    assert report["kept"]["total"] == held["images"] and report["bad_count"] == 0  # each image once, no mask as one
    assert report["decoded"]["masks"] == {"paired": held["masks"], "images_without": held["images"] - held["masks"]}
    assert report["ignored_reasons"] == {"not a data file (expected .jpg, .jpeg, .png, .bmp)": 1}  # the README.txt
    assert {name: sum(counts.values()) for name, counts in report["kept"]["per_class"].items()} == CLASS_COUNTS

    with np.load(repo / "data" / "features" / "image" / "features.npz") as features:
        assert features["classes"].tolist() == classes
        assert features["images"].shape == features["masks"].shape == (held["images"], 128, 128)
        assert int(features["has_mask"].sum()) == held["masks"]
        assert set(np.unique(features["masks"]).tolist()) <= {0, 1}
        assert not features["masks"][~features["has_mask"]].any()

    test_counts = {name: counts["test"] for name, counts in report["kept"]["per_class"].items()}
    for model in ("vision_scratch", "vision_transfer"):
        record = json.loads((repo / "models" / model / "record.json").read_text())
        assert record["classes"] == classes and record["input"]["resize"] == "pad"
        scores = json.loads((repo / "metrics" / "scores" / f"{model}.json").read_text())
        assert scores["n"] == sum(test_counts.values())
        assert scores["baseline"] == pytest.approx(test_counts["Free"] / scores["n"], abs=1e-4)
        assert 0 <= scores["bal_acc"] <= 1 and 0 <= scores["acc"] <= 1
    headline = run(["dvc", "metrics", "show"], repo).stdout
    assert "bal_acc" in headline and "baseline" in headline
