"""The synthetic sample archives: layout, formats, determinism, and that the classes can be told apart."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vapm.data.synth import build_acoustic_archive, build_vision_archive, render_clip, render_defect, write_zip
from vapm.data.synth.acoustic import check_classes as check_audio_classes
from vapm.data.synth.acoustic import derived_signature
from vapm.data.synth.archive import FIXED_DATE_TIME, SynthError, member_rng, slug
from vapm.data.synth.vision import check_classes as check_vision_classes
from vapm.data.synth.vision import file_prefix, vision_look

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = REPO.parent / "shared" / "data"
VISION_CLASSES = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
AUDIO_CLASSES = ["Bearing", "Flywheel", "Healthy", "LIV", "LOV", "NRV", "Piston", "Riderbelt"]
RATE = 50000 / 3
CUSTOM_CLASSES = ["Dent", "Rust spot", "Öl"]  # none of them known to the builders

needs_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data is absent")


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("VAPM_NO_PROGRESS", "1")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small_vision(path: Path, seed: int = 7) -> Path:
    build_vision_archive(path, VISION_CLASSES, image_size=32, train_per_class=3, test_per_class=2, seed=seed)
    return path


def _small_acoustic(path: Path, seed: int = 7) -> Path:
    build_acoustic_archive(path, AUDIO_CLASSES, n_samples=2000, sample_rate=RATE, clips_per_class=2, seed=seed)
    return path


# --- write_zip -------------------------------------------------------------------------------

def test_write_zip_keeps_order_and_fixes_metadata(tmp_path):
    members = [("b/two.txt", b"2" * 100), ("a/one.txt", b"1"), ("c.bin", b"")]
    count = write_zip(tmp_path / "out" / "x.zip", members)
    assert count == 3
    with zipfile.ZipFile(tmp_path / "out" / "x.zip") as archive:
        assert archive.namelist() == ["b/two.txt", "a/one.txt", "c.bin"]
        assert [archive.read(name) for name, _ in members] == [data for _, data in members]
        assert {info.date_time for info in archive.infolist()} == {FIXED_DATE_TIME}
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "x.zip"]


def test_write_zip_same_members_give_same_bytes(tmp_path):
    members = [("d/m.txt", b"hello" * 50), ("d/n.txt", b"world")]
    write_zip(tmp_path / "1.zip", members)
    write_zip(tmp_path / "2.zip", iter(members))
    assert (tmp_path / "1.zip").read_bytes() == (tmp_path / "2.zip").read_bytes()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "dir/", "a\\b.txt", ""])
def test_write_zip_rejects_unsafe_names(tmp_path, name):
    with pytest.raises(ValueError, match="member name"):
        write_zip(tmp_path / "x.zip", [(name, b"x")])
    assert list(tmp_path.iterdir()) == []


def test_write_zip_failure_keeps_the_previous_archive_and_no_temp_file(tmp_path):
    target = tmp_path / "x.zip"
    write_zip(target, [("ok.txt", b"old")])
    before = target.read_bytes()
    with pytest.raises(ValueError, match="given twice"):
        write_zip(target, [("a.txt", b"1"), ("a.txt", b"2")])
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_member_rng_rejects_negative_seed():
    with pytest.raises(ValueError, match="non-negative"):
        member_rng(-1, "vision")


# --- vision ----------------------------------------------------------------------------------

def test_vision_archive_layout_and_names(tmp_path):
    path = _small_vision(tmp_path / "NEU-data-TrainTest.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    expected_prefix = {"Crazing": "crazing", "Inclusion": "inclusion", "Patches": "patches",
                       "Pitted": "pitted_surface", "Rolled": "rolled-in_scale", "Scratches": "scratches"}
    expected = [f"NEU-data-TrainTest/{split}/{cls}/{expected_prefix[cls]}_{n}.jpg"
                for cls in VISION_CLASSES
                for split, numbers in (("train", [1, 2, 3]), ("test", [4, 5]))
                for n in numbers]
    assert names == expected


def test_vision_images_are_grey_jpegs_of_the_requested_size(tmp_path):
    path = _small_vision(tmp_path / "v.zip")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.format == "JPEG" and image.mode == "L" and image.size == (32, 32), name


def test_vision_archive_is_deterministic_and_seed_dependent(tmp_path):
    first = _sha256(_small_vision(tmp_path / "a.zip", seed=1))
    again = _sha256(_small_vision(tmp_path / "b.zip", seed=1))
    other = _sha256(_small_vision(tmp_path / "c.zip", seed=2))
    assert first == again
    assert first != other


def test_render_defect_varies_within_a_class_and_repeats_with_the_same_stream():
    for name in VISION_CLASSES:
        images = [render_defect(name, 48, np.random.default_rng(k)) for k in range(4)]
        assert all(image.dtype == np.uint8 and image.shape == (48, 48) for image in images)
        assert len({image.tobytes() for image in images}) == 4, name
        assert np.array_equal(images[0], render_defect(name, 48, np.random.default_rng(0)))


def test_vision_archive_for_any_class_names(tmp_path):
    build_vision_archive(tmp_path / "a.zip", CUSTOM_CLASSES, 32, 2, 1, seed=5)
    build_vision_archive(tmp_path / "b.zip", CUSTOM_CLASSES, 32, 2, 1, seed=5)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        # The folder is the class itself (ingest reads the class from it); the file prefix is a slug.
        assert names[:3] == ["NEU-data-TrainTest/train/Dent/dent_1.jpg", "NEU-data-TrainTest/train/Dent/dent_2.jpg",
                             "NEU-data-TrainTest/test/Dent/dent_3.jpg"]
        assert "NEU-data-TrainTest/train/Rust spot/rust-spot_1.jpg" in names
        assert "NEU-data-TrainTest/test/Öl/öl_3.jpg" in names
        images = {name: np.asarray(Image.open(io.BytesIO(archive.read(name)))) for name in names}
    assert all(image.shape == (32, 32) for image in images.values())
    assert len({image.tobytes() for image in images.values()}) == len(images)


def test_a_class_looks_the_same_whatever_else_is_in_the_list(tmp_path):
    build_vision_archive(tmp_path / "a.zip", ["Dent", "Oil"], 32, 1, 1, seed=5)
    build_vision_archive(tmp_path / "b.zip", ["Crazing", "Dent", "Grime"], 32, 1, 1, seed=5)
    member = "NEU-data-TrainTest/train/Dent/dent_1.jpg"
    with zipfile.ZipFile(tmp_path / "a.zip") as a, zipfile.ZipFile(tmp_path / "b.zip") as b:
        assert a.read(member) == b.read(member)


def test_known_vision_classes_keep_their_hand_made_look():
    from vapm.data.synth.vision import BACKGROUNDS, DEFECT_RENDERERS, NEU_DET_PREFIXES
    for name in VISION_CLASSES:
        look = vision_look(name)
        assert (look.renderer, look.brightness, look.grain) == (DEFECT_RENDERERS[name], *BACKGROUNDS[name])
        assert (look.contrast_gain, look.across) == (1.0, False)
        assert file_prefix(name) == NEU_DET_PREFIXES[name]


def test_derived_looks_are_stable_and_rarely_alike():
    assert vision_look("Dent") == vision_look("Dent")
    looks = [vision_look(f"defect {k}") for k in range(200)]
    kinds = {(look.renderer, look.brightness, look.grain, look.contrast_gain > 0, look.across) for look in looks}
    assert len(kinds) > 150  # of 480 kinds, before the contrast gain: the hash spreads names over them
    assert {look.renderer for look in looks} == set(vision_look(n).renderer for n in VISION_CLASSES)


def test_distinct_custom_classes_give_different_images():
    for first, second in [("Dent", "Rust spot"), ("Dent", "Öl"), ("Rust spot", "Öl")]:
        a = render_defect(first, 48, np.random.default_rng(0))
        b = render_defect(second, 48, np.random.default_rng(0))
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("name, expected", [("Dent", "dent"), ("Rust spot", "rust-spot"), ("Öl / Fett", "öl-fett"),
                                            ("pitted_surface", "pitted-surface"), ("  A  b ", "a-b")])
def test_slug(name, expected):
    assert slug(name) == expected


def test_slug_of_a_name_without_letters_or_digits_and_of_a_long_name():
    assert re.fullmatch(r"class-[0-9a-f]{8}", slug("★ ★"))
    assert slug("★ ★") != slug("☆")
    long = slug("x" * 100)
    assert len(long) < 60 and long != slug("x" * 101)


@pytest.mark.parametrize("classes, message", [
    (["Dent", "dent"], r"distinct regardless of case.*'Dent', 'dent'"),
    (["Crazing", "crazing"], r"distinct regardless of case"),
    (["Dent", "Rust/Spot"], r"'Rust/Spot' contains a path separator"),
    (["Dent", "Rust\\Spot"], r"'Rust\\\\Spot' contains a path separator"),
    (["Dent", "Nul\0"], r"'Nul\\x00' contains a control character"),
    (["Dent", ".."], r"'\.\.' is a relative folder reference"),
    (["Dent", " "], r"' ' is empty"),
    (["Crazing", "Cr"], r"ingest could not read back.*share the spelling 'cr'"),
    (["Dent", "Test"], r"class 'Test': ingest could not read back.*more than one split folder"),
    (["Dent", "__MACOSX"], r"class '__MACOSX': ingest would skip"),
    (["Rust-spot", "Rust spot"], r"ingest could not read back.*file-name prefix"),
])
def test_bad_vision_class_lists_are_refused_clearly(tmp_path, classes, message):
    with pytest.raises(SynthError, match=message):
        check_vision_classes(classes)
    with pytest.raises(SynthError, match=message):
        build_vision_archive(tmp_path / "v.zip", classes, 32, 1, 1, seed=0)
    assert not (tmp_path / "v.zip").exists()


def test_vision_counts_are_checked(tmp_path):
    with pytest.raises(ValueError, match="train_per_class"):
        build_vision_archive(tmp_path / "v.zip", ["Crazing"], 32, 0, 1, seed=0)
    assert not (tmp_path / "v.zip").exists()


def _image_features(image: np.ndarray) -> list[float]:
    pixels = image.astype(np.float32)
    detail = pixels - uniform_filter(pixels, 7)
    spread = detail.std() + 1e-6
    across = np.abs(np.diff(detail, axis=1)).mean()
    along = np.abs(np.diff(detail, axis=0)).mean()
    return [pixels.mean(), pixels.std(), spread, np.percentile(detail, 1) / spread,
            np.percentile(detail, 99) / spread, (detail < -3 * spread).mean(), (detail > 3 * spread).mean(),
            across / (along + 1e-6), uniform_filter(pixels, 9).std(), pixels.mean(axis=0).std()]


def test_vision_classes_are_learnable_from_simple_features():
    features, labels = [], []
    for label, name in enumerate(VISION_CLASSES):
        for number in range(12):
            features.append(_image_features(render_defect(name, 64, member_rng(3, "vision", name, number))))
            labels.append(label)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), labels, cv=3).mean()
    assert accuracy > 3 / len(VISION_CLASSES), accuracy  # chance is 1/6


def test_custom_vision_classes_are_learnable_by_a_nearest_centroid():
    """Downsampled pixels, a nearest centroid fitted on half the images, scored on the other half."""
    def pixels(name: str, number: int) -> np.ndarray:
        image = render_defect(name, 48, member_rng(3, "vision", name, number)).astype(np.float32)
        # Blocks of 6 x 6 pixels, sorted: mean level, spread and the dark/bright tails, whatever the flips.
        blocks = image.reshape(8, 6, 8, 6).transpose(0, 2, 1, 3).reshape(64, 36)
        detail = image - uniform_filter(image, 5)
        return np.concatenate([np.sort(blocks.mean(axis=1)), np.sort(blocks.std(axis=1)),
                               np.percentile(detail, [1, 5, 50, 95, 99]),
                               [np.abs(np.diff(detail, axis=1)).mean(), np.abs(np.diff(detail, axis=0)).mean()]])

    features = np.array([[pixels(name, number) for number in range(16)] for name in CUSTOM_CLASSES])
    scale = features[:, :8].reshape(-1, features.shape[-1]).std(axis=0) + 1e-6
    centroids = features[:, :8].mean(axis=1) / scale
    held_out = features[:, 8:] / scale
    distances = ((held_out[:, :, None, :] - centroids[None, None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=-1) == np.arange(len(CUSTOM_CLASSES))[:, None]).mean()
    assert accuracy > 2 / len(CUSTOM_CLASSES), accuracy  # chance is 1/3


# --- acoustic --------------------------------------------------------------------------------

def test_acoustic_archive_layout_and_dat_format(tmp_path):
    path = _small_acoustic(tmp_path / "AirCompressor_Data.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == [f"AirCompressor_Data/{cls}/preprocess_Reading{n}.dat" for cls in AUDIO_CLASSES for n in (1, 2)]
        for name in names:
            text = archive.read(name).decode("ascii")
            lines = text.splitlines()
            assert text.endswith("\n") and len(lines) == 2000
            values = np.array([float(line) for line in lines])
            assert np.isfinite(values).all() and np.abs(values).max() < 10


def test_acoustic_archive_is_deterministic_and_seed_dependent(tmp_path):
    first = _sha256(_small_acoustic(tmp_path / "a.zip", seed=1))
    again = _sha256(_small_acoustic(tmp_path / "b.zip", seed=1))
    other = _sha256(_small_acoustic(tmp_path / "c.zip", seed=2))
    assert first == again
    assert first != other


def test_clips_look_like_the_original_recordings():
    for name in AUDIO_CLASSES:
        clip = render_clip(name, 50000, RATE, np.random.default_rng(5))
        assert clip.dtype == np.float32 and clip.shape == (50000,)
        assert 0.03 < clip.mean() < 0.2, (name, clip.mean())
        assert 0.15 < clip.std() < 0.35, (name, clip.std())
        assert 0.3 < np.abs(clip).max() < 5, name


def test_acoustic_archive_for_any_class_names(tmp_path):
    build_acoustic_archive(tmp_path / "a.zip", ["Healthy", *CUSTOM_CLASSES], 1000, RATE, 2, seed=5)
    build_acoustic_archive(tmp_path / "b.zip", ["Healthy", *CUSTOM_CLASSES], 1000, RATE, 2, seed=5)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        assert names == [f"AirCompressor_Data/{cls}/preprocess_Reading{n}.dat"
                         for cls in ["Healthy", *CUSTOM_CLASSES] for n in (1, 2)]
        assert len({archive.read(name) for name in names}) == len(names)


def test_custom_clips_look_like_the_original_recordings():
    for name in CUSTOM_CLASSES + [f"state {k}" for k in range(12)]:
        clip = render_clip(name, 50000, RATE, np.random.default_rng(5))
        assert clip.dtype == np.float32 and clip.shape == (50000,) and np.isfinite(clip).all()
        assert 0.03 < clip.mean() < 0.2, (name, clip.mean())
        assert 0.15 < clip.std() < 0.35, (name, clip.std())
        assert 0.3 < np.abs(clip).max() < 5, name


def test_known_audio_classes_keep_their_signature():
    from vapm.data.synth.acoustic import FAULT_SIGNATURES, signature
    assert all(signature(name) is FAULT_SIGNATURES[name] for name in AUDIO_CLASSES)
    # A derived signature depends on the name alone: the same name sounds the same, another name differently.
    clips = [render_clip("Gearbox", 4000, RATE, np.random.default_rng(1)) for _ in range(2)]
    assert np.array_equal(*clips)
    assert not np.array_equal(clips[0], render_clip("Gearbox2", 4000, RATE, np.random.default_rng(1)))
    assert derived_signature("Gearbox") is not FAULT_SIGNATURES["Healthy"]


@pytest.mark.parametrize("classes, message", [
    (["Healthy", "healthy"], r"distinct regardless of case"),
    (["Healthy", "Gear/box"], r"'Gear/box' contains a path separator"),
    (["Healthy", "Test"], r"class 'Test': ingest would read .* split 'test'"),
    (["Healthy", "preprocess"], r"class 'Healthy': ingest could not read back.*file-name prefix"),
])
def test_bad_audio_class_lists_are_refused_clearly(tmp_path, classes, message):
    with pytest.raises(SynthError, match=message):
        check_audio_classes(classes)
    with pytest.raises(SynthError, match=message):
        build_acoustic_archive(tmp_path / "a.zip", classes, 1000, RATE, 1, seed=0)
    assert not (tmp_path / "a.zip").exists()


def _clip_features(clip: np.ndarray, frame: int = 512) -> np.ndarray:
    """Per-band mean and spread over time of a log spectrogram: catches tones, hiss gating and clicks."""
    frames = (clip[: len(clip) // frame * frame] - clip.mean()).reshape(-1, frame) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(frame, 1 / RATE)
    edges = np.geomspace(40, RATE / 2, 13)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    log_bands = np.log(bands + 1e-9)
    return np.concatenate([log_bands.mean(axis=0) - log_bands.mean(), log_bands.std(axis=0)])


def test_audio_classes_are_learnable_from_simple_features():
    features, labels = [], []
    for label, name in enumerate(AUDIO_CLASSES):
        for number in range(12):
            features.append(_clip_features(render_clip(name, 16667, RATE, member_rng(3, "acoustic", name, number))))
            labels.append(label)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), labels, cv=3).mean()
    assert accuracy > 3 / len(AUDIO_CLASSES), accuracy  # chance is 1/8


def test_custom_audio_classes_are_learnable_from_simple_features():
    classes = ["Healthy", *CUSTOM_CLASSES]
    features = np.array([[_clip_features(render_clip(name, 16667, RATE, member_rng(3, "acoustic", name, number)))
                          for number in range(10)] for name in classes])
    centroids = features[:, :5].mean(axis=1)
    distances = ((features[:, 5:, None, :] - centroids[None, None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=-1) == np.arange(len(classes))[:, None]).mean()
    assert accuracy > 2 / len(classes), accuracy  # chance is 1/4


# --- the same layout as the real archives --------------------------------------------------

@pytest.mark.realdata
@needs_real_data
def test_vision_names_follow_the_real_archive(tmp_path):
    with zipfile.ZipFile(REAL_DATA / "NEU-data-TrainTest.zip") as archive:
        real = [name for name in archive.namelist() if not name.endswith("/")]
    with zipfile.ZipFile(_small_vision(tmp_path / "v.zip")) as archive:
        ours = archive.namelist()

    def shape(name: str) -> tuple[str, str, str, str]:
        root, split, cls, file = name.split("/")
        return root, split, cls, re.sub(r"_\d+\.jpg$", "_N.jpg", file)

    assert {shape(name) for name in ours} == {shape(name) for name in real}
    # Both number test images on from the train ones.
    for names in (real, ours):
        last_train = max(int(re.search(r"_(\d+)\.jpg$", n).group(1)) for n in names if "/train/Crazing/" in n)
        first_test = min(int(re.search(r"_(\d+)\.jpg$", n).group(1)) for n in names if "/test/Crazing/" in n)
        assert first_test == last_train + 1


@pytest.mark.realdata
@needs_real_data
def test_acoustic_names_and_format_follow_the_real_data(tmp_path):
    with zipfile.ZipFile(REAL_DATA / "AirCompressor_Data_wav_subset.zip") as archive:
        real = {name.rsplit(".", 1)[0] for name in archive.namelist()
                if name.endswith(".wav") and int(re.search(r"(\d+)\.wav$", name).group(1)) <= 2}
    with zipfile.ZipFile(_small_acoustic(tmp_path / "a.zip")) as archive:
        ours = archive.namelist()
        sample = archive.read("AirCompressor_Data/Healthy/preprocess_Reading1.dat")
    assert {name.rsplit(".", 1)[0] for name in ours} == real
    original = (REAL_DATA / "samples/AirCompressor_Data/Healthy/preprocess_Reading1.dat").read_bytes()
    # Same text format: one float per line, newline-terminated, parsed the same way.
    for text in (original, sample):
        assert text.endswith(b"\n") and b"\r" not in text
        values = np.loadtxt(io.BytesIO(text))
        assert values.ndim == 1
    assert len(np.loadtxt(io.BytesIO(original))) == 50000


# --- the stage -------------------------------------------------------------------------------

def _tiny_params(**sample_data) -> dict:
    """The repository's params.yaml with two classes each and tiny sample data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = 11
    params["vision"].update(classes=["Crazing", "Scratches"], image_size=16)
    params["audio"].update(classes=["Healthy", "NRV"], clip_seconds=0.06)
    params["sample_data"] = {"out_dir": "out/sample", "image_size": 24, "train_per_class": 2, "test_per_class": 1,
                             "clips_per_class": 2, **sample_data}
    return params


