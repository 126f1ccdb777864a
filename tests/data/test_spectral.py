"""vapm's NumPy STFT, mel filter bank and DCT against librosa's, and an audio feature path free of librosa.

librosa (and scipy through it) is imported only here: the point of vapm.data.features.spectral is that
predict never imports it. The STFT and the mel bank must be librosa's bits; the DCT is a fixed-order matrix
product rather than scipy's FFT-based DCT, so the MFCCs agree to a tolerance derived below.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal

from vapm.config.model_registry import load_registry
from vapm.config.settings import parse_settings, read_params
from vapm.data.features.acoustic import mfcc_logmel_image, power_to_decibels
from vapm.data.features.records import acoustic_image_record
from vapm.data.features.reproducible import SparseRows, sparse_row_product
from vapm.data.features.spectral import centred_stft, dct_matrix, hann_window, mel_filter_bank
from vapm.data.synth.acoustic import render_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
RATE = 50000 / 3

# The MFCCs are an orthonormal DCT of log-mel decibels of at most ~100 in magnitude: a float64 sum of 128
# terms of that size is off by a few 1e-14 in either implementation (measured: <= 1e-13), so 1e-9 dB is a
# wide margin that still catches any wrong coefficient (the smallest is ~1e-3).
MFCC_ATOL = 1e-9
# The image is float32: an MFCC 1e-13 off in float64 rounds to the neighbouring float32 at most, a relative
# difference of 2**-23 (1.2e-7); near zero the absolute float64 tolerance applies.
IMAGE_RTOL = 1e-6

HEAVY_MODULES = ("librosa", "scipy", "numba", "pandas", "sklearn", "tensorflow", "keras")


def compressor_clip(class_name: str, n_samples: int, seed: int, rate: float = RATE) -> np.ndarray:
    """A demo-data clip (the sample_data stage's generator), DC offset removed as featurize does."""
    clip = render_clip(class_name, n_samples, rate, np.random.default_rng(seed)).astype(np.float64)
    return clip - clip.mean()


def project_image_record():
    settings = parse_settings(read_params(REPO_ROOT / "params.yaml"),
                              {name: None for name in load_registry(REPO_ROOT / "models.yaml")})
    return acoustic_image_record(settings)


# --- the window and the STFT ---------------------------------------------------------------------

@pytest.mark.parametrize("n_fft", [1, 2, 3, 255, 256, 1023, 2048, 4096])
def test_hann_window_is_scipys_periodic_hann(n_fft):
    assert np.array_equal(hann_window(n_fft), scipy.signal.get_window("hann", n_fft, fftbins=True))


@pytest.mark.parametrize(("n_samples", "n_fft", "hop_length"), [
    (50_000, 2048, 512),    # the project's clips and params
    (3000, 256, 128),       # the tests' tiny params
    (12_345, 2047, 300),    # odd length, odd window, a hop that divides neither
    (5001, 1024, 1024),     # hop = window
    (2048, 2048, 512),      # clip exactly one window long
    (777, 64, 5),           # many head and tail frames
])
def test_centred_stft_is_librosas_bits(n_samples, n_fft, hop_length):
    for seed, state in enumerate(("Healthy", "Bearing", "Piston")):
        clip = compressor_clip(state, n_samples, seed)
        ours = centred_stft(clip, n_fft, hop_length)
        assert ours.dtype == np.complex128
        assert np.array_equal(ours, librosa.stft(clip, n_fft=n_fft, hop_length=hop_length, center=True))


def test_centred_stft_refuses_what_it_cannot_frame():
    with pytest.raises(ValueError, match="1-D"):
        centred_stft(np.zeros((2, 4096)), 2048, 512)
    with pytest.raises(ValueError, match="hop_length"):
        centred_stft(np.zeros(4096), 2048, 0)


# --- the mel filter bank -------------------------------------------------------------------------

@pytest.mark.parametrize(("sample_rate", "n_fft", "n_mels", "fmax"), [
    (RATE, 2048, 64, RATE / 2),    # the project's image rows (fmax: null = sample_rate / 2)
    (RATE, 2048, 128, RATE / 2),   # the project's MFCC bands
    (RATE, 256, 16, None),         # the tests' tiny params
    (RATE, 2048, 64, 3000.0),      # fmax below the log region's 1 kHz ... above it
    (RATE, 2048, 40, 999.0),
    (22_050, 2048, 128, None),     # librosa's defaults
    (16_000, 512, 40, 8000.0),
    (44_100, 1025, 80, 11_025.5),  # odd n_fft, fractional fmax
    (48_000, 4096, 256, 20_000.0),
    (8000, 255, 20, None),
])
def test_mel_filter_bank_is_librosas_bits(sample_rate, n_fft, n_mels, fmax):
    ours = mel_filter_bank(sample_rate, n_fft, n_mels, fmax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's "empty filters" warning for the small windows
        theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)


# --- the DCT (MFCCs) -----------------------------------------------------------------------------

@pytest.mark.parametrize(("n_mfcc", "n_bands"), [(40, 128), (40, 64), (8, 16), (13, 13), (20, 40), (1, 7)])
def test_dct_matrix_gives_librosas_mfcc_within_float64_rounding(n_mfcc, n_bands):
    rng = np.random.default_rng(n_bands)
    log_mel = rng.uniform(-100.0, 100.0, (n_bands, 98))
    ours = sparse_row_product(dct_matrix(n_mfcc, n_bands), log_mel)
    np.testing.assert_allclose(ours, librosa.feature.mfcc(S=log_mel, n_mfcc=n_mfcc), rtol=0, atol=MFCC_ATOL)


@pytest.mark.parametrize("n_bands", [2, 7, 16, 64, 128])
def test_dct_matrix_is_orthonormal_and_its_coefficients_are_the_cosines(n_bands):
    matrix = dct_matrix(n_bands, n_bands)
    dense = np.zeros(matrix.shape)
    dense[matrix.rows, matrix.columns] = matrix.values
    np.testing.assert_allclose(dense @ dense.T, np.eye(n_bands), rtol=0, atol=1e-14)
    k, n = np.meshgrid(np.arange(n_bands), np.arange(n_bands), indexing="ij")
    scale = np.where(k == 0, np.sqrt(1 / n_bands), np.sqrt(2 / n_bands))
    # The decimal coefficients are correctly rounded; NumPy's cos of the angle reduced to [0, 2 pi) (exactly, in
    # integers) is a few ulps off. Unreduced, the rounding of angles up to ~400 rad would be ~1e-14 off.
    half_turns = k * (2 * n + 1) % (4 * n_bands)
    np.testing.assert_allclose(dense, scale * np.cos(np.pi * half_turns / (2 * n_bands)), rtol=0, atol=1e-15)


def test_dct_matrix_refuses_more_coefficients_than_bands():
    with pytest.raises(ValueError, match="cannot take 20 DCT coefficients of 16"):
        dct_matrix(20, 16)


# --- the whole image against librosa ---------------------------------------------------------------

def librosa_image(clip, sample_rate, n_mfcc, n_mels, n_fft, hop_length, fmax, remove_dc, mfcc_mel_bands=None):
    """mfcc_logmel_image as it was computed with librosa's stft, filters.mel and feature.mfcc."""
    signal = np.asarray(clip, dtype=np.float64)
    signal = signal - signal.mean() if remove_dc else signal
    fmax = sample_rate / 2 if fmax is None else fmax
    spectrum = librosa.stft(signal, n_fft=n_fft, hop_length=hop_length, center=True)
    power = spectrum.real ** 2 + spectrum.imag ** 2

    def log_mel_of(bands):
        basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=bands, fmax=fmax).astype(np.float64)
        return power_to_decibels(sparse_row_product(SparseRows.from_dense(basis), power))

    log_mel = log_mel_of(n_mels)
    source = log_mel if mfcc_mel_bands in (None, n_mels) else log_mel_of(mfcc_mel_bands)
    return np.vstack([librosa.feature.mfcc(S=source, n_mfcc=n_mfcc), log_mel]).astype(np.float32)


