"""librosa's centred STFT, Slaney mel filter bank and orthonormal DCT-II, in NumPy alone.

Importing librosa costs 1.5-2.5 s (numba, scipy.signal, ...) and scipy.fft alone 0.45 s, most of the time
`vapm predict` has for a cold start; the three transforms featurize and predict need are a few lines of
NumPy. The STFT and the mel bank repeat librosa 0.11's arithmetic operation for operation, so they are the
same bits as librosa's (tests/data/test_spectral.py compares them). The DCT is a matrix applied in a fixed
summation order (docs/determinism.md) rather than scipy's FFT-based DCT, so it agrees with
`librosa.feature.mfcc` to about 1e-13 relative, not to the bit.
"""
from __future__ import annotations

from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np

from vapm.data.features.reproducible import SparseRows

# The Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_F_SP = 200.0 / 3
_MEL_MIN_LOG_HZ = 1000.0
_MEL_MIN_LOG_MEL = (_MEL_MIN_LOG_HZ - 0.0) / _MEL_F_SP

# Enough digits for every DCT coefficient to round correctly to float64 (17 digits) with a wide margin.
_DCT_DIGITS = 40
_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window, as scipy.signal.get_window('hann', n_fft, fftbins=True) computes it.

    scipy builds a symmetric window one sample longer from linspace and cos and drops the last sample;
    the same operations here give the same bits.
    """
    if n_fft <= 1:
        return np.ones(n_fft)
    angles = np.linspace(-np.pi, np.pi, n_fft + 1, dtype=np.float64)
    window = np.zeros(n_fft + 1)
    window += 0.5 * np.cos(0 * angles)  # scipy's k = 0 term: exactly 0.5, kept for the identical sum
    window += 0.5 * np.cos(1 * angles)
    return window[:-1]


def centred_stft(signal: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """complex128 (1 + n_fft // 2, frames): librosa.stft(signal, n_fft=, hop_length=, center=True).

    librosa 0.11 pads the ends with zeros (pad_mode='constant') and frames the head and tail separately
    only to avoid copying the signal; the frames, the windowed values and each frame's rfft are the same,
    so zero-padding the whole signal gives the same bits.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"a signal must be 1-D, got shape {signal.shape}")
    if hop_length < 1:
        raise ValueError(f"hop_length must be a positive integer, got {hop_length}")
    padded = np.pad(signal, n_fft // 2, mode="constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    return np.fft.rfft(hann_window(n_fft) * frames, axis=-1).T


def _hz_to_mel(hz: float) -> np.ndarray:
    # librosa.hz_to_mel on a scalar, with its 0-d arrays: a scalar ufunc call like librosa's.
    hz = np.asanyarray(hz)
    mels = (hz - 0.0) / _MEL_F_SP
    if hz >= _MEL_MIN_LOG_HZ:
        mels = _MEL_MIN_LOG_MEL + np.log(hz / _MEL_MIN_LOG_HZ) / (np.log(6.4) / 27.0)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    # librosa.mel_to_hz on a vector: log-region values replaced in place, exp over that subset only.
    hz = 0.0 + _MEL_F_SP * mels
    log_region = mels >= _MEL_MIN_LOG_MEL
    hz[log_region] = _MEL_MIN_LOG_HZ * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - _MEL_MIN_LOG_MEL))
    return hz


def mel_filter_bank(sample_rate: float, n_fft: int, n_mels: int, fmax: float | None = None) -> np.ndarray:
    """float32 (n_mels, 1 + n_fft // 2): librosa.filters.mel(sr=, n_fft=, n_mels=, fmax=), fmin 0, Slaney.

    Triangles between mel-spaced centre frequencies, each scaled to unit area in Hz (norm='slaney').
    Like librosa, each triangle is rounded to float32 first and scaled afterwards (in float64, rounded
    again): the double rounding is part of librosa's bits.
    """
    fmax = float(sample_rate) / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, np.newaxis]
    return weights


def _exact_cos_half_turns(numerator: int, denominator: int) -> Decimal:
    """cos(pi * numerator / denominator) to _DCT_DIGITS digits, exactly 0 or +-1 where it is."""
    turn = numerator % (2 * denominator)          # cos has period 2 pi ...
    if turn > denominator:
        turn = 2 * denominator - turn             # ... and is even
    sign = 1
    if 2 * turn > denominator:
        turn, sign = denominator - turn, -1       # cos(pi - x) = -cos(x): x now in [0, pi/2]
    if 2 * turn == denominator:
        return Decimal(0)
    with localcontext() as context:
        context.prec = _DCT_DIGITS + 5
        x2 = (_PI * turn / denominator) ** 2
        term = total = Decimal(1)
        k = 0
        while abs(term) > Decimal(10) ** -(_DCT_DIGITS + 3):  # x <= pi/2: about 30 terms
            k += 2
            term = -term * x2 / (k * (k - 1))
            total += term
        return sign * total


@lru_cache(maxsize=8)
def dct_matrix(n_coefficients: int, n_inputs: int) -> SparseRows:
    """The first rows of the orthonormal DCT-II of length n_inputs (scipy.fft.dct(type=2, norm='ortho')).

    Row k is sqrt((1 if k == 0 else 2) / N) * cos(pi * k * (2n + 1) / (2N)). Each coefficient is computed
    in decimal and rounded once to float64, so it is the correctly rounded value: no cos of the machine at
    hand (whose last bit depends on the CPU and the C library) enters the features. The exact zeros
    (k (2n + 1) an odd multiple of N) are left out of the sparse rows.
    """
    if not 0 < n_coefficients <= n_inputs:
        raise ValueError(f"cannot take {n_coefficients} DCT coefficients of {n_inputs} values")
    matrix = np.empty((n_coefficients, n_inputs))
    cosines: dict[int, Decimal] = {}
    with localcontext() as context:
        context.prec = _DCT_DIGITS + 5
        scales = [(Decimal(1) / n_inputs).sqrt(), (Decimal(2) / n_inputs).sqrt()]
        for k in range(n_coefficients):
            for n in range(n_inputs):
                angle = k * (2 * n + 1) % (4 * n_inputs)
                if angle not in cosines:
                    cosines[angle] = _exact_cos_half_turns(angle, 2 * n_inputs)
                matrix[k, n] = float(scales[k > 0] * cosines[angle])
    return SparseRows.from_dense(matrix)
