"""Background noise at an exact signal-to-noise ratio, for testing how the detector holds up.

SNR is 10 log10(P_signal / P_noise) with P the mean square of the zero-mean signal (its variance): the
features remove each clip's DC offset (the original recordings carry one), so a constant offset is not
sound and must not count as signal power. The noise is made zero-mean and scaled so that this ratio is
the target exactly (up to float rounding); nothing is clipped.
"""
from __future__ import annotations

import numpy as np

NOISE_TYPES = ("white", "pink")
# Stable per-type integers mixed into the seed, so each noise type has its own stream.
_TYPE_CODES = {"white": 0, "pink": 1}


def white_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a flat power spectrum."""
    return rng.standard_normal(n_samples)


def pink_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density proportional to 1/f (-3 dB per octave).

    White Gaussian noise shaped in the frequency domain: every rfft bin's amplitude is divided by
    sqrt(f) so its power goes as 1/f; the DC bin is set to zero (1/f is infinite there).
    """
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    frequencies = np.fft.rfftfreq(n_samples)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(frequencies[1:])
    return np.fft.irfft(spectrum, n=n_samples)


def make_noise(kind: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        return white_noise(n_samples, rng)
    if kind == "pink":
        return pink_noise(n_samples, rng)
    raise ValueError(f"unknown noise type {kind!r}; choose one of {NOISE_TYPES}")


def signal_power(x: np.ndarray) -> np.ndarray:
    """Mean square about the mean (variance) along the last axis, in float64."""
    return np.var(np.asarray(x, dtype=np.float64), axis=-1)


def snr_db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """10 log10(P_signal / P_noise) along the last axis."""
    return 10 * np.log10(signal_power(signal) / signal_power(noise))


def scale_noise(signal: np.ndarray, noise: np.ndarray, target_snr_db: float) -> np.ndarray:
    """The noise, made zero-mean and scaled so that snr_db(signal, result) == target_snr_db."""
    signal_p = signal_power(signal)
    noise = np.asarray(noise, dtype=np.float64)
    noise = noise - noise.mean(axis=-1, keepdims=True)
    noise_p = signal_power(noise)
    if np.any(signal_p <= 0):
        raise ValueError("a silent (constant) clip has no signal power: its SNR is undefined")
    if np.any(noise_p <= 0):
        raise ValueError("the noise has no power")
    gain = np.sqrt(signal_p / (noise_p * 10 ** (target_snr_db / 10)))
    return noise * gain[..., np.newaxis]


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, target_snr_db: float) -> np.ndarray:
    """signal + noise scaled to `target_snr_db`, in float64 (rows of 2-D arrays are mixed one by one)."""
    return np.asarray(signal, dtype=np.float64) + scale_noise(signal, noise, target_snr_db)


def noise_for_clips(kind: str, n_clips: int, n_samples: int, seed: int) -> np.ndarray:
    """(n_clips, n_samples) independent noise clips of `kind`, the same for a given (kind, seed).

    Drawing it once per noise type and scaling it for every SNR (common random numbers) makes the
    SNR curves differ by the noise level only, not by a new noise draw at each point.
    """
    if kind not in _TYPE_CODES:
        raise ValueError(f"unknown noise type {kind!r}; choose one of {NOISE_TYPES}")
    rng = np.random.default_rng([seed, _TYPE_CODES[kind]])
    return np.stack([make_noise(kind, n_samples, rng) for _ in range(n_clips)])


def add_noise(clips: np.ndarray, kind: str, target_snr_db: float, seed: int) -> np.ndarray:
    """float32 (N, samples): every clip mixed with its own seeded noise of `kind` at `target_snr_db`."""
    clips = np.asarray(clips)
    if clips.ndim != 2:
        raise ValueError(f"clips must be (N, samples), got shape {clips.shape}")
    noise = noise_for_clips(kind, len(clips), clips.shape[1], seed)
    return mix_at_snr(clips, noise, target_snr_db).astype(np.float32)
