"""Ingest on the real archives in ../shared/data (skipped when they are absent)."""
from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vapm.data.ingest.dataset import IngestSettings, audio_target, ingest_acoustic, ingest_settings, ingest_vision
from vapm.data.ingest.decode import decode_audio

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NEU_ZIP = SHARED_DATA / "NEU-data-TrainTest.zip"
WAV_ZIP = SHARED_DATA / "AirCompressor_Data_wav_subset.zip"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}"),
]


@pytest.fixture(scope="module")
def params():
    """The repository's validated settings (vapm.config.settings.Settings)."""
    from vapm.config.settings import load_settings

    return load_settings(REPO_ROOT / "params.yaml", models=(), registry_path=REPO_ROOT / "models.yaml")


@pytest.fixture(scope="module")
def real_settings(params) -> IngestSettings:
    return ingest_settings(params)


@pytest.fixture(scope="module")
def neu(tmp_path_factory, params, real_settings):
    out_dir = tmp_path_factory.mktemp("real") / "vision"
    started = time.perf_counter()
    report = ingest_vision(NEU_ZIP, params.vision.classes, out_dir, real_settings)
    seconds = time.perf_counter() - started
    print(f"\nreal NEU ingest: {seconds:.1f} s")
    return report, out_dir, seconds


@pytest.fixture(scope="module")
def compressor(tmp_path_factory, params, real_settings):
    out_dir = tmp_path_factory.mktemp("real") / "acoustic"
    started = time.perf_counter()
    report = ingest_acoustic(WAV_ZIP, params.audio.classes, out_dir, real_settings,
                             audio_target(params))
    seconds = time.perf_counter() - started
    print(f"\nreal air-compressor WAV ingest: {seconds:.1f} s")
    return report, out_dir, seconds


def test_real_neu_archive(neu, params):
    report, out_dir, _ = neu
    assert report["members_seen"] == 1800
    assert report["duplicates"] == [{"file": "NEU-data-TrainTest/train/Patches/patches_105.jpg",
                                     "duplicate_of": "NEU-data-TrainTest/train/Patches/patches_101.jpg"}]
    assert report["bad"] == [] and report["ignored"] == []
    assert report["split_source"] == "archive"
    assert report["kept"]["total"] == 1799
    expected = {name: {"train": 288, "test": 12} for name in params.vision.classes}
    expected["Patches"]["train"] = 287
    assert report["kept"]["per_class"] == expected
    assert report["decoded"] == {"image_sizes": {"200x200": 1799}}

    manifest = pd.read_parquet(out_dir / "manifest.parquet")
    pixels = np.load(out_dir / "pixels.npy", mmap_mode="r")
    assert pixels.shape == (1799 * 200 * 200,)
    with zipfile.ZipFile(NEU_ZIP) as zf:
        for row in (0, 1000, 1798):
            entry = manifest.iloc[row]
            original = np.asarray(Image.open(io.BytesIO(zf.read(entry.file))).convert("L"))
            np.testing.assert_array_equal(pixels[entry.offset:entry.offset + 40000].reshape(200, 200), original)


def test_real_compressor_wav_archive(compressor, params):
    report, out_dir, _ = compressor
    assert report["members_seen"] == 321
    assert [entry["file"] for entry in report["ignored"]] == ["AirCompressor_Data/license.txt"]
    assert report["bad"] == [] and report["duplicates"] == []
    assert report["split_source"] == "stratified"
    assert report["kept"]["per_class"] == {name: {"train": 32, "test": 8} for name in params.audio.classes}
    assert report["decoded"] == {"source_sample_rates": {"44100": 320}}
    clips = np.load(out_dir / "clips.npy", mmap_mode="r")
    assert clips.shape == (320, 50000) and clips.dtype == np.float32
    manifest = pd.read_parquet(out_dir / "manifest.parquet")
    assert set(manifest.source_samples) == {132300}
    assert np.isfinite(clips[::40]).all() and (np.abs(clips[::40]) <= 1.01).all()


def test_real_ingest_is_fast(neu, compressor):
    assert neu[2] + compressor[2] < 60


@pytest.mark.parametrize("state, low, high, mean, std, digest_start, digest_end", [
    ("Healthy", -1.13, 1.43, 0.089, 0.281, "b8d2f553", "6606"),
    ("Bearing", -1.50, 1.44, 0.149, 0.187, "67d50c14", "17f2"),
])
def test_original_dat_samples_decode_as_documented(params, state, low, high, mean, std, digest_start, digest_end):
    data = (SHARED_DATA / "samples" / "AirCompressor_Data" / state / "preprocess_Reading1.dat").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest.startswith(digest_start) and digest.endswith(digest_end)

    clip = decode_audio(f"AirCompressor_Data/{state}/preprocess_Reading1.dat", data, audio_target(params))

    assert clip.source_samples == 50000 and clip.samples.shape == (50000,)
    assert clip.source_sample_rate == pytest.approx(50000 / 3)
    assert clip.samples.min() == pytest.approx(low, abs=0.005) and clip.samples.max() == pytest.approx(high, abs=0.005)
    assert clip.samples.mean() == pytest.approx(mean, abs=0.0005)
    assert clip.samples.std() == pytest.approx(std, abs=0.0005)
    values = np.array(data.decode().split(), dtype=np.float64)
    np.testing.assert_array_equal(clip.samples, values.astype(np.float32))
