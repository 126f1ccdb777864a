"""The featurize stage: per-clip features, image resizing, the interim -> features I/O and the stage script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import pywt
import yaml

from vapm.data.features.acoustic import LOG_ENERGY_FLOOR, mfcc_logmel_image, wavelet_feature_names, wavelet_packet_energies
from vapm.data.features.reproducible import log10_float32
from vapm.data.features.build import (
    STATISTICS_ROWS,
    InterimDataError,
    featurize_acoustic,
    featurize_vision,
    workers_worth_starting,
)
from vapm.data.input_checks import fit_clip_limits, fit_image_limits
from vapm.data.features.records import (AcousticImageRecord, ImageRecord, WaveletRecord,
                                   acoustic_image_record, read_record, wavelet_record)
from vapm.data.features.vision import resize_image, resize_images
from vapm.config.model_registry import load_registry
from vapm.config.settings import ParamsError, load_settings, parse_settings, read_params

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_CLIP = REPO_ROOT.parent / "shared" / "data" / "samples" / "AirCompressor_Data" / "Healthy" / "preprocess_Reading1.dat"
RATE = 50000 / 3
DEFAULTS = {"sample_rate": RATE, "n_mfcc": 40, "n_mels": 64, "n_fft": 2048, "hop_length": 512, "fmax": None,
            "remove_dc": True}
WAVELET_DEFAULTS = {"wavelet": "db4", "level": 7, "mode": "symmetric", "energy": "log", "remove_dc": True}

FEATURIZE_PARAMS = {"n_mfcc": 8, "n_mels": 16, "n_fft": 256, "hop_length": 128, "fmax": None, "wavelet": "db4",
                    "wavelet_level": 3, "wavelet_mode": "symmetric", "wavelet_energy": "log", "remove_dc": True,
                    "n_jobs": 1}


def tiny_params(**featurize_overrides) -> dict:
    """The repository's params.yaml with small featurize settings (clips of 3000 samples)."""
    params = read_params(REPO_ROOT / "params.yaml")
    params["vision"]["image_size"] = 8
    params["audio"]["clip_seconds"] = 3000 / RATE
    params["featurize"] = {**FEATURIZE_PARAMS, **featurize_overrides}
    return params


def small_records(**featurize_overrides) -> tuple[AcousticImageRecord, WaveletRecord]:
    registered = {name: None for name in load_registry(REPO_ROOT / "models.yaml")}  # sections not checked here
    settings = parse_settings(tiny_params(**featurize_overrides), registered)
    return acoustic_image_record(settings), wavelet_record(settings)


def tone(frequency: float, n_samples: int = 50_000, rate: float = RATE) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(n_samples) / rate)


