"""Whole archives to data/interim: layouts, outputs, duplicates, splits and bad files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import vapm.data.ingest.dataset as dataset
from vapm.config.settings import ParamsError
from vapm.data.ingest.dataset import ACOUSTIC_COLUMNS, IngestError, IngestSettings, VISION_COLUMNS, ingest_acoustic, ingest_vision
from vapm.data.ingest.decode import AudioTarget

NEU = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
DET_PREFIX = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
CLS_PREFIX = ["Cr", "In", "Pa", "PS", "RS", "Sc"]
SOUNDS = ["Healthy", "LIV"]
TARGET = AudioTarget(sample_rate=50000 / 3, samples=1000, length_tolerance=0.02)
VISION_TYPES = {"item": "int64", "file": "string", "class": "string", "label": "int64", "split": "string",
                "sha256": "string", "height": "int64", "width": "int64", "offset": "int64", "mask_file": "string",
                "source_archive": "string"}
ACOUSTIC_TYPES = {"item": "int64", "file": "string", "class": "string", "label": "int64", "split": "string",
                  "sha256": "string", "source_samples": "int64", "source_sample_rate": "double",
                  "source_archive": "string"}


def settings(**changes) -> IngestSettings:
    values = dict(on_bad_file="fail", test_fraction=0.25, seed=7, max_uncompressed_bytes=64 * 2**20, n_jobs=1)
    values.update(changes)
    return IngestSettings(**values)


def random_pixels(seed: int, shape=(6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def load_vision(out_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    return pd.read_parquet(out_dir / "manifest.parquet"), np.load(out_dir / "pixels.npy")


def parquet_types(path: Path) -> dict[str, str]:
    schema = pq.read_schema(path)
    return {name: str(schema.field(name).type).replace("large_string", "string") for name in schema.names}


def image_at(manifest: pd.DataFrame, pixels: np.ndarray, row: int) -> np.ndarray:
    entry = manifest.iloc[row]
    return pixels[entry.offset:entry.offset + entry.height * entry.width].reshape(entry.height, entry.width)


def dat_text(values: np.ndarray, separator: str = "\n") -> bytes:
    return separator.join(repr(float(value)) for value in values).encode()


def waveform(seed: int, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.9, 0.9, n)


def outputs(out_dir: Path) -> set[str]:
    return {path.name for path in out_dir.iterdir()} if out_dir.exists() else set()


# ---- layouts ----

def test_book_layout_keeps_the_archive_split_and_the_pixels(tmp_path, ingest_make_zip, ingest_encode_image):
    members, originals = {}, {}
    for label, name in enumerate(NEU):
        for split, count in (("train", 2), ("test", 1)):
            for number in range(count):
                pixels = random_pixels(100 * label + 10 * (split == "test") + number, (6, 5 + label % 2))
                member = f"NEU-data-TrainTest/{split}/{name}/{DET_PREFIX[label]}_{number}.png"
                members[member] = ingest_encode_image(pixels)
                originals[member] = pixels
    members["NEU-data-TrainTest/license.txt"] = b"research use"
    members["__MACOSX/NEU-data-TrainTest/._x.png"] = b"junk"
    members["NEU-data-TrainTest/train/Crazing/.DS_Store"] = b"junk"
    archive = ingest_make_zip("NEU-data-TrainTest.zip", members)
    out_dir = tmp_path / "interim" / "vision"

    report = ingest_vision(archive, NEU, out_dir, settings())

    manifest, pixels = load_vision(out_dir)
    assert list(manifest.columns) == VISION_COLUMNS
    assert parquet_types(out_dir / "manifest.parquet") == VISION_TYPES
    assert outputs(out_dir) == {"manifest.parquet", "pixels.npy"}
    assert pixels.dtype == np.uint8 and pixels.ndim == 1
    assert manifest["item"].tolist() == list(range(18))
    assert manifest["file"].tolist() == sorted(originals)
    for row, entry in manifest.iterrows():
        np.testing.assert_array_equal(image_at(manifest, pixels, row), originals[entry.file])
        assert entry.split == entry.file.split("/")[1]
        assert entry["class"] == entry.file.split("/")[2] and entry.label == NEU.index(entry["class"])
        assert entry.sha256 == hashlib.sha256(members[entry.file]).hexdigest()
        assert entry.source_archive == str(archive)
    assert (manifest.offset + manifest.height * manifest.width).iloc[-1] == pixels.size
    assert report["split_source"] == "archive"
    assert report["members_seen"] == 21
    assert [entry["file"] for entry in report["ignored"]] == sorted(
        ["NEU-data-TrainTest/license.txt", "__MACOSX/NEU-data-TrainTest/._x.png",
         "NEU-data-TrainTest/train/Crazing/.DS_Store"])
    assert report["kept"]["per_class"] == {name: {"train": 2, "test": 1} for name in NEU}
    assert (report["kept"]["train"], report["kept"]["test"], report["kept"]["total"]) == (12, 6, 18)
    assert report["bad"] == [] and report["duplicates"] == [] and report["status"] == "ok"
    assert report["decoded"] == {"image_sizes": {"6x5": 9, "6x6": 9}}


def ingest_layout(tmp_path, ingest_make_zip, member_names, data_for, **changes):
    archive = ingest_make_zip("layout.zip", {name: data_for(name) for name in member_names})
    out_dir = tmp_path / "out"
    report = ingest_vision(archive, NEU, out_dir, settings(**changes))
    return report, pd.read_parquet(out_dir / "manifest.parquet")


@pytest.mark.parametrize("layout", ["flat folders", "NEU-CLS bmp", "NEU-DET jpg"])
def test_layouts_without_a_split_get_a_stratified_one(tmp_path, ingest_make_zip, ingest_encode_image, layout):
    names = []
    for label, name in enumerate(NEU):
        for number in range(4):
            names.append({"flat folders": f"{name.lower()}/img{number}.png",
                          "NEU-CLS bmp": f"NEU surface defect database/{CLS_PREFIX[label]}_{number + 1}.bmp",
                          "NEU-DET jpg": f"NEU-DET/IMAGES/{DET_PREFIX[label]}_{number + 1}.jpg"}[layout])
    image_format = {"flat folders": "PNG", "NEU-CLS bmp": "BMP", "NEU-DET jpg": "JPEG"}[layout]
    seeds = {name: seed for seed, name in enumerate(names)}

    report, manifest = ingest_layout(tmp_path, ingest_make_zip, names,
                                     lambda name: ingest_encode_image(random_pixels(seeds[name]), image_format))

    assert report["split_source"] == "stratified"
    assert manifest.groupby("class")["split"].apply(sorted).to_dict() == {
        name: ["test", "train", "train", "train"] for name in NEU}
    expected_labels = [NEU.index(NEU[names.index(file) // 4]) for file in manifest.file]
    assert manifest.label.tolist() == expected_labels


def test_stratified_split_depends_only_on_the_seed(tmp_path, ingest_make_zip, ingest_encode_image):
    archive = ingest_make_zip("flat.zip", {f"{name}/{number}.png": ingest_encode_image(random_pixels(10 * i + number))
                                           for i, name in enumerate(NEU) for number in range(5)})

    def splits(seed: int, run: str) -> list[str]:
        ingest_vision(archive, NEU, tmp_path / run, settings(seed=seed, test_fraction=0.4))
        return pd.read_parquet(tmp_path / run / "manifest.parquet")["split"].tolist()

    first, again, other_seed = splits(7, "a"), splits(7, "b"), splits(8, "c")
    assert first == again
    assert first != other_seed
    assert first.count("test") == other_seed.count("test") == 12  # 2 of 5 per class either way


# ---- duplicates ----

def test_duplicates_keep_the_first_in_sorted_order(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {f"{split}/{name}/{name}_{split}.png": ingest_encode_image(random_pixels(i * 2 + (split == "test")))
               for i, name in enumerate(NEU) for split in ("train", "test")}
    same_split = members["train/Crazing/Crazing_train.png"]
    members["train/Crazing/Crazing_copy.png"] = same_split
    across = members["test/Inclusion/Inclusion_test.png"]
    members["train/Inclusion/zz_copy.png"] = across
    archive = ingest_make_zip("dups.zip", members)

    report = ingest_vision(archive, NEU, tmp_path / "out", settings())

    assert report["duplicates"] == [
        {"file": "train/Crazing/Crazing_train.png", "duplicate_of": "train/Crazing/Crazing_copy.png"},
        {"file": "train/Inclusion/zz_copy.png", "duplicate_of": "test/Inclusion/Inclusion_test.png"},
    ]
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert manifest.sha256.is_unique and len(manifest) == 12
    assert report["kept"]["per_class"]["Crazing"] == {"train": 1, "test": 1}


def test_identical_files_in_different_classes_are_bad(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {f"{split}/{name}/{split}.png": ingest_encode_image(random_pixels(i * 2 + (split == "test")))
               for i, name in enumerate(NEU) for split in ("train", "test")}
    members["train/Crazing/twin.png"] = members["train/Patches/train.png"]
    members["train/Patches/second.png"] = ingest_encode_image(random_pixels(98))
    archive = ingest_make_zip("twins.zip", members)

    with pytest.raises(IngestError) as caught:
        ingest_vision(archive, NEU, tmp_path / "out", settings())
    bad = {entry["file"]: entry["reason"] for entry in caught.value.report["bad"]}
    assert set(bad) == {"train/Crazing/twin.png", "train/Patches/train.png"}
    for reason in bad.values():
        assert "train/Crazing/twin.png (Crazing)" in reason and "train/Patches/train.png (Patches)" in reason

    assert not (tmp_path / "out" / "manifest.parquet").exists()

    report = ingest_vision(archive, NEU, tmp_path / "out", settings(on_bad_file="skip"))
    assert report["kept"]["per_class"]["Crazing"] == {"train": 1, "test": 1}
    assert report["kept"]["per_class"]["Patches"] == {"train": 1, "test": 1}
    assert len(report["bad"]) == 2 and report["duplicates"] == []


# ---- bad files ----

@pytest.fixture
def vision_archive_with_bad_files(ingest_make_zip, ingest_encode_image):
    members = {f"{split}/{name}/{number}.jpg": ingest_encode_image(random_pixels(100 * i + 10 * number + len(split)),
                                                                   "JPEG")
               for i, name in enumerate(NEU) for split in ("train", "test") for number in range(2)}
    good_jpeg = ingest_encode_image(random_pixels(1234, (32, 32)), "JPEG")
    members["train/Crazing/corrupt.jpg"] = good_jpeg[:2] + bytes(60) + good_jpeg[62:]
    members["train/Crazing/truncated.jpg"] = good_jpeg[: len(good_jpeg) // 2]
    members["train/Crazing/empty.jpg"] = b""
    members["train/Rust/rusty.jpg"] = ingest_encode_image(random_pixels(4321), "JPEG")
    return ingest_make_zip("bad.zip", members)


BAD_FILES = {"train/Crazing/corrupt.jpg": "cannot decode image", "train/Crazing/truncated.jpg": "truncated",
             "train/Crazing/empty.jpg": "empty file", "train/Rust/rusty.jpg": "unknown class"}


def test_bad_files_fail_the_dataset_and_are_all_listed(tmp_path, vision_archive_with_bad_files):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "manifest.parquet").write_text("an earlier run's output")

    with pytest.raises(IngestError) as caught:
        ingest_vision(vision_archive_with_bad_files, NEU, out_dir, settings())

    message = str(caught.value)
    assert "4 bad file(s)" in message and "ingest.on_bad_file: skip" in message
    for file in BAD_FILES:
        assert file in message
    bad = {entry["file"]: entry["reason"] for entry in caught.value.report["bad"]}
    assert set(bad) == set(BAD_FILES)
    for file, reason in BAD_FILES.items():
        assert reason in bad[file]
    assert caught.value.report["status"] == "failed"
    assert outputs(out_dir) == set()  # nothing half-written, and no stale manifest left looking current


def test_bad_files_are_skipped_and_reported_when_asked(tmp_path, vision_archive_with_bad_files):
    report = ingest_vision(vision_archive_with_bad_files, NEU, tmp_path / "out", settings(on_bad_file="skip"))
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 24 and not set(manifest.file) & set(BAD_FILES)
    assert {entry["file"] for entry in report["bad"]} == set(BAD_FILES)
    assert report["status"] == "ok"


def test_a_class_without_test_items_fails(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {f"{split}/{name}/a.png": ingest_encode_image(random_pixels(i * 2 + len(split)))
               for i, name in enumerate(NEU) for split in ("train", "test") if (name, split) != ("Rolled", "test")}
    archive = ingest_make_zip("no_test.zip", members)
    with pytest.raises(IngestError, match="too few files to split: Rolled has no test files") as caught:
        ingest_vision(archive, NEU, tmp_path / "out", settings())
    assert caught.value.report["status"] == "failed"  # found from the names, before any member was read
    assert outputs(tmp_path / "out") == set()


def test_files_outside_the_split_folders_of_a_split_archive_are_bad(tmp_path, ingest_make_zip, ingest_encode_image):
    members = {f"{split}/{name}/a.png": ingest_encode_image(random_pixels(i * 2 + len(split)))
               for i, name in enumerate(NEU) for split in ("train", "test")}
    members["extra/Crazing/b.png"] = ingest_encode_image(random_pixels(77))
    archive = ingest_make_zip("mixed.zip", members)
    with pytest.raises(IngestError, match="extra/Crazing/b.png: not inside a train/ or test/ folder"):
        ingest_vision(archive, NEU, tmp_path / "out", settings())


def test_archive_without_data_files_fails(tmp_path, ingest_make_zip):
    archive = ingest_make_zip("empty.zip", {"readme.txt": b"nothing here"})
    with pytest.raises(IngestError, match=r"no data files \(.jpg"):
        ingest_vision(archive, NEU, tmp_path / "out", settings())


def test_report_is_deterministic_json(tmp_path, vision_archive_with_bad_files):
    texts = []
    for run in ("a", "b"):
        report = ingest_vision(vision_archive_with_bad_files, NEU, tmp_path / run, settings(on_bad_file="skip"))
        texts.append(json.dumps(report, sort_keys=True, indent=2))
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["kept"]["total"] == 24


# ---- audio ----

def tone(hz: float, rate: float, n: int) -> np.ndarray:
    return 0.4 * np.sin(2 * np.pi * hz * np.arange(n) / rate)


@pytest.fixture
def acoustic_members(ingest_encode_sound) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Four good clips per class, .dat (lines, commas), mono and stereo WAV, with what each should decode to."""
    members, expected = {}, {}
    for i, name in enumerate(SOUNDS):
        stem = f"AirCompressor_Data/{name}/preprocess_Reading"
        values = waveform(10 * i)
        members[f"{stem}0.dat"], expected[f"{stem}0.dat"] = dat_text(values), values
        values = waveform(10 * i + 1)
        members[f"{stem}1.dat"], expected[f"{stem}1.dat"] = dat_text(values, separator=","), values
        # WAV needs a whole-number rate, so these are resampled from 16667 Hz to 50000/3 Hz.
        hz = 100 + 50 * i
        members[f"{stem}2.wav"] = ingest_encode_sound(tone(hz, 16667, 1000), 16667)
        expected[f"{stem}2.wav"] = tone(hz, TARGET.sample_rate, 1000)
        stereo = np.column_stack([tone(hz, 16667, 1000), tone(3 * hz, 16667, 1000)])
        members[f"{stem}3.wav"] = ingest_encode_sound(stereo, 16667)
        expected[f"{stem}3.wav"] = (tone(hz, TARGET.sample_rate, 1000) + tone(3 * hz, TARGET.sample_rate, 1000)) / 2
    members["AirCompressor_Data/license.txt"] = b"copyright"
    return members, expected


