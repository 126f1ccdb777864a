"""Cheap checks before the model: each kind of unfit input gets its named reason, ordinary inputs none."""
from __future__ import annotations

import numpy as np
import pytest

from vapm.data.synth.acoustic import render_clip
from vapm.data.synth.vision import render_defect
from vapm.data.input_checks import (
    ClipLimits,
    ImageLimits,
    clip_reasons,
    fit_clip_limits,
    fit_image_limits,
    image_reasons,
    sharpness,
)

RATE = 50000 / 3


def ordinary_clip(seed: int = 0) -> np.ndarray:
    """A clip like the real recordings: no DC offset (the synthetic renderer adds one), RMS 0.1 (real: 0.029-0.170)."""
    clip = render_clip("Healthy", 50_000, RATE, np.random.default_rng(seed))
    clip = clip - clip.mean()
    return 0.1 * clip / np.sqrt(np.mean(clip ** 2))


def test_ordinary_clips_and_images_pass():
    for seed in range(3):
        assert clip_reasons(ordinary_clip(seed)) == []
        for label in ("Crazing", "Patches", "Scratches"):
            assert image_reasons(render_defect(label, 128, np.random.default_rng(seed))) == []


@pytest.mark.parametrize("make, reason", [
    (lambda c: np.zeros_like(c), "silence"),
    (lambda c: 0.01 * c, "silence"),
    (lambda c: np.clip(100 * c, -1, 1), "clipping"),
    (lambda c: c + 0.05, "DC offset"),
])
def test_each_unfit_clip_gets_its_reason(make, reason):
    reasons = clip_reasons(make(ordinary_clip()))
    assert any(r.startswith(reason) for r in reasons), reasons


def test_each_unfit_image_gets_its_reason():
    image = render_defect("Patches", 128, np.random.default_rng(1))
    rows, cols = np.mgrid[:128, :128]
    tilted = np.where(np.abs(rows - 63.5) + np.abs(cols - 63.5) <= 64, image, 0).astype(np.uint8)  # 45° corners
    kernel = np.exp(-0.5 * (np.arange(-9, 10) / 3.0) ** 2)
    kernel /= kernel.sum()
    blurred = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 0, image.astype(float))
    blurred = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 1, blurred)[12:-12, 12:-12]
    cases = {"black image": np.zeros((128, 128), np.uint8), "saturated image": np.full((128, 128), 255, np.uint8),
             "blank image": np.full((128, 128), 128, np.uint8), "black border": tilted,
             "out of focus": np.round(blurred).astype(np.uint8)}
    for reason, unfit in cases.items():
        reasons = image_reasons(unfit)
        assert len(reasons) >= 1 and any(r.startswith(reason) for r in reasons), (reason, reasons)


def test_sharpness_is_the_mean_absolute_laplacian():
    image = np.zeros((3, 3))
    image[1, 1] = 4.0  # the centre's Laplacian: 0 + 0 + 0 + 0 - 4 * 4
    assert sharpness(image) == 16.0
    with pytest.raises(ValueError, match="at least 3x3"):
        sharpness(np.zeros((2, 5)))


def test_limits_fitted_on_other_training_data_pass_it_and_still_catch_the_unfit():
    # The demo's synthetic clips carry a DC offset of about 0.05, which the shipped limit (0.01) would flag.
    rng = np.random.default_rng(4)
    clips = np.stack([render_clip(label, 50_000, RATE, rng) for label in ("Healthy", "Bearing", "Piston") * 3])
    assert any(r.startswith("DC offset") for r in clip_reasons(clips[0]))
    limits = fit_clip_limits(clips[:6])
    assert limits.dc_offset > ClipLimits().dc_offset and limits.rms_floor <= ClipLimits().rms_floor
    assert all(clip_reasons(clip, limits) == [] for clip in clips[6:])
    assert clip_reasons(np.zeros(50_000), limits)[0].startswith("silence")
    images = np.stack([render_defect(label, 64, rng) for label in ("Crazing", "Patches", "Scratches") * 2])
    image_limits = fit_image_limits(images)
    assert image_limits.min_std <= ImageLimits().min_std and image_limits.black_share >= ImageLimits().black_share
    assert image_reasons(np.zeros((64, 64), np.uint8), image_limits)[0].startswith("black image")


def knocking_clip(seed: int, n: int = 50_000) -> np.ndarray:
    """Noise bursts that start sharply and die away slowly, as valve clicks and piston knocks do."""
    rng = np.random.default_rng(seed)
    envelope = np.zeros(n)
    for start in rng.choice(n - 3000, 20, replace=False):
        envelope[start:start + 3000] += np.exp(-np.arange(3000) / 500.0)
    return 0.1 * (0.05 + envelope) * rng.standard_normal(n)


def test_onset_asymmetry_tells_a_clip_from_itself_played_backwards():
    from vapm.data.input_checks import onset_asymmetry

    for seed in range(3):
        forward = onset_asymmetry(knocking_clip(seed))
        assert forward > 1 and onset_asymmetry(knocking_clip(seed)[::-1]) < -1
    assert onset_asymmetry(np.zeros(50_000)) is None and onset_asymmetry(np.ones(100)) is None
    assert abs(onset_asymmetry(np.random.default_rng(0).standard_normal(50_000))) < 0.5  # steady noise: no direction


def test_reversed_clips_are_flagged_only_when_the_training_clips_all_have_onsets():
    training = np.stack([knocking_clip(seed) for seed in range(10, 18)])
    limits = fit_clip_limits(training)
    assert limits.min_onset_asymmetry is not None and limits.min_onset_asymmetry > 0
    assert clip_reasons(knocking_clip(99), limits) == []
    assert any(r.startswith("onsets unlike") for r in clip_reasons(knocking_clip(99)[::-1], limits))
    steady = fit_clip_limits(np.random.default_rng(1).standard_normal((8, 50_000)) * 0.1)
    assert steady.min_onset_asymmetry is None  # no consistent direction in the training data: the check is off
    assert clip_reasons(knocking_clip(99)[::-1], steady) == []
    assert ClipLimits().min_onset_asymmetry is None  # shipped limits never guess a direction