def write_acoustic_interim(folder: Path, clips: np.ndarray) -> pd.DataFrame:
    """clips.npy + manifest.parquet in the documented ingest format, two alternating classes."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(clips)
    manifest = pd.DataFrame({
        "item": np.arange(n, dtype=np.int64),
        "file": [f"AirCompressor_Data/{'AB'[i % 2]}/preprocess_Reading{i}.dat" for i in range(n)],
        "class": ["AB"[i % 2] for i in range(n)],
        "label": np.arange(n, dtype=np.int64) % 2,
        "split": ["test" if i % 3 == 2 else "train" for i in range(n)],
        "sha256": [f"{i:064x}" for i in range(n)],
        "source_samples": np.full(n, clips.shape[1], dtype=np.int64),
        "source_sample_rate": np.full(n, RATE),
        "source_archive": "AirCompressor_Data.zip",
    })
    manifest.to_parquet(folder / "manifest.parquet", index=False)
    np.save(folder / "clips.npy", clips.astype(np.float32))
    return manifest


def write_vision_interim(folder: Path, images: list[np.ndarray]) -> pd.DataFrame:
    """pixels.npy + manifest.parquet in the documented ingest format (rows stored in reverse item order)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [image.size for image in images]
    manifest = pd.DataFrame({
        "item": np.arange(len(images), dtype=np.int64),
        "file": [f"NEU-data-TrainTest/train/Crazing/crazing_{i}.jpg" for i in range(len(images))],
        "class": "Crazing",
        "label": np.zeros(len(images), dtype=np.int64) + np.arange(len(images)) % 3,
        "split": ["train", "test"] * (len(images) // 2) + ["train"] * (len(images) % 2),
        "sha256": [f"{i:064x}" for i in range(len(images))],
        "height": np.array([image.shape[0] for image in images], dtype=np.int64),
        "width": np.array([image.shape[1] for image in images], dtype=np.int64),
        "offset": np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        "source_archive": "NEU-data-TrainTest.zip",
    })
    manifest.iloc[::-1].to_parquet(folder / "manifest.parquet", index=False)
    np.save(folder / "pixels.npy", np.concatenate([image.ravel() for image in images]).astype(np.uint8))
    return manifest


def noise_clips(n: int, n_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 0.3 * rng.standard_normal((n, n_samples)) + 0.1 + np.linspace(0, 1, n)[:, None]


# --- MFCC + log-mel images -------------------------------------------------------------------

def test_acoustic_image_has_104_by_98_mfcc_over_logmel_rows_for_a_3_s_clip():
    clip = noise_clips(1, 50_000)[0]
    image = mfcc_logmel_image(clip, **DEFAULTS)
    assert image.shape == (104, 98) and image.dtype == np.float32
    assert np.isfinite(image).all()
    centred = clip - clip.mean()
    reference_mel = librosa.power_to_db(
        librosa.feature.melspectrogram(y=centred, sr=RATE, n_fft=2048, hop_length=512, n_mels=64, fmax=RATE / 2),
        ref=1.0)
    np.testing.assert_allclose(image[40:], reference_mel, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(image[:40], librosa.feature.mfcc(S=image[40:].astype(np.float64), n_mfcc=40),
                               rtol=1e-4, atol=1e-2)


def test_logmel_keeps_the_clip_level_a_tenfold_louder_clip_is_20_db_higher():
    clip = noise_clips(1, 20_000)[0]
    quiet, loud = mfcc_logmel_image(clip, **DEFAULTS), mfcc_logmel_image(10 * clip, **DEFAULTS)
    np.testing.assert_allclose(loud[40:] - quiet[40:], 20.0, atol=1e-3)


def test_fmax_limits_the_mel_bands():
    clip = tone(RATE * 0.4, 20_000)  # 6.7 kHz, above a 3 kHz fmax
    full = mfcc_logmel_image(clip, **DEFAULTS)
    limited = mfcc_logmel_image(clip, **{**DEFAULTS, "fmax": 3000.0})
    assert np.argmax(full[40:].mean(axis=1)) > 40  # the tone sits in a high band
    assert limited[40:].max() < full[40:].max() - 40  # no band reaches it any more


# --- wavelet-packet energies ------------------------------------------------------------------

def test_wavelet_names_and_count_for_level_7():
    names = wavelet_feature_names(7)
    assert len(names) == 254 == len(set(names))
    assert names[:3] == ["wp_L1_0", "wp_L1_1", "wp_L2_0"] and names[-1] == "wp_L7_127"
    energies = wavelet_packet_energies(noise_clips(1, 50_000)[0], **WAVELET_DEFAULTS)
    assert energies.shape == (254,) and energies.dtype == np.float64 and np.isfinite(energies).all()


@pytest.mark.parametrize("fraction_of_nyquist", [1 / 6, 1 / 3, 2 / 3, 5 / 6])
def test_a_pure_tone_peaks_in_the_node_covering_its_frequency_at_every_level(fraction_of_nyquist):
    # These fractions sit a third of a node width from every node edge at every level.
    energies = wavelet_packet_energies(tone(fraction_of_nyquist * RATE / 2), **WAVELET_DEFAULTS)
    names = wavelet_feature_names(7)
    for level in range(1, 8):
        at_level = [i for i, name in enumerate(names) if name.startswith(f"wp_L{level}_")]
        assert names[at_level[int(np.argmax(energies[at_level]))]] == f"wp_L{level}_{int(fraction_of_nyquist * 2 ** level)}"


def test_energies_match_pywavelets_own_packet_tree_in_frequency_order():
    clip = noise_clips(1, 4_000)[0]
    tree = pywt.WaveletPacket(clip - clip.mean(), "sym5", mode="periodization", maxlevel=4)
    expected = [np.mean(node.data ** 2) for level in range(1, 5) for node in tree.get_level(level, order="freq")]
    energies = wavelet_packet_energies(clip, "sym5", 4, "periodization", "linear", remove_dc=True)
    np.testing.assert_allclose(energies, expected, rtol=1e-12)


def test_log_energy_is_log10_of_the_linear_mean_square():
    clip = noise_clips(1, 8_000)[0]
    linear = wavelet_packet_energies(clip, **{**WAVELET_DEFAULTS, "energy": "linear"})
    logged = wavelet_packet_energies(clip, **WAVELET_DEFAULTS)
    assert np.array_equal(logged, log10_float32(linear + LOG_ENERGY_FLOOR))
    # Correctly rounded to float32: within half a float32 ulp (2**-24 relative) of the exact log10, and
    # NumPy's float64 log10 within a few float64 ulps (< 2**-50 relative) of it.
    np.testing.assert_allclose(logged, np.log10(linear + LOG_ENERGY_FLOOR), rtol=2**-24 + 2**-50, atol=0)
    # Parseval (orthogonal wavelet): the two half-length level-1 nodes share the centred clip's energy,
    # so their mean squares average to about the clip's mean square (boundary coefficients add a little).
    centred = clip - clip.mean()
    assert linear[:2].sum() / 2 == pytest.approx(np.mean(centred ** 2), rel=0.02)
    assert np.isfinite(wavelet_packet_energies(np.zeros(4_000), **WAVELET_DEFAULTS)).all()


def test_remove_dc_makes_both_feature_kinds_blind_to_an_offset():
    clip = noise_clips(1, 20_000)[0]
    shifted = clip + 5.0
    # Log energies are rounded to float32: float64 values that differ in their last bits (the offset is
    # removed up to rounding) may round to neighbouring float32s, one float32 ulp (2**-23 relative) apart.
    np.testing.assert_allclose(wavelet_packet_energies(shifted, **WAVELET_DEFAULTS),
                               wavelet_packet_energies(clip, **WAVELET_DEFAULTS), rtol=2**-23, atol=0)
    np.testing.assert_allclose(mfcc_logmel_image(shifted, **DEFAULTS), mfcc_logmel_image(clip, **DEFAULTS),
                               atol=1e-2)
    kept_dc = {"remove_dc": False}
    assert (wavelet_packet_energies(shifted, **{**WAVELET_DEFAULTS, **kept_dc})[0]
            > wavelet_packet_energies(clip, **{**WAVELET_DEFAULTS, **kept_dc})[0] + 1)
    assert (mfcc_logmel_image(shifted, **{**DEFAULTS, **kept_dc})[40]
            > mfcc_logmel_image(clip, **{**DEFAULTS, **kept_dc})[40] + 10).all()


# --- settings ---------------------------------------------------------------------------------

def test_repository_params_give_the_documented_records(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    settings = load_settings(models=())
    images, energies = acoustic_image_record(settings), wavelet_record(settings)
    assert images.audio.sample_rate == pytest.approx(RATE) and images.audio.clip_samples == 50_000
    assert images.fmax == pytest.approx(RATE / 2)  # null -> Nyquist
    assert images.shape == (104, 98)
    assert len(energies.feature_names) == 254


@pytest.mark.parametrize("override, message", [
    ({"wavelet_energy": "dB"}, "wavelet_energy"),
    ({"n_mfcc": 20, "n_mels": 16}, "cannot exceed"),
    ({"wavelet": "db99"}, "not a discrete PyWavelets wavelet"),
    ({"fmax": 9000}, "fmax"),
    ({"n_jobs": 0}, "n_jobs"),
])
def test_bad_featurize_params_are_refused_by_name(override, message):
    with pytest.raises(ParamsError, match=message):
        small_records(**override)


# --- image resizing ---------------------------------------------------------------------------

def test_resize_keeps_the_picture_and_skips_images_already_at_size():
    image = np.zeros((200, 120), dtype=np.uint8)
    image[:, 60:] = 200
    small = resize_image(image, 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    assert small[:, :28].max() <= 5 and small[:, 36:].min() >= 195
    already = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    assert np.array_equal(resize_image(already, 64), already)
    stacked = resize_images([image, already, np.full((10, 30), 7, np.uint8)], 16)
    assert stacked.shape == (3, 16, 16) and (stacked[2] == 7).all()
    with pytest.raises(ValueError, match="2-D uint8"):
        resize_image(np.zeros((8, 8, 3), np.uint8), 4)


# --- interim -> features ----------------------------------------------------------------------

def test_featurize_vision_writes_items_in_order_with_their_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(20, 20), (16, 24), (8, 8), (31, 17)]]
    manifest = write_vision_interim(tmp_path / "vision", images)
    out = tmp_path / "features" / "image"
    assert featurize_vision(tmp_path / "vision", out, ImageRecord(image_size=8)) == 4
    train = [i for i, split in enumerate(manifest["split"]) if split == "train"]
    # The record carries the input-check limits of the training split's images at the model's size.
    assert read_record(out) == ImageRecord(image_size=8, checks=fit_image_limits(
        np.stack([resize_image(images[i], 8) for i in train])))
    with np.load(out / "features.npz") as saved:
        assert saved["images"].shape == (4, 8, 8) and saved["images"].dtype == np.uint8
        for i, image in enumerate(images):
            assert np.array_equal(saved["images"][i], resize_image(image, 8))
        assert saved["labels"].dtype == np.int64 and list(saved["labels"]) == list(manifest["label"])
        assert list(saved["splits"]) == list(manifest["split"]) and list(saved["files"]) == list(manifest["file"])


def test_the_learnt_image_checks_are_the_same_from_worker_processes(tmp_path, monkeypatch):
    import vapm.data.features.build as build

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (40 + i % 5, 36), dtype=np.uint8) for i in range(2 * (STATISTICS_ROWS + 30))]
    manifest = write_vision_interim(tmp_path / "vision", images)
    here = tmp_path / "here"
    featurize_vision(tmp_path / "vision", here, ImageRecord(image_size=32), n_jobs=2)  # too little work: no workers
    monkeypatch.setattr(build, "workers_worth_starting", lambda n_jobs, *rest: n_jobs)
    featurize_vision(tmp_path / "vision", tmp_path / "workers", ImageRecord(image_size=32), n_jobs=2)
    assert (here / "record.json").read_bytes() == (tmp_path / "workers" / "record.json").read_bytes()
    train = np.flatnonzero(manifest["split"] == "train")
    with np.load(here / "features.npz") as saved:  # and what fit_image_limits computes alone, in this process
        assert read_record(here).checks == fit_image_limits(saved["images"], rows=train)
    assert read_record(here).checks.likeness is not None


def test_featurize_vision_refuses_images_beyond_the_pixel_array(tmp_path):
    manifest = write_vision_interim(tmp_path / "vision", [np.zeros((4, 4), np.uint8)] * 3)
    manifest.loc[2, "offset"] = 40
    manifest.to_parquet(tmp_path / "vision" / "manifest.parquet", index=False)
    with pytest.raises(InterimDataError, match="outside pixels.npy.*crazing_2.jpg"):
        featurize_vision(tmp_path / "vision", tmp_path / "image", ImageRecord(image_size=8))


def test_featurize_acoustic_writes_both_feature_files_in_item_order(tmp_path):
    clips = noise_clips(5, 3_000)
    manifest = write_acoustic_interim(tmp_path / "acoustic", clips)
    images_dir, wavelet_dir = tmp_path / "f" / "acoustic_image", tmp_path / "f" / "wavelet"
    image_record, energy_record = small_records()
    summary = featurize_acoustic(tmp_path / "acoustic", images_dir, wavelet_dir, image_record, energy_record,
                                 n_jobs=1, chunk_clips=2)
    assert summary.n_clips == 5
    train = np.flatnonzero(manifest["split"].to_numpy() == "train")
    checks = {"checks": fit_clip_limits(clips[train].astype(np.float32))}  # the training clips' limits, in both
    assert read_record(images_dir) == image_record.model_copy(update=checks)
    assert read_record(wavelet_dir) == energy_record.model_copy(update=checks)
    with np.load(images_dir / "features.npz") as saved:
        assert saved["images"].shape == (5, 8 + 16, 1 + 3_000 // 128) and saved["images"].dtype == np.float32
        assert list(saved["labels"]) == list(manifest["label"]) and list(saved["files"]) == list(manifest["file"])
        assert list(saved["splits"]) == list(manifest["split"])
        np.testing.assert_array_equal(
            saved["images"][3], mfcc_logmel_image(clips[3].astype(np.float32), RATE, 8, 16, 256, 128, None, True))
    table = pd.read_parquet(wavelet_dir / "features.parquet")
    names = wavelet_feature_names(3)
    assert list(table.columns) == names + ["class", "label", "split", "file"]
    assert (table[names].dtypes == np.float64).all() and table["label"].dtype == np.int64
    assert list(table["class"]) == list(manifest["class"]) and list(table["file"]) == list(manifest["file"])
    np.testing.assert_array_equal(table[names].to_numpy()[4], wavelet_packet_energies(
        clips[4].astype(np.float32), "db4", 3, "symmetric", "log", True))


@pytest.mark.parametrize("row_group", [1, 3])
def test_the_wavelet_table_reads_back_the_same_whatever_its_row_groups(tmp_path, monkeypatch, row_group):
    """The table is written a row group at a time as the energies come (featurize's memory stays flat): its rows
    read back exactly as with one row group, chunks and row groups not lined up."""
    import pyarrow.parquet as pq

    from vapm.data.features import build

    write_acoustic_interim(tmp_path / "acoustic", noise_clips(7, 3_000, seed=5))
    tables = {}
    for size in (row_group, build.TABLE_ROW_GROUP):
        monkeypatch.setattr(build, "TABLE_ROW_GROUP", size)
        out = tmp_path / f"rows{size}"
        featurize_acoustic(tmp_path / "acoustic", out / "images", out / "wp", *small_records(), n_jobs=1,
                           chunk_clips=2)
        assert pq.ParquetFile(out / "wp" / "features.parquet").num_row_groups == -(-7 // size)
        assert sorted(p.name for p in (out / "wp").iterdir()) == ["features.parquet", "record.json"]
        tables[size] = pd.read_parquet(out / "wp" / "features.parquet")
    assert isinstance(tables[row_group].index, pd.RangeIndex)
    pd.testing.assert_frame_equal(tables[row_group], tables[build.TABLE_ROW_GROUP], check_exact=True)


def test_two_workers_give_exactly_the_serial_numbers(tmp_path):
    write_acoustic_interim(tmp_path / "acoustic", noise_clips(7, 3_000, seed=3))
    outputs = {}
    for n_jobs in (1, 2):
        out = tmp_path / f"jobs{n_jobs}"
        summary = featurize_acoustic(tmp_path / "acoustic", out / "images", out / "wp", *small_records(),
                                     n_jobs=n_jobs, chunk_clips=2 if n_jobs == 2 else 32, parallel_worth_seconds=0.0)
        assert summary.workers == n_jobs
        with np.load(out / "images" / "features.npz") as saved:
            outputs[n_jobs] = (saved["images"].copy(), pd.read_parquet(out / "wp" / "features.parquet"))
    assert np.array_equal(outputs[1][0], outputs[2][0])
    pd.testing.assert_frame_equal(outputs[1][1], outputs[2][1], check_exact=True)


def test_workers_start_only_when_the_remaining_work_pays_for_them():
    assert workers_worth_starting(2, seconds_per_clip=0.003, clips_left=1800, chunks_left=56,
                                  parallel_worth_seconds=10.0) == 1
    assert workers_worth_starting(2, seconds_per_clip=0.003, clips_left=18_000, chunks_left=560,
                                  parallel_worth_seconds=10.0) == 2
    assert workers_worth_starting(4, seconds_per_clip=1.0, clips_left=64, chunks_left=2,
                                  parallel_worth_seconds=10.0) == 2


def test_a_manifest_that_disagrees_with_clips_npy_is_refused(tmp_path):
    write_acoustic_interim(tmp_path / "acoustic", noise_clips(4, 3_000))
    np.save(tmp_path / "acoustic" / "clips.npy", noise_clips(3, 3_000).astype(np.float32))
    with pytest.raises(InterimDataError, match="holds 3 clips but its manifest lists 4"):
        featurize_acoustic(tmp_path / "acoustic", tmp_path / "a", tmp_path / "w", *small_records(), n_jobs=1)


def test_broken_or_too_short_clips_are_refused_by_name(tmp_path):
    clips = noise_clips(4, 3_000)
    clips[3, 10] = np.nan
    write_acoustic_interim(tmp_path / "acoustic", clips)
    with pytest.raises(InterimDataError, match=r"preprocess_Reading3\.dat \(item 3\) holds NaN"):
        featurize_acoustic(tmp_path / "acoustic", tmp_path / "a", tmp_path / "w", *small_records(), n_jobs=2,
                           chunk_clips=2, parallel_worth_seconds=0.0)
    assert not (tmp_path / "a").exists()
    write_acoustic_interim(tmp_path / "short", noise_clips(2, 200))
    with pytest.raises(InterimDataError, match="fewer than featurize.n_fft"):
        featurize_acoustic(tmp_path / "short", tmp_path / "a", tmp_path / "w", *small_records(), n_jobs=1)
    with pytest.raises(InterimDataError, match="not found: run the ingest stage"):
        featurize_acoustic(tmp_path / "missing", tmp_path / "a", tmp_path / "w", *small_records(), n_jobs=1)


# --- the stage script -------------------------------------------------------------------------

def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAPM_NO_PROGRESS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "featurize.py")], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=300)