def test_audio_in_every_format_becomes_fixed_length_clips(tmp_path, ingest_make_zip, acoustic_members,
                                                          ingest_encode_sound):
    members, expected = acoustic_members
    members = {**members, "AirCompressor_Data/LIV/recorded_44k.wav": ingest_encode_sound(tone(300, 44100, 2646),
                                                                                         44100)}
    expected = {**expected, "AirCompressor_Data/LIV/recorded_44k.wav": tone(300, TARGET.sample_rate, 1000)}
    archive = ingest_make_zip("AirCompressor_Data.zip", members)
    out_dir = tmp_path / "acoustic"

    report = ingest_acoustic(archive, SOUNDS, out_dir, settings(test_fraction=0.4), TARGET)

    manifest = pd.read_parquet(out_dir / "manifest.parquet")
    clips = np.load(out_dir / "clips.npy")
    assert list(manifest.columns) == ACOUSTIC_COLUMNS
    assert parquet_types(out_dir / "manifest.parquet") == ACOUSTIC_TYPES
    assert clips.dtype == np.float32 and clips.shape == (9, 1000)
    assert manifest.file.tolist() == sorted(expected)
    assert report["ignored"] == [{"file": "AirCompressor_Data/license.txt",
                                  "reason": "not a data file (expected .dat, .wav, .flac)"}]
    assert report["decoded"] == {"source_sample_rates": {"16666.7": 4, "16667": 4, "44100": 1}}
    assert report["split_source"] == "stratified"
    for row, entry in manifest.iterrows():
        assert entry.label == SOUNDS.index(entry["class"])
        assert entry.sha256 == hashlib.sha256(members[entry.file]).hexdigest()
        if entry.file.endswith(".dat"):
            np.testing.assert_array_equal(clips[row], expected[entry.file].astype(np.float32))
            assert (entry.source_samples, entry.source_sample_rate) == (1000, TARGET.sample_rate)
        else:  # resampled: equal away from the ends, where the resampling filter rings
            np.testing.assert_allclose(clips[row][50:-50], expected[entry.file][50:-50], atol=3e-3)
    recorded = manifest.index[manifest.file.str.endswith("recorded_44k.wav")][0]
    assert (manifest.source_samples[recorded], manifest.source_sample_rate[recorded]) == (2646, 44100.0)


