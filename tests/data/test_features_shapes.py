"""vision.resize: squash, pad and crop, the same in featurize (training) and in a model's record (predict, serving,
the monitor), for images and their masks."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from vapm.data.features.build import featurize_vision
from vapm.data.features.records import ImageRecord, read_record, record_from_dict
from vapm.data.features.vision import resize_image, resize_mask
from vapm.data.ingest.dataset import ingest_vision
from vapm.data.ingest.layout import Layout
from tests.data.test_ingest_dataset import settings

SHAPES = [(30, 90), (50, 20), (33, 47), (40, 40)]


def test_pad_keeps_the_aspect_ratio_with_edge_pixels_and_crop_keeps_the_centre():
    image = np.zeros((4, 8), np.uint8)
    image[0, :], image[-1, :], image[:, 3:5] = 10, 200, 99
    padded = resize_image(image, 8, "pad")
    np.testing.assert_array_equal(padded[2:6], image)  # centred, not stretched
    np.testing.assert_array_equal(padded[:2], np.repeat(image[:1], 2, axis=0))  # the edge row repeated
    np.testing.assert_array_equal(padded[6:], np.repeat(image[-1:], 2, axis=0))
    np.testing.assert_array_equal(resize_image(image, 4, "crop"), image[:, 2:6])
    assert resize_image(image, 8, "squash").shape == (8, 8)
    mask = np.zeros((4, 8), np.uint8)
    mask[1:3, 6:] = 1
    padded_mask = resize_mask(mask, 8, "pad")
    assert padded_mask[:2].sum() == padded_mask[6:].sum() == 0  # a mask is padded with "no defect"
    np.testing.assert_array_equal(padded_mask[2:6], mask)
    assert set(np.unique(resize_mask(mask, 5, "crop")).tolist()) <= {0, 1}  # nearest neighbour: still binary
    with pytest.raises(ValueError, match="vision.resize must be one of"):
        resize_image(image, 8, "stretch")


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_training_and_predict_prepare_a_file_to_the_same_array(tmp_path, mode):
    rng = np.random.default_rng(3)
    files, masks = {}, {}
    for i, shape in enumerate(SHAPES * 2):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        name = f"set/{'AB'[i % 2]}_{i}.jpg"
        files[name] = buffer.getvalue()
        mask = np.zeros(shape, np.uint8)
        mask[: shape[0] // 3, shape[1] // 2:] = 255
        masks[name] = mask
        png = io.BytesIO()
        Image.fromarray(mask).save(png, format="PNG")
        files[name[:-4] + ".png"] = png.getvalue()
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    layout = Layout(None, r"/(?P<class>[AB])_\d+\.jpg$", r"/(?P<stem>(?P<class>[AB])_\d+)\.png$")
    ingest_vision(archive, layout, tmp_path / "interim", settings())
    featurize_vision(tmp_path / "interim", tmp_path / "image", ImageRecord(image_size=24, resize=mode))

    # What a trained model's record carries (its "input"), rebuilt as predict and the served model rebuild it.
    predict_record = record_from_dict(read_record(tmp_path / "image").to_dict())
    assert predict_record.resize == mode
    with np.load(tmp_path / "image" / "features.npz") as features:
        assert int(features["has_mask"].sum()) == len(masks)
        for row, name in enumerate(features["files"].tolist()):
            np.testing.assert_array_equal(predict_record.prepare(name, files[name]), features["images"][row])
            expected_mask = resize_mask((masks[name] > 127).astype(np.uint8), 24, mode)
            np.testing.assert_array_equal(features["masks"][row], expected_mask)
        if mode != "squash" and len(set(masks[name].shape)) == 2:  # and the mode matters: today's default would prepare it otherwise
            assert not np.array_equal(ImageRecord(image_size=24).prepare(name, files[name]), features["images"][row])


def test_records_written_before_resize_existed_squash():
    assert record_from_dict({"kind": "image", "image_size": 16}).resize == "squash"