def _run_stage(cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    (cwd / "models.yaml").write_text((REPO / "models.yaml").read_text())
    env = {**os.environ, "VAPM_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "sample_data.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_writes_both_archives_reproducibly(tmp_path):
    result = _run_stage(tmp_path, _tiny_params())
    assert result.returncode == 0, result.stderr
    vision, acoustic = tmp_path / "out/sample/NEU-data-TrainTest.zip", tmp_path / "out/sample/AirCompressor_Data.zip"
    assert f"{vision.relative_to(tmp_path)}: 6 files" in result.stdout
    assert f"{acoustic.relative_to(tmp_path)}: 4 files" in result.stdout
    with zipfile.ZipFile(acoustic) as archive:
        assert len(archive.read("AirCompressor_Data/NRV/preprocess_Reading2.dat").splitlines()) == 1000
    with zipfile.ZipFile(vision) as archive:
        assert Image.open(io.BytesIO(archive.read("NEU-data-TrainTest/test/Scratches/scratches_3.jpg"))).size == (24, 24)
    digests = (_sha256(vision), _sha256(acoustic))
    assert _run_stage(tmp_path, _tiny_params()).returncode == 0
    assert (_sha256(vision), _sha256(acoustic)) == digests


def test_stage_reports_a_bad_parameter_in_one_line(tmp_path):
    result = _run_stage(tmp_path, _tiny_params(train_per_class=0))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "sample_data: params.yaml: sample_data.train_per_class: input should be greater than or equal to 1 (got 0)"]
    assert not (tmp_path / "out").exists()


def test_stage_checks_every_setting_before_writing(tmp_path):
    params = _tiny_params()
    params["audio"]["classes"] = ["Healthy", "Gear/box"]
    result = _run_stage(tmp_path, params)
    assert result.returncode == 1
    assert result.stderr.startswith("sample_data: audio class 'Gear/box' contains a path separator")
    assert not (tmp_path / "out").exists()


def test_stage_and_ingest_with_custom_classes(tmp_path):
    """sample_data then ingest, both real stages, for class names the builders have no hand-made look for."""
    params = _tiny_params(clips_per_class=5)
    params["vision"]["classes"] = ["Crazing", *CUSTOM_CLASSES]
    params["audio"]["classes"] = ["Healthy", *CUSTOM_CLASSES]
    params["ingest"].update(vision_archive="out/sample/NEU-data-TrainTest.zip",
                            acoustic_archive="out/sample/AirCompressor_Data.zip")
    result = _run_stage(tmp_path, params)
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "VAPM_NO_PROGRESS": "1"}
    ingest = subprocess.run([sys.executable, str(REPO / "stages" / "ingest.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert "vision: 12 files kept (8 train, 4 test, split from archive)" in ingest.stdout
    assert "acoustic: 20 files kept" in ingest.stdout
    import pandas as pd
    for dataset, classes in (("vision", params["vision"]["classes"]), ("acoustic", params["audio"]["classes"])):
        manifest = pd.read_parquet(tmp_path / "data" / "interim" / dataset / "manifest.parquet")
        assert sorted(manifest["class"].unique()) == sorted(classes), dataset


def test_stage_draws_the_book_classes_for_auto_and_ingest_finds_them(tmp_path):
    params = _tiny_params(clips_per_class=5)
    params["vision"]["classes"] = params["audio"]["classes"] = "auto"
    params["ingest"].update(vision_archive="out/sample/NEU-data-TrainTest.zip",
                            acoustic_archive="out/sample/AirCompressor_Data.zip")
    result = _run_stage(tmp_path, params)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "out/sample/NEU-data-TrainTest.zip") as archive:
        assert {name.split("/")[2] for name in archive.namelist()} == set(VISION_CLASSES)
    env = {**os.environ, "VAPM_NO_PROGRESS": "1"}
    ingest = subprocess.run([sys.executable, str(REPO / "stages" / "ingest.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads((tmp_path / "metrics" / "ingest_report.json").read_text())
    assert report["vision"]["classes"] == sorted(VISION_CLASSES)
    assert report["acoustic"]["classes"] == sorted(AUDIO_CLASSES)