def test_stage_script_writes_the_three_outputs_and_fails_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(n_jobs=2)))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    write_vision_interim(tmp_path / "data" / "interim" / "vision", [np.full((12, 12), 9, np.uint8)] * 3)
    write_acoustic_interim(tmp_path / "data" / "interim" / "acoustic", noise_clips(3, 3_000))
    proc = run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    features = tmp_path / "data" / "features"
    with np.load(features / "image" / "features.npz") as saved:
        assert saved["images"].shape == (3, 8, 8)
    with np.load(features / "acoustic_image" / "features.npz") as saved:
        assert saved["images"].shape == (3, 24, 24)
    assert pd.read_parquet(features / "wavelet" / "features.parquet").shape == (3, 14 + 4)
    assert {path.name for path in features.iterdir()} == {"image", "acoustic_image", "wavelet"}
    assert all((folder / "record.json").is_file() for folder in features.iterdir())

    (tmp_path / "data" / "interim" / "acoustic" / "clips.npy").unlink()
    proc = run_stage(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "clips.npy not found" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the real original-format clip -------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="../shared/data is absent")
def test_real_compressor_clip_gives_both_feature_kinds():
    clip = np.loadtxt(REAL_CLIP)
    assert clip.shape == (50_000,)
    image = mfcc_logmel_image(clip, **DEFAULTS)
    assert image.shape == (104, 98) and np.isfinite(image).all()
    energies = wavelet_packet_energies(clip, **WAVELET_DEFAULTS)
    assert energies.shape == (254,) and np.isfinite(energies).all()
    # The recording's DC offset (mean 0.089) is removed: the lowest node is not dominated by it.
    with_dc = wavelet_packet_energies(clip, **{**WAVELET_DEFAULTS, "remove_dc": False})
    assert with_dc[0] > energies[0]


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="../shared/data is absent")
def test_the_image_equals_the_books_own_librosa_calls_on_a_real_clip():
    """The book: librosa.feature.mfcc(y=y, sr=sr, n_mfcc=40) (librosa's default 128 mel bands) on top of
    librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_mels=64)), no DC removal."""
    y = np.loadtxt(REAL_CLIP)
    book_mfcc = librosa.feature.mfcc(y=y, sr=RATE, n_mfcc=40)
    book_log_mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=RATE, n_mels=64))
    ours = mfcc_logmel_image(y, RATE, 40, 64, 2048, 512, None, remove_dc=False, mfcc_mel_bands=128)
    # Our decibels take log10 correctly rounded to float32 (machine-independent bits): at most
    # 10 * 2**-24 * |log10(power)| <= 10 * 6e-8 * 10 = 6e-6 dB off librosa's float64 log10. An MFCC is an
    # orthonormal DCT row (weights <= sqrt(2/128)) over 128 bands: at most 128 * 0.125 * 6e-6 ~ 1e-4 off. The
    # image is float32: values up to ~900 (MFCC 0) round by up to 3e-5.
    np.testing.assert_allclose(ours[40:], book_log_mel, rtol=0, atol=6e-6 + 1e-5)
    np.testing.assert_allclose(ours[:40], book_mfcc, rtol=0, atol=1e-4 + 6e-5)
    from_64_bands = mfcc_logmel_image(y, RATE, 40, 64, 2048, 512, None, remove_dc=False)
    assert np.abs(from_64_bands[:40] - book_mfcc).max() > 10  # the difference the issue measured (up to 72)
