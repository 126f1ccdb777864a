"""The synthetic anomaly archive: a defect-free class beside the NEU-like classes, each defect image with its mask."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vapm.data.features.build import featurize_vision
from vapm.data.features.records import ImageRecord
from vapm.data.ingest.dataset import ingest_vision
from vapm.data.ingest.layout import Layout
from vapm.data.synth import build_vision_archive
from vapm.data.synth.archive import SynthError
from vapm.data.synth.vision import (ANOMALY_MASK_PATTERN, anomaly_defect_classes, build_anomaly_archive,
                                    check_anomaly_archive, render_defect, render_defect_with_mask)
from vapm.evaluation.segmentation import pixel_auroc
from tests.data.test_ingest_dataset import settings

CLASSES = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
SIZE, TRAIN, TEST, DEFECT_TRAIN = 64, 4, 3, 1


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("VAPM_NO_PROGRESS", "1")


def _build(path: Path, seed: int = 5, classes: list[str] = CLASSES) -> Path:
    build_anomaly_archive(path, classes, "Normal", SIZE, TRAIN, TEST, DEFECT_TRAIN, seed=seed)
    return path


@pytest.fixture(scope="module")
def anomaly_zip(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAPM_NO_PROGRESS", "1")
        return _build(tmp_path_factory.mktemp("anomaly") / "NEU-anomaly.zip")


def _grey(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(archive.read(name))))


def test_layout_counts_and_masks_of_defect_images_only(anomaly_zip):
    with zipfile.ZipFile(anomaly_zip) as archive:
        names = archive.namelist()
        images = [name for name in names if name.endswith(".jpg")]
        masks = [name for name in names if name.endswith("_mask.png")]
        assert len(names) == len(images) + len(masks)
        assert len(images) == TRAIN + TEST + len(CLASSES) * (DEFECT_TRAIN + TEST)
        assert sorted(name for name in images if "/Normal/" in name) == sorted(
            [f"NEU-anomaly/train/Normal/normal_{n}.jpg" for n in range(1, TRAIN + 1)]
            + [f"NEU-anomaly/test/Normal/normal_{n}.jpg" for n in range(TRAIN + 1, TRAIN + TEST + 1)])
        # Every defect image has its mask, the normal ones none: same stem, MVTec's ground_truth/<class>/<stem>_mask.
        expected = sorted(f"NEU-anomaly/ground_truth/{name.split('/')[2]}/{name.rsplit('/', 1)[1][:-4]}_mask.png"
                          for name in images if "/Normal/" not in name)
        assert sorted(masks) == expected
        assert "NEU-anomaly/test/Scratches/scratches_5.jpg" in images  # numbered as in the classifier archive
        for name in masks:
            mask = _grey(archive, name)
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask).tolist()) <= {0, 255} and mask.any()


def test_the_same_seed_gives_the_same_bytes_another_seed_others(tmp_path, anomaly_zip):
    digest = hashlib.sha256(anomaly_zip.read_bytes()).hexdigest()
    assert hashlib.sha256(_build(tmp_path / "again.zip").read_bytes()).hexdigest() == digest
    assert hashlib.sha256(_build(tmp_path / "other.zip", seed=6).read_bytes()).hexdigest() != digest


def test_defect_images_are_the_classifier_archives_own(tmp_path, anomaly_zip):
    """The classifier demo's archive is untouched by the masks: a defect image here is its image, byte for byte."""
    classifier = tmp_path / "NEU-data-TrainTest.zip"
    build_vision_archive(classifier, CLASSES, SIZE, TRAIN, TEST, seed=5)
    with zipfile.ZipFile(anomaly_zip) as anomaly, zipfile.ZipFile(classifier) as neu:
        shared = [name for name in anomaly.namelist() if name.endswith(".jpg") and "/Normal/" not in name]
        assert len(shared) == len(CLASSES) * (DEFECT_TRAIN + TEST)
        for name in shared:
            assert anomaly.read(name) == neu.read(name.replace("NEU-anomaly/", "NEU-data-TrainTest/"))


def test_render_defect_is_unchanged_by_the_mask():
    for name in CLASSES + ["Rust spot"]:  # hand-made looks and a derived one (drawn across, maybe inverted)
        image, mask = render_defect_with_mask(name, SIZE, np.random.default_rng(3))
        np.testing.assert_array_equal(image, render_defect(name, SIZE, np.random.default_rng(3)))
        assert mask.dtype == bool and mask.shape == image.shape and 0 < mask.mean() < 0.9


