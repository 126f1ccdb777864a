"""Datasets as they are published: classes from the archive (auto), regular-expression layouts, defect masks,
train/valid/test folders, and the class checks that run on the names before any member is read."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vapm.config.model_registry import load_registry
from vapm.config.settings import ParamsError, parse_settings, read_params
from vapm.data.ingest.dataset import IngestError, ingest_acoustic, ingest_vision
from vapm.data.ingest.layout import Layout
from vapm.data.ingest.masks import binary_mask
from tests.data.test_ingest_dataset import TARGET, dat_text, image_at, load_vision, outputs, random_pixels, \
    settings, waveform

MODELS = {name: None for name in load_registry()}  # model sections exist; only the general ones are checked here
IMAGE_PATTERN = r"[^/]+_(?P<class>[^/_]+)/Imgs/[^/]+\.jpg$"
MASK_PATTERN = r"[^/]+_(?P<class>[^/_]+)/Imgs/(?P<stem>[^/]+)\.png$"
PUBLISHED = {"Free": 6, "Crack": 4, "Blowhole": 3}
SHAPES = [(6, 15), (9, 7), (12, 5)]


@pytest.fixture
def published(ingest_make_zip, ingest_encode_image):
    """<Prefix>_<Class>/Imgs/<stem>.jpg with <stem>.png masks (0/255, one 0/1, one of another size, some none)."""
    members, masks = {}, {}
    for class_index, (name, count) in enumerate(PUBLISHED.items()):
        for number in range(count):
            shape = SHAPES[number % 3]
            stem = f"Tiles/MT_{name}/Imgs/exp{number}_num_{10 * class_index + number}"
            members[f"{stem}.jpg"] = ingest_encode_image(random_pixels(10 * class_index + number, shape), "JPEG")
            if number == 0:
                continue  # the first image of each class has no mask
            mask = np.zeros(shape, np.uint8)
            mask[: shape[0] // 2, 1:3] = 1 if number == 1 else 255  # 0/1 and 0/255 masks are both seen
            if number == 2:
                mask = np.kron(mask, np.ones((2, 2), np.uint8))  # twice the image's size: resized to it
            masks[f"{stem}.jpg"] = mask
            members[f"{stem}.png"] = ingest_encode_image(mask)
    members["Tiles/MT_Free/Imgs/orphan.png"] = ingest_encode_image(np.zeros((4, 4), np.uint8))
    members["Tiles/README.md"] = b"tiles"
    members["Tiles/MT_Free/Thumbs/exp0.jpg"] = members["Tiles/MT_Free/Imgs/exp0_num_0.jpg"]
    return ingest_make_zip("published.zip", members), masks


def test_a_published_layout_by_pattern_with_auto_classes_and_masks(tmp_path, published):
    archive, masks = published
    out = tmp_path / "vision"
    report = ingest_vision(archive, Layout(None, IMAGE_PATTERN, MASK_PATTERN), out, settings())

    assert report["classes"] == sorted(PUBLISHED)
    manifest, pixels = load_vision(out)
    assert len(manifest) == sum(PUBLISHED.values())  # every .jpg once; no mask, thumbnail or readme as an image
    assert (manifest.groupby("class").size().to_dict()) == PUBLISHED
    assert manifest["label"].tolist() == [sorted(PUBLISHED).index(name) for name in manifest["class"]]
    assert report["ignored_reasons"] == {"a mask with no image of the same class and stem": 1,
                                         "does not match ingest.vision_pattern": 1,
                                         "not a data file (expected .jpg, .jpeg, .png, .bmp)": 1}
    assert report["decoded"]["masks"] == {"paired": len(masks), "images_without": len(PUBLISHED)}
    stored = np.load(out / "masks.npy")
    assert stored.shape == pixels.shape
    for row, entry in manifest.iterrows():
        mask = image_at(manifest, stored, row)
        if entry.file in masks:
            assert entry.mask_file == entry.file[:-4] + ".png"
            expected = binary_mask(masks[entry.file], (entry.height, entry.width))
            np.testing.assert_array_equal(mask, expected)
            assert mask.sum() > 0 and set(np.unique(mask).tolist()) == {0, 1}
        else:
            assert entry.mask_file == "" and not mask.any()


def test_a_listed_class_list_with_a_pattern_maps_spellings_and_refuses_others(tmp_path, published):
    archive, _ = published
    report = ingest_vision(archive, Layout(["blowhole", "crack", "free"], IMAGE_PATTERN), tmp_path / "v", settings())
    assert report["classes"] == ["blowhole", "crack", "free"]  # the list's spelling and order, not the archive's
    with pytest.raises(IngestError, match=r"gives class 'Free', which is not one of vision.classes"):
        ingest_vision(archive, Layout(["Blowhole", "Crack"], IMAGE_PATTERN), tmp_path / "w", settings())


def test_a_listed_class_missing_from_the_archive_is_one_line_before_any_work(tmp_path, published):
    archive, _ = published
    with pytest.raises(IngestError) as caught:
        ingest_vision(archive, Layout(["Blowhole", "Crack", "Free", "Rust"], IMAGE_PATTERN), tmp_path / "v",
                      settings())
    message = str(caught.value)
    assert "vision.classes lists ['Rust'] but the archive has no files of it" in message and "\n" not in message
    assert caught.value.report["status"] == "failed" and outputs(tmp_path / "v") == set()


def test_a_pattern_that_matches_nothing_is_one_line(tmp_path, published):
    archive, _ = published
    with pytest.raises(IngestError, match=r"ingest.vision_pattern '.*' matches none of its 26 members") as caught:
        ingest_vision(archive, Layout(None, r"(?P<class>[^/]+)/Pictures/.*\.jpg$"), tmp_path / "v", settings())
    assert "\n" not in str(caught.value)


def test_a_class_with_one_image_is_one_line(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {f"data/{name}/{i}.png": ingest_encode_image(random_pixels(10 * n + i))
               for n, (name, count) in enumerate({"Good": 5, "Dent": 3, "Rust": 1}.items()) for i in range(count)}
    archive = ingest_make_zip("one.zip", members)
    with pytest.raises(IngestError, match=r"too few files to split: Rust has 1 file \(every class needs at least one "
                                          r"train and one test file\)"):
        ingest_vision(archive, None, tmp_path / "v", settings())


def test_auto_takes_the_folder_holding_each_file_and_refuses_a_single_class(tmp_path, ingest_make_zip,
                                                                             ingest_encode_image):
    members = {f"set/{name}/{i}.png": ingest_encode_image(random_pixels(10 * n + i))
               for n, name in enumerate(["Zinc", "alpha", "Beta"]) for i in range(4)}
    report = ingest_vision(ingest_make_zip("auto.zip", members), None, tmp_path / "v", settings())
    assert report["classes"] == ["Beta", "Zinc", "alpha"]  # sorted, as the names are spelt
    flat = {f"NEU-CLS/Cr_{i}.bmp": ingest_encode_image(random_pixels(i), "BMP") for i in range(4)}
    with pytest.raises(IngestError, match=r"auto found one class only \('NEU-CLS'\).*give ingest.vision_pattern"):
        ingest_vision(ingest_make_zip("flat.zip", flat), None, tmp_path / "w", settings())
    report = ingest_vision(ingest_make_zip("flat2.zip", {**flat, **{f"NEU-CLS/In_{i}.bmp": flat[f"NEU-CLS/Cr_{i}.bmp"][:0]
                                                                    + ingest_encode_image(random_pixels(50 + i), "BMP")
                                                                    for i in range(4)}}),
                           Layout(None, r"/(?P<class>[A-Za-z]+)_\d+\.bmp$"), tmp_path / "x", settings())
    assert report["classes"] == ["Cr", "In"]


def test_a_train_valid_test_layout_keeps_its_test_split_and_merges_valid_into_train(tmp_path, ingest_make_zip,
                                                                                      ingest_encode_image):
    members = {}
    for n, name in enumerate(["Dent", "Good"]):
        for s, (split, count) in enumerate((("train", 3), ("valid", 2), ("test", 2))):
            for i in range(count):
                members[f"ds/{split}/{name}/{split}{i}.png"] = ingest_encode_image(random_pixels(100 * n + 10 * s + i))
    for classes in (None, ["Dent", "Good"]):
        out = tmp_path / f"v{classes is None}"
        report = ingest_vision(ingest_make_zip("tvt.zip", members), classes, out, settings())
        manifest = pd.read_parquet(out / "manifest.parquet")
        assert report["split_source"] == "archive" and report["classes"] == ["Dent", "Good"]
        assert report["kept"]["train"] == 10 and report["kept"]["test"] == 4
        assert report["kept"]["from_validation_folders"] == 4
        expected = ["test" if "/test/" in file else "train" for file in manifest["file"]]
        assert manifest["split"].tolist() == expected


def test_audio_classes_auto_and_a_pattern(tmp_path, ingest_make_zip):
    members = {f"rec/{state}-{i}.dat": dat_text(waveform(10 * n + i)) for n, state in enumerate(["ok", "leak"])
               for i in range(4)}
    report = ingest_acoustic(ingest_make_zip("a.zip", members), Layout(None, r"/(?P<class>[a-z]+)-\d+\.dat$", key="audio"),
                             tmp_path / "a", settings(), TARGET)
    assert report["classes"] == ["leak", "ok"] and report["kept"]["total"] == 8


@pytest.mark.parametrize("key, pattern, message", [
    ("vision_pattern", r"(?P<kind>[^/]+)/x\.jpg", "needs the named group(s) (?P<class>...)"),
    ("vision_pattern", r"(?P<class>[^/]+", "is not a valid regular expression"),
    ("vision_mask_pattern", r"(?P<class>[^/]+)/x\.png", "needs the named group(s) (?P<stem>...)"),
    ("audio_pattern", r"[", "is not a valid regular expression"),
])
def test_bad_patterns_are_params_errors(key, pattern, message):
    params = read_params()
    params["ingest"][key] = pattern
    with pytest.raises(ParamsError) as caught:
        parse_settings(params, MODELS)
    assert f"ingest.{key}: {message}" in str(caught.value)


def test_classes_auto_or_a_list_in_params():
    params = read_params()
    params["vision"]["classes"] = "auto"
    settings_ = parse_settings(params, MODELS)
    assert settings_.classes("vision") is None and settings_.classes("audio") == params["audio"]["classes"]
    params["vision"]["classes"] = "automatic"
    with pytest.raises(ParamsError, match="vision.classes"):
        parse_settings(params, MODELS)


def test_a_stratified_split_too_small_for_the_classes_is_one_line_before_any_work(tmp_path, ingest_make_zip,
                                                                                    ingest_encode_image):
    members = {f"d/{name}/{i}.png": ingest_encode_image(random_pixels(10 * n + i))
               for n, name in enumerate("ABCDEF") for i in range(2)}
    with pytest.raises(IngestError, match=r"ingest.test_fraction 0.25 of 12 files gives 3 test and 9 train files, but "
                                          r"a stratified split of 6 classes needs at least 6 in each") as caught:
        ingest_vision(ingest_make_zip("small.zip", members), None, tmp_path / "v", settings())
    assert "\n" not in str(caught.value)


def test_only_bad_names_is_the_bad_files_message(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {"d/x.png": ingest_encode_image(random_pixels(1)), "e/y.png": ingest_encode_image(random_pixels(2))}
    with pytest.raises(IngestError, match=r"(?s)2 bad file\(s\).*unknown class"):
        ingest_vision(ingest_make_zip("bad.zip", members), ["Dent", "Good"], tmp_path / "v", settings())