@pytest.mark.parametrize("content, reason", [
    (b"0.1\n0.2\nhello\n" + b"0.0\n" * 997, "non-numeric value 'hello' at line 3"),
    (b"0.1\nNaN\n" + b"0.0\n" * 998, "non-finite value 'NaN' at line 2"),
    (b"0.1\n-inf\n" + b"0.0\n" * 998, "non-finite value '-inf' at line 2"),
    (b"0.5\n" * 700, "wrong length: 700 samples"),
    (b"", "empty file"),
])
def test_bad_clips_fail_or_are_skipped(tmp_path, ingest_make_zip, acoustic_members, content, reason):
    members, _ = acoustic_members
    archive = ingest_make_zip("bad_audio.zip", {**members, "AirCompressor_Data/LIV/broken.dat": content})

    with pytest.raises(IngestError, match="AirCompressor_Data/LIV/broken.dat: " + reason):
        ingest_acoustic(archive, SOUNDS, tmp_path / "out", settings(test_fraction=0.5), TARGET)
    assert outputs(tmp_path / "out") == set()

    report = ingest_acoustic(archive, SOUNDS, tmp_path / "out", settings(test_fraction=0.5, on_bad_file="skip"),
                             TARGET)
    assert [entry["file"] for entry in report["bad"]] == ["AirCompressor_Data/LIV/broken.dat"]
    assert reason in report["bad"][0]["reason"]
    assert np.load(tmp_path / "out" / "clips.npy").shape == (8, 1000)


