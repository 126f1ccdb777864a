"""The polarity rule: learnt from training images alone, it flags their negatives and leaves held-out images be."""
from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vapm.data.image_polarity import MIN_IMAGES, MIN_SIDE, N_FEATURES, fit_likeness, fit_polarity, polarity_features
from vapm.data.input_checks import ImageLimits, fit_image_limits, image_reasons
from vapm.data.synth.vision import render_defect

NEU = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "NEU-data-TrainTest.zip"


def pitted_strip(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Dark pits on a brighter, mottled strip, with shot noise that grows with brightness, as a camera's does."""
    strip = 150 + 80 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
    rows, cols = np.mgrid[:size, :size]
    for _ in range(rng.integers(3, 8)):
        row, col = rng.integers(0, size, 2)
        strip -= 90 * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * rng.uniform(1.5, 4) ** 2))
    strip += 0.8 * rng.standard_normal(strip.shape) * np.sqrt(np.clip(strip, 1, None))
    return np.clip(strip, 0, 255).astype(np.uint8)


def test_every_feature_changes_sign_exactly_when_the_image_is_inverted():
    rng = np.random.default_rng(0)
    for image in (pitted_strip(rng), render_defect("Scratches", 48, rng), pitted_strip(rng, 33)[:, :40]):
        features = polarity_features(image)
        assert features.shape == (N_FEATURES,) and np.any(features != 0)
        # Exactly odd in arithmetic; in float64 the means and sums round differently (measured: 4e-15 relative).
        np.testing.assert_allclose(polarity_features(255 - image), -features, rtol=1e-12, atol=1e-12)
    assert not polarity_features(np.full((40, 40), 7, np.uint8)).any()  # a flat image has no polarity
    with pytest.raises(ValueError, match=f"at least {MIN_SIDE}x{MIN_SIDE}"):
        polarity_features(np.zeros((MIN_SIDE - 1, 64)))


def test_a_rule_learnt_from_training_images_flags_their_negatives_and_not_new_images():
    rng = np.random.default_rng(1)
    images = np.stack([pitted_strip(rng) for _ in range(160)])
    limits = fit_image_limits(images, rows=np.arange(100), false_flag_rate=0.01)
    rule = limits.polarity
    assert rule is not None and rule.detected >= 0.9 and rule.flagged <= 0.02
    held_out = images[100:]
    assert sum(bool(image_reasons(image, limits)) for image in held_out) <= 2  # 1 % of 60 is 0.6: one or two
    inverted = [image_reasons(255 - image, limits) for image in held_out]
    assert all(any(r.startswith("grey levels inverted") for r in reasons) for reasons in inverted)
    # The rule travels in the record as JSON and scores the same after the round trip.
    assert ImageLimits.model_validate_json(limits.model_dump_json()) == limits


def banded(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A spectrogram-like picture: rows of different levels, each varying smoothly along time."""
    rows = rng.uniform(0, 255, (size, 1)) + 20 * ndimage.gaussian_filter(rng.standard_normal((size, size)), (0, 3))
    return np.clip(rows, 0, 255).astype(np.uint8)


def test_the_likeness_rule_flags_images_of_another_kind_and_not_new_images_of_the_training_kind():
    rng = np.random.default_rng(3)
    images = np.stack([pitted_strip(rng) for _ in range(160)])
    limits = fit_image_limits(images, rows=np.arange(100), false_flag_rate=0.01)
    assert limits.likeness is not None
    assert sum(bool(image_reasons(image, limits)) for image in images[100:]) <= 2
    for picture in (banded(rng) for _ in range(20)):
        assert any(r.startswith("image statistics unlike") for r in image_reasons(picture, limits))
    assert fit_likeness(np.array([polarity_features(i) for i in images[:MIN_IMAGES - 1]]), 0.01) is None


def test_no_rule_where_there_is_no_polarity_to_learn_or_too_little_to_learn_it_from():
    rng = np.random.default_rng(2)
    noise = rng.normal(128, 30, (80, 48, 48)).clip(0, 255).astype(np.uint8)  # symmetric: its negative is alike
    assert fit_polarity(np.array([polarity_features(image) for image in noise]), 0.01) is None
    few = np.stack([pitted_strip(rng) for _ in range(MIN_IMAGES - 1)])
    assert fit_polarity(np.array([polarity_features(image) for image in few]), 0.01) is None
    small = fit_image_limits(few[:, :MIN_SIDE - 1, :MIN_SIDE - 1])  # too small to measure
    assert small.polarity is None and small.likeness is None
    assert image_reasons(255 - few[0], fit_image_limits(few)) == []  # no rule: no polarity reason
    with pytest.raises(ValueError, match="polarity features"):
        fit_polarity(np.zeros((60, 3)), 0.01)


@pytest.mark.slow
@pytest.mark.skipif(not NEU.exists(), reason="the real NEU images are not in ../shared/data")
def test_on_the_real_neu_images_inverted_test_images_are_flagged_and_the_test_images_are_not():
    with zipfile.ZipFile(NEU) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        images = np.stack([np.asarray(Image.open(BytesIO(archive.read(n))).convert("L").resize((128, 128)))
                           for n in names])
    train = np.flatnonzero(["/train/" in n for n in names])
    test = np.flatnonzero(["/test/" in n for n in names])
    from vapm.config.settings import OodSettings

    # at the rate featurize gives each learnt image rule (a third of ood.false_flag_rate's 1 %)
    limits = fit_image_limits(images, rows=train, false_flag_rate=OodSettings().rule_rate("vision"))
    assert limits.polarity is not None and limits.polarity.detected >= 0.95
    assert sum(bool(image_reasons(images[i], limits)) for i in test) <= 1  # of 72
    assert np.mean([bool(image_reasons(255 - images[i], limits)) for i in test]) >= 0.95


def test_checking_an_image_imports_no_scipy_or_scikit_learn(tmp_path):
    """`vapm predict` checks every image with the learnt rules: importing scipy.ndimage and scipy.stats would cost
    a cold start about a second (docs/performance.md), so they are NumPy."""
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    limits = fit_image_limits(np.stack([pitted_strip(rng) for _ in range(80)]))
    assert limits.polarity is not None and limits.likeness is not None
    (tmp_path / "limits.json").write_text(limits.model_dump_json())
    np.save(tmp_path / "image.npy", 255 - pitted_strip(rng))
    probe = ("import sys, numpy as np\n"
             "from vapm.data.input_checks import ImageLimits, image_reasons\n"
             f"limits = ImageLimits.model_validate_json(open({str(tmp_path / 'limits.json')!r}).read())\n"
             f"reasons = image_reasons(np.load({str(tmp_path / 'image.npy')!r}), limits)\n"
             "print(reasons[0].split(' (')[0], sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn'}))")
    source = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": source})
    assert result.stdout.strip() == "grey levels inverted []"
