"""Noise mixing: SNR exact by construction, pink noise really 1/f, everything seeded."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch
from scipy.stats import linregress

from vapm.models.acoustic_anomaly.noise import (add_noise, make_noise, mix_at_snr, noise_for_clips, pink_noise,
                                                snr_db, white_noise)


@pytest.fixture
def noise_clips() -> np.ndarray:
    """Three 1 s clips at 8 kHz with different levels and a DC offset (as the original recordings have)."""
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    clips = [level * np.sin(2 * np.pi * 440 * t) + 0.3 + 0.01 * rng.standard_normal(8000) for level in (0.05, 0.5, 2.0)]
    return np.stack(clips).astype(np.float32)


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("target", [20.0, 10.0, 5.0, 0.0, -5.0])
def test_mixing_hits_the_snr_within_0_1_db(noise_clips, kind, target):
    mixed = add_noise(noise_clips, kind, target, seed=1)
    assert mixed.dtype == np.float32 and mixed.shape == noise_clips.shape
    added = mixed.astype(np.float64) - noise_clips.astype(np.float64)
    measured = snr_db(noise_clips, added)
    # Exact up to rounding the mix to float32 (relative error ~6e-8 a sample, ~1e-5 dB at these levels);
    # the issue asks for 0.1 dB, the construction gives far better.
    np.testing.assert_allclose(measured, target, atol=1e-3)
    # Before the float32 cast the ratio is exact to float64 rounding.
    exact = mix_at_snr(noise_clips, noise_for_clips(kind, 3, noise_clips.shape[1], 1), target) - noise_clips
    np.testing.assert_allclose(snr_db(noise_clips, exact), target, atol=1e-9)


def test_signal_power_ignores_the_dc_offset(noise_clips):
    # The DC offset (0.3) is not sound: the SNR must not change when it is removed.
    centred = noise_clips - noise_clips.mean(axis=1, keepdims=True)
    noise = noise_for_clips("white", 3, noise_clips.shape[1], 2)
    np.testing.assert_allclose(mix_at_snr(noise_clips, noise, 10.0) - noise_clips,
                               mix_at_snr(centred, noise, 10.0) - centred, atol=1e-12)


def test_noise_is_seeded_and_independent_per_clip(noise_clips):
    first = add_noise(noise_clips, "pink", 5.0, seed=3)
    np.testing.assert_array_equal(first, add_noise(noise_clips, "pink", 5.0, seed=3))
    assert not np.array_equal(first, add_noise(noise_clips, "pink", 5.0, seed=4))
    noise = noise_for_clips("white", 3, 1000, seed=3)
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 5 / np.sqrt(1000)  # 5 standard errors of a zero correlation
    assert not np.array_equal(noise_for_clips("white", 1, 1000, 3), noise_for_clips("pink", 1, 1000, 3))


def spectral_slope(noise: np.ndarray) -> tuple[float, float]:
    """Slope of log10 power against log10 frequency (Welch, 1024-sample segments), 1/64 to 1/4 of the rate."""
    frequencies, power = welch(noise, fs=1.0, nperseg=1024)
    band = (frequencies >= 1 / 64) & (frequencies <= 1 / 4)
    fit = linregress(np.log10(frequencies[band]), np.log10(power[band]))
    return fit.slope, fit.stderr


def test_pink_noise_power_falls_as_one_over_f_and_white_is_flat():
    rng = np.random.default_rng(7)
    # 2**17 samples give ~255 half-overlapping Welch segments: each bin's log10 power has a spread of
    # about 0.434 / sqrt(255 / 2) ~ 0.04, and over the ~230 bins spanning 1.2 decades the fitted slope's
    # standard error is ~0.04 / (sqrt(230) x 0.33) ~ 0.008. The 0.05 tolerance is ~6 of those.
    pink_slope, pink_error = spectral_slope(pink_noise(2 ** 17, rng))
    white_slope, _ = spectral_slope(white_noise(2 ** 17, rng))
    assert pink_error < 0.01
    assert pink_slope == pytest.approx(-1.0, abs=0.05)
    assert white_slope == pytest.approx(0.0, abs=0.05)


def test_silent_clips_and_unknown_noise_are_refused():
    with pytest.raises(ValueError, match="silent"):
        add_noise(np.full((1, 100), 0.5, dtype=np.float32), "white", 10.0, seed=0)
    with pytest.raises(ValueError, match="unknown noise type"):
        make_noise("brown", 10, np.random.default_rng(0))
