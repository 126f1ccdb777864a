"""Shifted test inputs (vapm.data.shifts): each shift checked for what it must be, on real NumPy/SciPy arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from vapm.data.shifts import CLIP_SHIFTS, IMAGE_SHIFTS, clip_shifts, image_shifts

RATE = 16_000.0
SAMPLES = 16_000  # one second: FFT bins 1 Hz apart, so 2 kHz is a bin of its own


@pytest.fixture
def images() -> np.ndarray:
    """Five 33 x 41 grey images (odd sides: the centre is a pixel), textured like steel and of different means."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:33, 0:41]
    base = 60.0 + 40.0 * np.sin(rows / 3.0) * np.cos(cols / 5.0)
    stack = [base + offset + rng.normal(0, 25, base.shape) for offset in (0, 30, 60, 90, 120)]
    return np.clip(np.rint(stack), 0, 255).astype(np.uint8)


@pytest.fixture
def clips() -> np.ndarray:
    """Four one-second clips: harmonics of a machine's hum with an envelope, at different levels (float32)."""
    t = np.arange(SAMPLES) / RATE
    rng = np.random.default_rng(3)
    out = []
    for level, hum in zip((0.05, 0.2, 0.5, 0.9), (50.0, 120.0, 333.0, 731.0)):
        wave = sum(np.sin(2 * np.pi * hum * k * t + k) / k for k in range(1, 5))
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
        signal = wave * envelope + 0.05 * rng.standard_normal(SAMPLES)
        out.append(level * signal / np.abs(signal).max())
    return np.asarray(out, dtype=np.float32)


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2, axis=-1))


# ---- images ----------------------------------------------------------------------------------

def test_image_shifts_shapes_dtypes_and_keys(images):
    other = np.random.default_rng(0).normal(size=(3, 104, 98))
    shifts = image_shifts(images, other)
    assert tuple(shifts) == IMAGE_SHIFTS
    for name, shifted in shifts.items():
        assert shifted.shape == images.shape and shifted.dtype == np.uint8, name
        assert shifted.flags.writeable, name  # a real array, not a read-only broadcast view
    without = image_shifts(images)
    assert tuple(without) == IMAGE_SHIFTS[:-1] and "other_modality" not in without


def test_image_shifts_leave_the_input_alone(images):
    before = images.copy()
    image_shifts(images, np.ones((2, 4, 4)))
    np.testing.assert_array_equal(images, before)


def test_inverted_plus_original_is_255(images):
    inverted = image_shifts(images)["inverted"]
    assert np.all(images.astype(np.int32) + inverted == 255)


def test_blank_is_constant_at_each_images_mean(images):
    blank = image_shifts(images)["blank"]
    for image, flat in zip(images, blank):
        assert np.all(flat == flat[0, 0])
        assert flat[0, 0] == round(float(image.astype(np.float64).mean()))
    assert len(np.unique(blank[:, 0, 0])) == len(images)  # each its own mean, not the stack's


def test_saturated_is_white(images):
    assert np.all(image_shifts(images)["saturated"] == 255)


def test_blur_removes_edges_image_by_image(images):
    blurred = image_shifts(images)["blurred"]

    def edges(stack):
        return np.mean([np.abs(ndimage.laplace(x.astype(np.float64))).mean() for x in stack])

    # sigma 3 damps the pixel noise (the Laplacian's main source) about 50-fold here; a third is a loose bound.
    assert edges(blurred) < edges(images) / 3
    # Brightness kept (reflecting edges lose nothing) and no leak between images: each blurred mean stays its own.
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1.0)