def assert_image_matches_librosa(ours, reference, n_mfcc):
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.array_equal(ours[n_mfcc:], reference[n_mfcc:])  # log-mel rows: same STFT, same bank, same bits
    np.testing.assert_allclose(ours[:n_mfcc], reference[:n_mfcc], rtol=IMAGE_RTOL, atol=MFCC_ATOL)


def test_project_image_matches_the_librosa_reference_on_demo_clips():
    record = project_image_record()
    settings = {"sample_rate": record.audio.sample_rate, "n_mfcc": record.n_mfcc, "n_mels": record.n_mels,
                "n_fft": record.n_fft, "hop_length": record.hop_length, "fmax": record.fmax,
                "remove_dc": record.remove_dc, "mfcc_mel_bands": record.mfcc_mel_bands}
    for seed, state in enumerate(("Healthy", "Bearing", "Flywheel", "LIV", "LOV", "NRV", "Piston", "Riderbelt")):
        raw = render_clip(state, record.audio.clip_samples, record.audio.sample_rate, np.random.default_rng(seed))
        ours = mfcc_logmel_image(raw, **settings)
        assert ours.shape == record.shape
        assert_image_matches_librosa(ours, librosa_image(raw, **settings), record.n_mfcc)


@pytest.mark.parametrize("settings", [
    {"sample_rate": RATE, "n_mfcc": 8, "n_mels": 16, "n_fft": 256, "hop_length": 128, "fmax": None,
     "remove_dc": True},
    {"sample_rate": RATE, "n_mfcc": 40, "n_mels": 64, "n_fft": 2048, "hop_length": 512, "fmax": 3000.0,
     "remove_dc": False},
    {"sample_rate": 22_050, "n_mfcc": 13, "n_mels": 40, "n_fft": 1023, "hop_length": 300, "fmax": None,
     "remove_dc": True, "mfcc_mel_bands": 128},
])
def test_other_settings_match_the_librosa_reference(settings):
    raw = render_clip("Piston", 9999, settings["sample_rate"], np.random.default_rng(7))
    assert_image_matches_librosa(mfcc_logmel_image(raw, **settings), librosa_image(raw, **settings),
                                 settings["n_mfcc"])


# --- predict's import cost -------------------------------------------------------------------------

def test_the_audio_feature_path_imports_no_librosa_scipy_numba_pandas_or_sklearn():
    """`vapm predict` on a WAV must start in about a second: librosa alone took 1.5-2.5 s to import."""
    probe = ("import sys, vapm.data.features.acoustic, vapm.data.features.records, vapm.data.ingest.decode; "
             f"heavy = {set(HEAVY_MODULES)!r}; "
             "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "[]"
