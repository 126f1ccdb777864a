"""The detector's inputs: log-mel images of clips, and what each method reads from them.

Both methods start from the same log-mel (dB) image the project's featurize stage computes
(`vapm.data.features.acoustic.mfcc_logmel_image`, one centred STFT, a fixed 1.0 dB reference so a louder
machine stays louder): the statistical detectors summarise every mel band over the clip's frames,
the autoencoder reads windows of consecutive frames, as the DCASE Task 2 baselines do. Computing
the images once lets cross-validation and the noise sweep reuse them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from vapm.data.features.acoustic import mfcc_logmel_image

# Per-band statistics the statistical detectors may use, in this column order.
FRAME_STATISTICS = ("mean", "std", "p10", "p50", "p90")


@dataclass(frozen=True)
class SpectrogramSettings:
    """How clips become log-mel images; saved with every detector so new clips are treated alike.

    The values are the `featurize` section's (and `audio.sample_rate`), so the detector sees the same
    mel bands as the classifiers.
    """

    sample_rate: float
    n_mels: int
    n_fft: int
    hop_length: int
    fmax: float | None
    remove_dc: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpectrogramSettings":
        return cls(sample_rate=float(values["sample_rate"]), n_mels=int(values["n_mels"]),
                   n_fft=int(values["n_fft"]), hop_length=int(values["hop_length"]),
                   fmax=None if values["fmax"] is None else float(values["fmax"]),
                   remove_dc=bool(values["remove_dc"]))


def log_mel_images(clips: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """float32 (N, n_mels, frames) log-mel dB images of float (N, samples) clips.

    `mfcc_logmel_image` stacks MFCC rows on top of the log-mel rows; one MFCC (the cheapest it
    allows) is computed and dropped. BLAS is held to one thread, as the featurize stage does: the mel
    projection's matrices are tiny, and a two-thread BLAS on busy cores made it 5-20x slower (measured
    here: 60 ms instead of ~3 ms a clip).
    """
    clips = np.asarray(clips)
    if clips.ndim != 2 or len(clips) == 0:
        raise ValueError(f"clips must be a non-empty (N, samples) array, got shape {clips.shape}")
    if not np.isfinite(clips).all():
        raise ValueError("clips hold NaN or infinite samples")
    with threadpool_limits(limits=1, user_api="blas"):
        images = [mfcc_logmel_image(clip, settings.sample_rate, 1, settings.n_mels, settings.n_fft,
                                    settings.hop_length, settings.fmax, settings.remove_dc)[1:] for clip in clips]
    return np.stack(images)


def _check_images(log_mel: np.ndarray) -> np.ndarray:
    log_mel = np.asarray(log_mel)
    if log_mel.ndim != 3 or len(log_mel) == 0:
        raise ValueError(f"expected a non-empty (N, n_mels, frames) array of log-mel images, got shape {log_mel.shape}")
    return log_mel


def check_statistics(statistics: Sequence[str]) -> tuple[str, ...]:
    statistics = tuple(statistics)
    unknown = [name for name in statistics if name not in FRAME_STATISTICS]
    if not statistics or unknown or len(set(statistics)) != len(statistics):
        raise ValueError(f"frame statistics must be distinct names from {FRAME_STATISTICS}, got {list(statistics)}")
    return statistics


def frame_statistics(log_mel: np.ndarray, statistics: Sequence[str] = ("mean", "std")) -> np.ndarray:
    """float64 (N, len(statistics) * n_mels): each statistic of every mel band over the clip's frames.

    Columns are grouped by statistic (all bands' means, then all bands' standard deviations, ...).
    Means capture the machine's spectral envelope, standard deviations how steady each band is over
    the 3 s (a knocking valve or a slipping belt modulates its bands); percentiles are robust
    alternatives (p10 ignores short loud events, p90 catches them).
    """
    values = _check_images(log_mel).astype(np.float64)
    columns = []
    for name in check_statistics(statistics):
        if name == "mean":
            columns.append(values.mean(axis=2))
        elif name == "std":
            columns.append(values.std(axis=2))
        else:
            columns.append(np.percentile(values, float(name[1:]), axis=2))
    return np.concatenate(columns, axis=1)


def frame_windows(log_mel: np.ndarray, context_frames: int) -> np.ndarray:
    """float32 (N, windows, context_frames * n_mels): every run of `context_frames` consecutive frames.

    Window w of a clip is frames w .. w + context_frames - 1, flattened frame by frame (DCASE 2020
    Task 2 baseline: 5 frames x 128 bands; here n_mels bands). Windows = frames - context_frames + 1.
    """
    log_mel = _check_images(log_mel)
    n_clips, n_mels, n_frames = log_mel.shape
    if not 1 <= context_frames <= n_frames:
        raise ValueError(f"context_frames must lie in 1..{n_frames} (the frames of a clip), got {context_frames}")
    frames_first = np.ascontiguousarray(np.swapaxes(log_mel, 1, 2), dtype=np.float32)  # (N, frames, n_mels)
    windows = np.lib.stride_tricks.sliding_window_view(frames_first, context_frames, axis=1)  # (N, W, n_mels, ctx)
    return np.ascontiguousarray(np.swapaxes(windows, 2, 3)).reshape(n_clips, n_frames - context_frames + 1,
                                                                     context_frames * n_mels)


def active_bands(normal_log_mel: np.ndarray, floor_db: float | None) -> np.ndarray:
    """Indices of the mel bands whose mean level over the normal clips is within `floor_db` of the loudest band's.

    Bands far below the machine's loudest hold its noise floor rather than its sound: any background
    noise swamps them first (white noise at 20 dB SNR lifts bands 40 dB down by ~20 dB, the loud bands
    by a fraction of a dB), so a detector that watches them flags every noisy clip and ranks them by
    the noise. `None` keeps every band.
    """
    log_mel = _check_images(normal_log_mel)
    if floor_db is None:
        return np.arange(log_mel.shape[1])
    if not floor_db > 0:
        raise ValueError(f"the band floor must be a positive number of dB or None, got {floor_db!r}")
    level = log_mel.astype(np.float64).mean(axis=(0, 2))
    return np.flatnonzero(level >= level.max() - floor_db)
