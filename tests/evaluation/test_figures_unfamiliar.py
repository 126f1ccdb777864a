"""Reliability diagrams and unfamiliar-input charts: written, byte-identical on a second call, sized as designed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vapm.models.components.calibration import ECE_BINS, expected_calibration_error
from vapm.evaluation.figures import _binned_ece, save_reliability_png, save_unfamiliar_png

KINDS = ["test (familiar)", "blank", "saturated", "inverted", "blurred", "rotated", "other_modality"]
MODELS = ["vision_scratch", "vision_transfer", "acoustic_cnn"]


def _bins(probabilities: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Bins as the pipeline will pass them: (k/15, (k+1)/15] of the top-class confidence, empty ones left out."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    return [{"lower": k / ECE_BINS, "upper": (k + 1) / ECE_BINS, "count": int((which == k).sum()),
             "confidence": float(confidence[which == k].mean()), "accuracy": float(correct[which == k].mean())}
            for k in np.unique(which)]


@pytest.fixture
def calibration_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An over-confident six-class classifier and a softened copy of its probabilities (same top class)."""
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1, (300, 6))
    labels = rng.integers(0, 6, 300)
    logits[np.arange(300), labels] += 1.5
    sharp = np.exp(logits * 3)
    soft = np.exp(logits)
    return sharp / sharp.sum(axis=1, keepdims=True), soft / soft.sum(axis=1, keepdims=True), labels


def _rates() -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(9)
    rates = {model: {kind: 0.02 if kind == KINDS[0] else float(rng.random()) for kind in KINDS} for model in MODELS}
    rates["vision_transfer"]["blank"] = 1.0
    rates["vision_scratch"][KINDS[0]] = 0.0
    del rates["acoustic_cnn"]["other_modality"]  # a kind a model lacks: no bar, a note instead
    return rates


def test_reliability_png_is_written_deterministic_and_sized(tmp_path, calibration_case):
    sharp, soft, labels = calibration_case
    before, after = _bins(sharp, labels), _bins(soft, labels)
    path = save_reliability_png(before, after, tmp_path / "sub" / "reliability.png", "toy, test split")
    assert path == tmp_path / "sub" / "reliability.png" and path.stat().st_size > 10_000
    again = save_reliability_png(before, after, tmp_path / "again.png", "toy, test split")
    assert path.read_bytes() == again.read_bytes()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (560, 700)
    different = save_reliability_png(after, before, tmp_path / "swapped.png", "toy, test split")
    assert different.read_bytes() != path.read_bytes()


def test_reliability_legend_ece_is_the_calibration_modules(calibration_case):
    sharp, soft, labels = calibration_case
    for probabilities in (sharp, soft):
        assert _binned_ece(_bins(probabilities, labels)) == pytest.approx(
            expected_calibration_error(probabilities, labels), abs=1e-12)
    assert _binned_ece([]) is None


def test_reliability_png_accepts_empty_and_rejects_malformed_bins(tmp_path):
    path = save_reliability_png([], [], tmp_path / "empty.png", "no items")
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="after bin 0 lacks accuracy"):
        save_reliability_png([], [{"lower": 0.0, "upper": 0.1, "count": 3, "confidence": 0.05}],
                             tmp_path / "bad.png", "bad")


def test_unfamiliar_png_is_written_deterministic_and_sized(tmp_path):
    path = save_unfamiliar_png(_rates(), tmp_path / "sub" / "unfamiliar.png", "Unfamiliar inputs flagged")
    assert path == tmp_path / "sub" / "unfamiliar.png" and path.stat().st_size > 10_000
    again = save_unfamiliar_png(_rates(), tmp_path / "again.png", "Unfamiliar inputs flagged")
    assert path.read_bytes() == again.read_bytes()
    with Image.open(path) as image:
        # 8 in wide; 1.5 in of title and axis, 0.5 in for two legend rows, 7 kinds x (3 x 0.22 + 0.2) in of bars.
        assert image.format == "PNG" and image.size == (800, 802)
    with Image.open(save_unfamiliar_png({"one": {KINDS[0]: 0.01, "blank": 0.97}}, tmp_path / "small.png",
                                        "one model")) as image:
        assert image.size[0] == 800 and 250 < image.size[1] < 400


def test_unfamiliar_png_puts_the_familiar_kind_first_whatever_the_order(tmp_path):
    rates = _rates()
    familiar_last = {model: {**{k: v for k, v in kinds.items() if k != KINDS[0]}, KINDS[0]: kinds[KINDS[0]]}
                     for model, kinds in rates.items()}
    assert list(familiar_last["vision_scratch"])[-1] == KINDS[0]
    first = save_unfamiliar_png(rates, tmp_path / "a.png", "t")
    second = save_unfamiliar_png(familiar_last, tmp_path / "b.png", "t")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("rates, message", [
    ({}, "no models"),
    ({"m": {"blank": 1.5}}, "not within 0..1"),
    ({"m": {"blank": -0.1}}, "not within 0..1"),
    ({"m": {"blank": float("nan")}}, "not within 0..1"),
])
def test_unfamiliar_png_rejects_bad_rates(tmp_path, rates, message):
    with pytest.raises(ValueError, match=message):
        save_unfamiliar_png(rates, tmp_path / "bad.png", "bad")
