"""Per-clip acoustic features: an MFCC + log-mel image (for the CNN) and wavelet-packet node energies (for the SVM)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pywt

from vapm.data.features.errors import InterimDataError
from vapm.data.features.reproducible import SparseRows, log10_float32, sparse_row_product
from vapm.data.features.spectral import centred_stft, dct_matrix, mel_filter_bank
from vapm.data.input_checks import clip_statistics

# Decibels use a fixed reference of 1.0 (amplitude 1 = 0 dB) rather than each clip's maximum:
# the clips share one amplitude scale, so a louder machine state stays louder in the image (and in
# MFCC 0) instead of every clip being normalised to a 0 dB peak. Values below AMIN (-100 dB) and
# more than TOP_DB under the clip's own peak are floored, as librosa's power_to_db does by default.
DB_REFERENCE = 1.0
DB_AMIN = 1e-10
DB_TOP_DB = 80.0

# Floor for log10 node energies: -120 dB re unit amplitude, far below any recording's noise floor,
# so it only keeps digitally silent nodes finite instead of -inf.
LOG_ENERGY_FLOOR = 1e-12

WAVELET_ENERGIES = ("log", "linear")


def acoustic_frame_count(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT: 1 + n_samples // hop_length (98 for 50,000 samples, hop 512)."""
    return 1 + n_samples // hop_length


def check_clip_length(n_samples: int, n_fft: int, wavelet: str, wavelet_level: int) -> None:
    """Clips too short for the chosen STFT window or wavelet depth give meaningless features: refuse them."""
    if n_samples < n_fft:
        raise InterimDataError(f"clips have {n_samples} samples, fewer than featurize.n_fft = {n_fft}")
    deepest = pywt.dwt_max_level(n_samples, pywt.Wavelet(wavelet).dec_len)
    if wavelet_level > deepest:
        raise InterimDataError(f"featurize.wavelet_level = {wavelet_level} is too deep for {n_samples}-sample "
                               f"clips and {wavelet}: at most {deepest} levels are meaningful")


def _centred(clip: np.ndarray, remove_dc: bool) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float64)
    if clip.ndim != 1:
        raise ValueError(f"a clip must be 1-D, got shape {clip.shape}")
    return clip - clip.mean() if remove_dc else clip


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: float, n_fft: int, n_mels: int, fmax: float) -> SparseRows:
    # Built once per process instead of once per clip (librosa.feature.melspectrogram rebuilds it).
    # The weights are float32, as librosa's: the float64 rounding of the mel-scale log/exp cannot show in them.
    basis = mel_filter_bank(sample_rate, n_fft, n_mels, fmax).astype(np.float64)
    return SparseRows.from_dense(basis)


def power_to_decibels(power: np.ndarray, reference: float = DB_REFERENCE, amin: float = DB_AMIN,
                      top_db: float = DB_TOP_DB) -> np.ndarray:
    """librosa.power_to_db's formula, with log10 correctly rounded to float32 so the bits are machine-independent.

    10 * log10 is then exact (a 24-bit significand times 10 fits in float64's 53 bits); the result
    differs from librosa's by at most 10 * 2**-24 * |log10(power)| (< 1e-5 dB here).
    """
    decibels = 10.0 * log10_float32(np.maximum(amin, power))
    decibels -= 10.0 * log10_float32(np.maximum(amin, reference))
    return np.maximum(decibels, decibels.max() - top_db)


def mfcc_logmel_image(clip: np.ndarray, sample_rate: float, n_mfcc: int, n_mels: int, n_fft: int,
                      hop_length: int, fmax: float | None, remove_dc: bool,
                      mfcc_mel_bands: int | None = None) -> np.ndarray:
    """float32 (n_mfcc + n_mels, frames): MFCC rows on top of log-mel (dB) rows.

    The MFCCs are the DCT of a log-mel spectrogram of `mfcc_mel_bands` bands: librosa.feature.mfcc's default
    is 128, which is what the book calls; None or n_mels computes them from the image's own log-mel rows.
    One centred STFT per clip; each mel power spectrogram is librosa.feature.melspectrogram's, computed so
    that its bits do not depend on the CPU: |X|**2 as re**2 + im**2 (elementwise IEEE arithmetic rather
    than a SIMD-dispatched complex abs), the mel projection summed in a fixed order rather than by BLAS,
    and decibels from a correctly rounded log10 (docs/determinism.md). The MFCCs are librosa.feature.mfcc's
    orthonormal DCT-II as a matrix summed in a fixed order: within about 1e-13 of scipy's FFT-based DCT.
    The transforms are NumPy (`vapm.data.features.spectral`), so that predict does not import librosa.
    """
    signal = _centred(clip, remove_dc)
    fmax = sample_rate / 2 if fmax is None else fmax
    spectrum = centred_stft(signal, n_fft, hop_length)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel_power = sparse_row_product(_mel_basis(float(sample_rate), n_fft, n_mels, float(fmax)), power)
    log_mel = power_to_decibels(mel_power)
    if mfcc_mel_bands is None or mfcc_mel_bands == n_mels:
        mfcc_source = log_mel
    else:
        mfcc_source = power_to_decibels(
            sparse_row_product(_mel_basis(float(sample_rate), n_fft, mfcc_mel_bands, float(fmax)), power))
    mfcc = sparse_row_product(dct_matrix(n_mfcc, len(mfcc_source)), mfcc_source)
    return np.vstack([mfcc, log_mel]).astype(np.float32)