def test_masks_line_up_with_the_defects(anomaly_zip):
    """Pixels in a mask stand out from the strip's texture; those of the mask mirrored do not: with each pixel's
    distance from its image's median grey as a score, the pixel AUROC (test images of a class and the normal test
    images, which have empty masks) is well above chance with the true masks and near chance with mirrored ones."""
    with zipfile.ZipFile(anomaly_zip) as archive:
        names = archive.namelist()

        def test_items(class_name: str) -> tuple[np.ndarray, np.ndarray]:
            files = [name for name in names if f"/test/{class_name}/" in name]
            images = np.stack([_grey(archive, name).astype(float) for name in files])
            masks = np.zeros(images.shape, bool)
            if class_name != "Normal":
                masks = np.stack([_grey(archive, name.replace("/test/", "/ground_truth/").replace(".jpg", "_mask.png"))
                                  > 0 for name in files])
            return np.abs(images - np.median(images, axis=(1, 2), keepdims=True)), masks

        normal_scores, normal_masks = test_items("Normal")
        for class_name in CLASSES:
            scores, masks = test_items(class_name)
            scores, masks = np.concatenate([scores, normal_scores]), np.concatenate([masks, normal_masks])
            aligned = pixel_auroc(scores, masks)
            mirrored = pixel_auroc(scores, masks[:, ::-1, ::-1])
            assert aligned > 0.7 and aligned > mirrored + 0.15, (class_name, aligned, mirrored)


def test_ingest_reads_the_archive_with_its_masks(tmp_path, anomaly_zip):
    out = tmp_path / "vision"
    report = ingest_vision(anomaly_zip, Layout(["Normal", *CLASSES], None, ANOMALY_MASK_PATTERN), out, settings())
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert report["split_source"] == "archive" and report["bad_count"] == 0 and report["ignored_count"] == 0
    assert manifest.groupby(["class", "split"]).size().to_dict() == {
        **{("Normal", "train"): TRAIN, ("Normal", "test"): TEST},
        **{(name, split): count for name in CLASSES for split, count in (("train", DEFECT_TRAIN), ("test", TEST))}}
    stored = np.load(out / "masks.npy")
    with zipfile.ZipFile(anomaly_zip) as archive:
        for row in manifest.to_dict("records"):
            mask = stored[row["offset"]:row["offset"] + row["height"] * row["width"]].reshape(row["height"], row["width"])
            if row["class"] == "Normal":
                assert row["mask_file"] == "" and not mask.any()
            else:
                np.testing.assert_array_equal(mask, _grey(archive, row["mask_file"]) > 0)
    # featurize's image features carry them, resized with their images: what a detector's pixel scores read.
    featurize_vision(out, tmp_path / "features", ImageRecord(image_size=32))
    with np.load(tmp_path / "features" / "features.npz") as features:
        normal = features["labels"] == list(features["classes"]).index("Normal")
        np.testing.assert_array_equal(features["has_mask"], ~normal)
        assert features["masks"].shape == (len(manifest), 32, 32)
        assert not features["masks"][normal].any() and features["masks"][~normal].any(axis=(1, 2)).all()


def test_a_class_list_holding_the_normal_class_keeps_it_out_of_the_defects():
    assert anomaly_defect_classes(["Free", "Crack", "normal"], "Normal") == ["Free", "Crack"]
    assert anomaly_defect_classes(CLASSES, "Normal") == CLASSES
    with pytest.raises(SynthError, match="needs a defect class beside its normal class 'Normal'"):
        check_anomaly_archive(anomaly_defect_classes(["Normal"], "Normal"), "Normal", TRAIN, TEST, DEFECT_TRAIN)


def test_bad_anomaly_settings_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SynthError, match="distinct regardless of case"):
        check_anomaly_archive(CLASSES, "crazing", TRAIN, TEST, DEFECT_TRAIN)
    with pytest.raises(SynthError, match=r"1 <= anomaly_defect_train <= train_per_class.*got 4, 3 and 5"):
        check_anomaly_archive(CLASSES, "Normal", 4, 3, 5)
    with pytest.raises(SynthError, match="test_per_class >= 1"):
        build_anomaly_archive(tmp_path / "x.zip", CLASSES, "Normal", SIZE, 4, 0, 1, seed=1)
    assert not (tmp_path / "x.zip").exists()


def test_the_stage_writes_the_anomaly_archive_beside_the_others(tmp_path):
    """sample_data, the real stage, with a class list that holds a defect-free class named like the normal one."""
    from tests.data.test_synth import _run_stage, _tiny_params

    params = _tiny_params(anomaly_normal_class="Normal", anomaly_defect_train=1)
    params["vision"]["classes"] = ["Crazing", "normal"]
    result = _run_stage(tmp_path, params)
    assert result.returncode == 0, result.stderr
    assert "out/sample/NEU-anomaly.zip: 7 files" in result.stdout  # Normal 2 + 1; Crazing 1 + 1, each with its mask
    with zipfile.ZipFile(tmp_path / "out/sample/NEU-anomaly.zip") as archive:
        assert {name.split("/")[2] for name in archive.namelist()} == {"Normal", "Crazing"}
    with zipfile.ZipFile(tmp_path / "out/sample/NEU-data-TrainTest.zip") as archive:
        assert {name.split("/")[2] for name in archive.namelist()} == {"Crazing", "normal"}