def test_worker_processes_give_the_same_outputs(tmp_path, ingest_make_zip, monkeypatch):
    members = {f"{name}/clip{number:02d}.dat": dat_text(waveform(100 * i + number), ",")
               for i, name in enumerate(SOUNDS) for number in range(40)}  # 80 clips: three chunks
    members["LIV/clip00_copy.dat"] = members["LIV/clip00.dat"]
    members["LIV/zz_bad.dat"] = b"1\n2\n"
    archive = ingest_make_zip("many.zip", members)
    serial = ingest_acoustic(archive, SOUNDS, tmp_path / "serial", settings(on_bad_file="skip"), TARGET)
    monkeypatch.setattr(dataset, "PARALLEL_MIN_BYTES", 0)  # so this small archive is worth two workers

    parallel = ingest_acoustic(archive, SOUNDS, tmp_path / "parallel", settings(on_bad_file="skip", n_jobs=2), TARGET)

    assert parallel == serial
    assert len(serial["bad"]) == 1 and len(serial["duplicates"]) == 1
    for name in ("clips.npy", "manifest.parquet"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


@pytest.mark.parametrize("key, value, message", [
    ("on_bad_file", "ignore", "ingest.on_bad_file must be one of"),
    ("test_fraction", 1.5, "ingest.test_fraction must lie between 0 and 1"),
    ("max_uncompressed_bytes", 0, "ingest.max_uncompressed_mb must be positive"),
])
def test_bad_settings_are_params_errors(key, value, message):
    good = dict(on_bad_file="fail", test_fraction=0.2, seed=1, max_uncompressed_bytes=10, n_jobs=1)
    with pytest.raises(ParamsError, match=message):
        IngestSettings(**{**good, key: value})