def wavelet_feature_names(level: int) -> list[str]:
    """`wp_L<level>_<node>` for levels 1..level, nodes in frequency order (254 names for level 7)."""
    return [f"wp_L{lvl}_{node}" for lvl in range(1, level + 1) for node in range(2 ** lvl)]


def wavelet_packet_energies(clip: np.ndarray, wavelet: str, level: int, mode: str, energy: str,
                            remove_dc: bool) -> np.ndarray:
    """float64 (2 + 4 + ... + 2**level,): the mean square of every wavelet-packet node, levels 1..level.

    Each level is split from the one above it, all nodes of a level in one batched DWT. Within a level
    the nodes are in frequency order: the high-pass branch of a node mirrors its spectrum, so the
    children of every odd (frequency-ordered) node come out detail-first. Sums of squares use NumPy's
    fixed pairwise order (not a SIMD-width-dependent dot product); log energies are log10 correctly
    rounded to float32, so both are the same bits on every machine.
    """
    if energy not in WAVELET_ENERGIES:
        raise ValueError(f"energy must be one of {WAVELET_ENERGIES}, got {energy!r}")
    nodes = _centred(clip, remove_dc)[np.newaxis, :]
    energies = []
    for _ in range(level):
        approx, detail = pywt.dwt(nodes, wavelet, mode=mode, axis=-1)
        children = np.empty((2 * len(nodes), approx.shape[-1]))
        children[0::4], children[1::4] = approx[0::2], detail[0::2]  # even parents: low band first
        children[2::4], children[3::4] = detail[1::2], approx[1::2]  # odd parents: mirrored
        nodes = children
        energies.append(np.add.reduce(nodes * nodes, axis=-1) / nodes.shape[-1])
    mean_square = np.concatenate(energies)
    return log10_float32(mean_square + LOG_ENERGY_FLOOR) if energy == "log" else mean_square


def clip_range_features(clips_path: Path, start: int, stop: int, files: Sequence[str], image_record: Any,
                        wavelet_record: Any) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    """Images and energies of clips[start:stop] of a clips.npy, the CPU seconds each kind took, and the clips'
    statistics for the input checks (vapm.data.input_checks.clip_statistics: fitted on the training clips).

    The worker task of the featurize stage: it reads its own rows of the file (vapm.core.npy_rows, as the stage
    reads the rest), so only paths cross processes, and lives here rather than in `build` so that worker processes
    do not import pandas. The records
    (vapm.data.features.records) compute the features, exactly as predict does for a new file.
    """
    from vapm.core.npy_rows import NpyRows

    source = NpyRows(clips_path)
    clips = source[start:stop]
    source.close()
    broken = ~np.isfinite(clips).all(axis=1)
    if broken.any():
        first = int(np.argmax(broken))
        raise InterimDataError(f"{clips_path}: the clip of {files[first]} (item {start + first}) "
                               "holds NaN or infinite samples")
    images, energies = [], []
    image_seconds = wavelet_seconds = 0.0
    for clip in clips:
        tick = time.thread_time()
        images.append(image_record.from_clip(clip))
        tock = time.thread_time()
        energies.append(wavelet_record.from_clip(clip))
        image_seconds += tock - tick
        wavelet_seconds += time.thread_time() - tock
    return np.stack(images), np.stack(energies), image_seconds, wavelet_seconds, clip_statistics(clips)


@dataclass(frozen=True)
class ClipRange:
    """One task of featurize on a Dask cluster: rows start..stop-1 of a clips.npy, by its absolute path (the
    worker maps the file itself: shared storage), and the records that compute the features."""
    clips_path: Path
    start: int
    stop: int
    files: Sequence[str]
    image_record: Any     # an AcousticImageRecord (vapm.data.features.records)
    wavelet_record: Any   # a WaveletRecord


def clip_range_task(task: ClipRange) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    """clip_range_features of one ClipRange: what a cluster worker runs."""
    return clip_range_features(task.clips_path, task.start, task.stop, task.files, task.image_record,
                               task.wavelet_record)
