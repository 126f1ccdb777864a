"""Per-clip acoustic features: an MFCC + log-mel image (for the CNN) and wavelet-packet node energies (for the SVM)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pywt
from librosa import stft
from librosa.feature import mfcc as mfcc_from_log_mel
from librosa.filters import mel as mel_filters

from vapm.config import ConfigError, audio_sample_rate, section
from vapm.features.errors import InterimDataError
from vapm.features.reproducible import SparseRows, log10_float32, sparse_row_product

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


@dataclass(frozen=True)
class AcousticSettings:
    """The `featurize` knobs for clips, validated, with `fmax` resolved to a number."""

    sample_rate: float
    n_mfcc: int
    n_mels: int
    n_fft: int
    hop_length: int
    fmax: float
    wavelet: str
    wavelet_level: int
    wavelet_mode: str
    wavelet_energy: str
    remove_dc: bool
    n_jobs: int


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"featurize.{name} must be a positive integer, got {value!r}")
    return value


def acoustic_settings(params: dict[str, Any]) -> AcousticSettings:
    """Read and check `featurize` and `audio.sample_rate` from params.yaml."""
    sample_rate = audio_sample_rate(params)
    nyquist = sample_rate / 2

    def get(key: str) -> Any:
        return section(params, f"featurize.{key}")

    n_mfcc, n_mels = _positive_int(get("n_mfcc"), "n_mfcc"), _positive_int(get("n_mels"), "n_mels")
    if n_mfcc > n_mels:
        raise ConfigError(f"featurize.n_mfcc ({n_mfcc}) cannot exceed featurize.n_mels ({n_mels}): "
                          "the MFCCs are the DCT of the mel bands")
    fmax = get("fmax")
    if fmax is None:
        fmax = nyquist
    elif isinstance(fmax, bool) or not isinstance(fmax, (int, float)) or not 0 < fmax <= nyquist:
        raise ConfigError(f"featurize.fmax must be null or a frequency in (0, {nyquist:g}] Hz "
                          f"(half of audio.sample_rate), got {fmax!r}")
    wavelet = get("wavelet")
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ConfigError(f"featurize.wavelet {wavelet!r} is not a discrete PyWavelets wavelet "
                          "(e.g. db4, sym5, coif2; see pywt.wavelist(kind='discrete'))")
    mode = get("wavelet_mode")
    if mode not in pywt.Modes.modes:
        raise ConfigError(f"featurize.wavelet_mode {mode!r} is not one of {pywt.Modes.modes}")
    energy = get("wavelet_energy")
    if energy not in WAVELET_ENERGIES:
        raise ConfigError(f"featurize.wavelet_energy must be one of {WAVELET_ENERGIES}, got {energy!r}")
    remove_dc = get("remove_dc")
    if not isinstance(remove_dc, bool):
        raise ConfigError(f"featurize.remove_dc must be true or false, got {remove_dc!r}")
    return AcousticSettings(
        sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels,
        n_fft=_positive_int(get("n_fft"), "n_fft"), hop_length=_positive_int(get("hop_length"), "hop_length"),
        fmax=float(fmax), wavelet=wavelet, wavelet_level=_positive_int(get("wavelet_level"), "wavelet_level"),
        wavelet_mode=mode, wavelet_energy=energy, remove_dc=remove_dc, n_jobs=_positive_int(get("n_jobs"), "n_jobs"))


def acoustic_frame_count(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT: 1 + n_samples // hop_length (98 for 50,000 samples, hop 512)."""
    return 1 + n_samples // hop_length


def check_clip_length(n_samples: int, settings: AcousticSettings) -> None:
    """Clips too short for the chosen STFT window or wavelet depth give meaningless features: refuse them."""
    if n_samples < settings.n_fft:
        raise ConfigError(f"clips have {n_samples} samples, fewer than featurize.n_fft = {settings.n_fft}")
    filter_length = pywt.Wavelet(settings.wavelet).dec_len
    deepest = pywt.dwt_max_level(n_samples, filter_length)
    if settings.wavelet_level > deepest:
        raise ConfigError(f"featurize.wavelet_level = {settings.wavelet_level} is too deep for {n_samples}-sample "
                          f"clips and {settings.wavelet}: at most {deepest} levels are meaningful")


def _centred(clip: np.ndarray, remove_dc: bool) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float64)
    if clip.ndim != 1:
        raise ValueError(f"a clip must be 1-D, got shape {clip.shape}")
    return clip - clip.mean() if remove_dc else clip


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: float, n_fft: int, n_mels: int, fmax: float) -> SparseRows:
    # Built once per process instead of once per clip (librosa.feature.melspectrogram rebuilds it).
    # librosa returns float32 weights: the float64 rounding of its mel-scale log/exp cannot show in them.
    basis = mel_filters(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax).astype(np.float64)
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
                      hop_length: int, fmax: float | None, remove_dc: bool) -> np.ndarray:
    """float32 (n_mfcc + n_mels, frames): MFCC rows on top of the log-mel (dB) rows they are computed from.

    One centred STFT per clip; the mel power spectrogram is librosa.feature.melspectrogram's, computed so
    that its bits do not depend on the CPU: |X|**2 as re**2 + im**2 (elementwise IEEE arithmetic rather
    than a SIMD-dispatched complex abs), the mel projection summed in a fixed order rather than by BLAS,
    and decibels from a correctly rounded log10 (docs/determinism.md).
    """
    signal = _centred(clip, remove_dc)
    fmax = sample_rate / 2 if fmax is None else fmax
    spectrum = stft(signal, n_fft=n_fft, hop_length=hop_length, center=True)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel_power = sparse_row_product(_mel_basis(float(sample_rate), n_fft, n_mels, float(fmax)), power)
    log_mel = power_to_decibels(mel_power)
    mfcc = mfcc_from_log_mel(S=log_mel, n_mfcc=n_mfcc)
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


def clip_range_features(clips_path: Path, start: int, stop: int, files: Sequence[str],
                        settings: AcousticSettings) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Images and energies of clips[start:stop] of a clips.npy, plus the CPU seconds each kind took.

    The worker task of the featurize stage: it opens its own memory map, so only paths cross processes,
    and lives here rather than in `build` so that worker processes do not import pandas.
    """
    clips = np.asarray(np.load(clips_path, mmap_mode="r")[start:stop])
    broken = ~np.isfinite(clips).all(axis=1)
    if broken.any():
        first = int(np.argmax(broken))
        raise InterimDataError(f"{clips_path}: the clip of {files[first]} (item {start + first}) "
                               "holds NaN or infinite samples")
    images, energies = [], []
    image_seconds = wavelet_seconds = 0.0
    for clip in clips:
        tick = time.thread_time()
        images.append(mfcc_logmel_image(clip, settings.sample_rate, settings.n_mfcc, settings.n_mels,
                                        settings.n_fft, settings.hop_length, settings.fmax, settings.remove_dc))
        tock = time.thread_time()
        energies.append(wavelet_packet_energies(clip, settings.wavelet, settings.wavelet_level,
                                                settings.wavelet_mode, settings.wavelet_energy, settings.remove_dc))
        image_seconds += tock - tick
        wavelet_seconds += time.thread_time() - tock
    return np.stack(images), np.stack(energies), image_seconds, wavelet_seconds