def test_rotated_has_black_corners_and_keeps_the_centre(images):
    rotated = image_shifts(images)["rotated"]
    centre = (images.shape[1] // 2, images.shape[2] // 2)
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert np.all(rotated[:, corner[0], corner[1]] == 0), corner
    np.testing.assert_array_equal(rotated[:, centre[0], centre[1]], images[:, centre[0], centre[1]])
    # The inscribed disc comes back a rotation of the original, not a copy of it.
    assert not np.array_equal(rotated[:, 10:23, 14:27], images[:, 10:23, 14:27])


def test_rotated_turns_45_degrees_counter_clockwise():
    image = np.zeros((1, 41, 41), dtype=np.uint8)
    image[0, 20, 30] = 255  # 10 pixels right of the centre
    rotated = image_shifts(image)["rotated"][0].astype(np.float64)
    rows, cols = np.mgrid[0:41, 0:41]
    row = (rows * rotated).sum() / rotated.sum()
    col = (cols * rotated).sum() / rotated.sum()
    step = 10 / math.sqrt(2)  # up and to the right, as seen on screen
    assert row == pytest.approx(20 - step, abs=0.5) and col == pytest.approx(20 + step, abs=0.5)


def test_other_modality_is_scaled_flipped_resized_and_cycled(images):
    count, height, width = images.shape
    # Feature images that grow with the row (decibels, say): row 0 (lowest frequency) is the minimum. The second
    # grows with the row squared and from another level, so the two stay apart after scaling.
    row = np.arange(104.0)[:, None] * np.ones((1, 98))
    ramps = np.stack([row, 3 * row ** 2 - 80])
    pictures = image_shifts(images, ramps)["other_modality"]
    assert pictures.shape == (count, height, width) and pictures.dtype == np.uint8
    assert np.all(pictures[:, 0, :] == 255) and np.all(pictures[:, -1, :] == 0)  # low rows at the bottom
    assert np.all(np.diff(pictures.astype(np.int32), axis=1) <= 0)  # darker downwards
    for i in range(count):  # 2 feature images cycled over 5 test images
        np.testing.assert_array_equal(pictures[i], pictures[i % 2])
    assert not np.array_equal(pictures[0], pictures[1])


def test_other_modality_cuts_extra_items_and_accepts_any_size():
    images = np.zeros((2, 7, 9), dtype=np.uint8)
    other = np.random.default_rng(1).normal(size=(6, 104, 98)).astype(np.float32)
    first = image_shifts(images, other)["other_modality"]
    np.testing.assert_array_equal(first, image_shifts(images, other[:2])["other_modality"])
    for height, width in [(1, 1), (1, 5), (64, 64), (200, 200), (224, 224), (103, 97), (104, 98)]:
        stack = np.zeros((1, height, width), dtype=np.uint8)
        picture = image_shifts(stack, other)["other_modality"]
        assert picture.shape == (1, height, width), (height, width)
    same_size = image_shifts(np.zeros((1, 104, 98), dtype=np.uint8), other)["other_modality"][0]
    low, high = other[0].min(), other[0].max()
    expected = np.rint((other[0, ::-1].astype(np.float64) - low) * 255 / (high - low))
    np.testing.assert_array_equal(same_size, expected.astype(np.uint8))  # no resize: only scale and flip


def test_other_modality_constant_image_is_black():
    picture = image_shifts(np.zeros((1, 8, 8), dtype=np.uint8), np.full((1, 3, 3), -60.0))["other_modality"]
    assert np.all(picture == 0)


@pytest.mark.parametrize("images, other, message", [
    (np.zeros((2, 8, 8), dtype=np.float32), None, "uint8"),
    (np.zeros((8, 8), dtype=np.uint8), None, r"\(N, H, W\)"),
    (np.zeros((2, 8, 8, 3), dtype=np.uint8), None, r"\(N, H, W\)"),
    (np.zeros((0, 8, 8), dtype=np.uint8), None, "at least one"),
    (np.zeros((2, 0, 8), dtype=np.uint8), None, "at least one"),
    (np.zeros((2, 8, 8), dtype=np.uint8), np.zeros((4, 4)), r"\(N, h, w\)"),
    (np.zeros((2, 8, 8), dtype=np.uint8), np.zeros((0, 4, 4)), "at least one"),
    (np.zeros((2, 8, 8), dtype=np.uint8), np.full((1, 4, 4), np.nan), "NaN"),
    (np.zeros((2, 8, 8), dtype=np.uint8), np.zeros((1, 4, 4), dtype=bool), "real numbers"),
    (np.zeros((2, 8, 8), dtype=np.uint8), np.zeros((1, 4, 4), dtype=complex), "real numbers"),
])
def test_image_shifts_reject_bad_input(images, other, message):
    with pytest.raises(ValueError, match=message):
        image_shifts(images, other)


# ---- clips -----------------------------------------------------------------------------------

def test_clip_shifts_shapes_dtypes_and_keys(clips):
    shifts = clip_shifts(clips, RATE, seed=0)
    assert tuple(shifts) == CLIP_SHIFTS
    for name, shifted in shifts.items():
        assert shifted.shape == clips.shape and shifted.dtype == np.float32, name
        assert shifted.flags.c_contiguous, name
    assert clip_shifts(clips.astype(np.float64), RATE, seed=0)["tone_2kHz"].dtype == np.float32


def test_gains(clips):
    shifts = clip_shifts(clips, RATE, seed=0)
    np.testing.assert_allclose(shifts["gain_x0.01"], clips * 0.01, rtol=1e-6)
    loud = shifts["gain_x100"]
    assert np.abs(loud).max() == 1.0
    quiet = np.abs(clips) * 100 < 1
    np.testing.assert_allclose(loud[quiet], clips[quiet] * 100, rtol=1e-6)
    assert np.all(loud[~quiet] == np.sign(clips[~quiet]))
    assert (~quiet).any() and quiet.any()  # both branches exercised


def test_white_noise_is_at_0_db_snr(clips):
    noisy = clip_shifts(clips, RATE, seed=11)["white_noise_0dB"]
    noise = noisy.astype(np.float64) - clips.astype(np.float64)
    snr_db = 20 * np.log10(_rms(clips) / _rms(noise))
    # The noise power of a clip is the mean of S squared N(0, sigma^2) samples: its relative standard deviation is
    # sqrt(2 / S), which in decibels is 10 / ln 10 * sqrt(2 / S) = 0.049 dB for S = 16,000. Six of those per clip,
    # and over all N * S samples pooled the same bound with N * S (the seed fixes the draw, so this is no flake).
    per_clip = 10 / math.log(10) * math.sqrt(2 / SAMPLES)
    assert np.all(np.abs(snr_db) < 6 * per_clip), snr_db
    pooled = 10 * np.log10(np.sum(_rms(clips) ** 2) / np.sum(_rms(noise) ** 2))
    assert abs(pooled) < 6 * 10 / math.log(10) * math.sqrt(2 / clips.size)
    # White: no spectral peak stands out (the clips' hum does not leak in), and the noise is zero-mean.
    spectrum = np.abs(np.fft.rfft(noise[3])) ** 2
    assert spectrum.max() < 20 * spectrum.mean()
    assert abs(noise[3].mean()) < 6 * _rms(noise[3]) / math.sqrt(SAMPLES)


def test_noise_is_deterministic_with_the_seed(clips):
    first = clip_shifts(clips, RATE, seed=5)
    second = clip_shifts(clips, RATE, seed=5)
    for name in CLIP_SHIFTS:
        np.testing.assert_array_equal(first[name], second[name])
    other = clip_shifts(clips, RATE, seed=6)["white_noise_0dB"]
    assert not np.array_equal(first["white_noise_0dB"], other)
    noise = first["white_noise_0dB"] - clips
    assert np.abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.05  # each clip its own draw


@pytest.mark.parametrize("rate, samples", [(RATE, SAMPLES), (44_100.0, 10_000), (8_000.0, 4_001)])
def test_tone_is_2_khz_at_the_clips_rms(clips, rate, samples):
    clips = clips[:, :samples]
    tone = clip_shifts(clips, rate, seed=0)["tone_2kHz"]
    frequencies = np.fft.rfftfreq(samples, d=1 / rate)
    for row in tone:
        peak = frequencies[np.argmax(np.abs(np.fft.rfft(row)))]
        assert abs(peak - 2000.0) <= rate / samples / 2  # the nearest bin to 2 kHz
    # A whole number of periods gives the RMS exactly; otherwise within the part period's share.
    np.testing.assert_allclose(_rms(tone), _rms(clips), rtol=1e-5 if rate == RATE else 2e-3)
    if rate == RATE:
        np.testing.assert_allclose(np.abs(tone).max(axis=1), _rms(clips) * math.sqrt(2), rtol=1e-5)


def test_silence_and_time_reversal(clips):
    shifts = clip_shifts(clips, RATE, seed=0)
    assert np.all(shifts["silence"] == 0)
    np.testing.assert_array_equal(shifts["time_reversed"], clips[:, ::-1])
    np.testing.assert_array_equal(clip_shifts(shifts["time_reversed"], RATE, seed=0)["time_reversed"], clips)


def test_silent_clip_stays_silent_under_noise_and_tone():
    shifts = clip_shifts(np.zeros((2, 100)), RATE, seed=0)
    assert np.all(shifts["white_noise_0dB"] == 0) and np.all(shifts["tone_2kHz"] == 0)


def test_clip_shifts_leave_the_input_alone(clips):
    before = clips.copy()
    clip_shifts(clips, RATE, seed=0)
    np.testing.assert_array_equal(clips, before)


@pytest.mark.parametrize("clips, rate, message", [
    (np.zeros((2, 100), dtype=np.int16), RATE, "floating-point"),
    (np.zeros(100), RATE, r"\(N, samples\)"),
    (np.zeros((2, 3, 100)), RATE, r"\(N, samples\)"),
    (np.zeros((0, 100)), RATE, "at least one"),
    (np.zeros((2, 0)), RATE, "at least one"),
    (np.full((2, 100), np.inf), RATE, "NaN or infinite"),
    (np.zeros((2, 100)), 0.0, "positive"),
    (np.zeros((2, 100)), float("nan"), "positive"),
    (np.zeros((2, 100)), 4_000.0, "Nyquist"),  # 2 kHz is exactly Nyquist: not representable
    (np.zeros((2, 100)), 3_000.0, "Nyquist"),
])
def test_clip_shifts_reject_bad_input(clips, rate, message):
    with pytest.raises(ValueError, match=message):
        clip_shifts(clips, rate, seed=0)
