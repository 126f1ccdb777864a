"""Pixel-level anomaly scores: AUROC as scikit-learn computes it, and the MVTec AD protocol's PRO curve and AUPRO."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import label
from sklearn.metrics import roc_auc_score

from vapm.evaluation.metrics import EvaluationError
from vapm.evaluation.segmentation import aupro, area_to, pixel_auroc, pixel_scores, pro_curve


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 10 x 10 images (200 pixels). Image 0: region A, a 2 x 2 block (4 pixels). Image 1: region B, 4 pixels on a
    diagonal, touching only at corners: one region with 8-connectivity (four with 4-connectivity). 8 defect pixels,
    192 defect-free ones.

    Map: all of A and the first 2 pixels of B score 1.0, the other 2 pixels of B 0.0; 48 defect-free pixels score 0.5,
    the other 144 score 0.0.

    PRO curve (thresholds 1.0, 0.5, 0.0; a pixel is positive when its score >= the threshold):
      t = 1.0: FPR 0,          PRO = (4/4 + 2/4) / 2 regions = 0.75
      t = 0.5: FPR 48/192 = 0.25, PRO 0.75 (no defect pixel scores 0.5)
      t = 0.0: FPR 1,          PRO 1
    so the vertices are (0, 0), (0, 0.75), (0.25, 0.75), (1, 1), (1, 1).
    Area up to FPR 0.3: 0.25 x 0.75 = 0.1875 on [0, 0.25]; on [0.25, 0.3] the curve rises from 0.75 towards (1, 1)
    with slope 0.25 / 0.75 = 1/3, so PRO(0.3) = 0.75 + 0.05 / 3 = 0.7666..., and the trapezoid is
    0.05 x (0.75 + 0.7666...) / 2 = 91/2400. Total 0.1875 + 91/2400 = 541/2400; normalised by 0.3: 541/720 = 0.75138...
    (With 4-connectivity B would be four regions and PRO(1.0) = (1 + 1 + 1 + 0 + 0) / 5 = 0.6.)

    Pixel AUROC: 6 defect pixels at 1.0 beat all 192; 2 at 0.0 beat none and tie with 144 (half each):
    (6 x 192 + 2 x 144 / 2) / (8 x 192) = 1296 / 1536 = 0.84375.
    """
    masks = np.zeros((2, 10, 10), dtype=bool)
    maps = np.zeros((2, 10, 10))
    masks[0, 2:4, 2:4] = True
    maps[0, 2:4, 2:4] = 1.0
    diagonal = [(5, 5), (6, 6), (7, 7), (8, 8)]
    for row, col in diagonal:
        masks[1, row, col] = True
    for row, col in diagonal[:2]:
        maps[1, row, col] = 1.0
    normal = np.flatnonzero(~masks.ravel())
    maps.ravel()[normal[::4]] = 0.5  # every 4th of 192: 48 pixels
    return maps, masks


def test_the_hand_made_two_region_case():
    maps, masks = _hand_case()
    assert np.count_nonzero(maps[~masks] == 0.5) == 48
    fprs, pros = pro_curve(maps, masks)
    np.testing.assert_allclose(fprs, [0, 0, 0.25, 1, 1])
    np.testing.assert_allclose(pros, [0, 0.75, 0.75, 1, 1])
    assert aupro(maps, masks) == pytest.approx(541 / 720, abs=1e-12)
    assert pixel_auroc(maps, masks) == pytest.approx(0.84375, abs=1e-15)
    scores = pixel_scores(maps, masks)
    assert scores["regions"] == 2 and scores["defect_pixels"] == 8 and scores["normal_pixels"] == 192
    assert scores["images_with_defect"] == 2 and scores["aupro"] == pytest.approx(541 / 720, abs=1e-12)


def test_a_perfect_map_scores_one_and_a_constant_map_the_diagonal():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 16, 16)) < 0.1
    masks[3] = False  # an image without a defect
    perfect = np.where(masks, rng.uniform(2, 3, masks.shape), rng.uniform(0, 1, masks.shape))
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert pixel_auroc(perfect, masks) == 1.0
    # A constant map puts every pixel on one threshold: the curve is the straight line (0, 0) -> (1, 1), whose area
    # up to 0.3 is 0.3^2 / 2 = 0.045, normalised 0.15; the AUROC is chance.
    constant = np.full(masks.shape, 7.0, dtype=np.float32)
    assert aupro(constant, masks) == pytest.approx(0.15, abs=1e-12)
    assert aupro(constant, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    assert pixel_auroc(constant, masks) == 0.5
    assert aupro(-perfect, masks) == pytest.approx(0.0, abs=1e-12)  # inverted: no overlap until FPR 1


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_is_scikit_learns(ties):
    rng = np.random.default_rng(7 + ties)
    masks = rng.random((30, 24, 20)) < 0.07
    maps = rng.normal(0, 1, masks.shape) + 1.2 * masks
    if ties:
        maps = np.round(maps * 2).astype(np.int16)  # few distinct values, many ties across the classes
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert pixel_auroc(maps.astype(np.float32), masks.astype(np.uint8)) == pytest.approx(expected, rel=1e-12)


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """The definition, threshold by threshold, integrated with the curve's x clipped at the limit."""
    labelled = [label(mask, structure=np.ones((3, 3)))[0] for mask in masks]
    regions = [(i, labelled[i] == k) for i in range(len(masks)) for k in range(1, labelled[i].max() + 1)]
    xs, ys = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        xs.append(np.count_nonzero(predicted & ~masks) / np.count_nonzero(~masks))
        ys.append(np.mean([predicted[i][region].mean() for i, region in regions]))
    xs, ys = np.array(xs + [1.0]), np.array(ys + [1.0])
    if limit >= xs[-1]:
        return float(np.trapezoid(ys, xs)) / limit
    beyond = int(np.argmax(xs > limit))
    y_limit = ys[beyond - 1] + (ys[beyond] - ys[beyond - 1]) * (limit - xs[beyond - 1]) / (xs[beyond] - xs[beyond - 1])
    xs, ys = np.append(xs[:beyond], limit), np.append(ys[:beyond], y_limit)
    return float(np.trapezoid(ys, xs)) / limit


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aupro_matches_the_definition_threshold_by_threshold(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 12, 12), dtype=bool)
    for image in range(4):  # blobs of varied size, some touching at corners; image 4 has none
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, 10, 2)
            masks[image, row:row + rng.integers(1, 4), col:col + rng.integers(1, 4)] = True
    maps = np.round(rng.normal(0, 1, masks.shape) + 1.5 * masks, 1)  # ties within and across regions
    full_x, full_y = pro_curve(maps, masks)
    for limit in (0.3, 0.05, 0.8, 1.0):
        assert aupro(maps, masks, limit) == pytest.approx(_brute_force_aupro(maps, masks, limit), abs=1e-12)
        # Cut at a limit: the full curve's vertices up to the first one past the limit, nothing else.
        x, y = pro_curve(maps, masks, max_fpr=limit)
        beyond = int(np.argmax(full_x > limit)) if limit < 1 else full_x.size - 1
        np.testing.assert_array_equal(x, full_x[:beyond + 1])
        np.testing.assert_array_equal(y, full_y[:beyond + 1])


def test_area_to_interpolates_at_the_limit_or_stops_at_a_vertex():
    x, y = np.array([0.0, 0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.5, 0.5, 1.0, 1.0])
    assert area_to(x, y, 0.2) == pytest.approx(0.1)
    assert area_to(x, y, 0.3) == pytest.approx(0.1 + 0.1 * (0.5 + 0.75) / 2)
    with pytest.raises(EvaluationError, match="outside the curve"):
        area_to(x, y, 1.5)


@pytest.mark.parametrize("maps, masks, message", [
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool), r"masks have shape \(2, 4, 5\) but the anomaly maps"),
    (np.zeros((4, 4)), np.zeros((4, 4), bool), r"\(images, height, width\)"),
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool), "masks of all 2 images are empty"),
    (np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool), "defect-free pixels too"),
    (np.array([[[0.0, np.nan], [0.0, 1.0]]]), np.array([[[0, 1], [0, 0]]], bool),
     r"1 non-finite value\(s\).*image 0 at row 0, column 1"),
    (np.zeros((1, 2, 2)), np.array([[[0, 2], [0, 0]]]), "boolean or 0/1"),
    (np.zeros((1, 2, 2), bool), np.array([[[0, 1], [0, 0]]], bool), "real numbers"),
])
def test_bad_input_is_one_clear_error(maps, masks, message):
    for score in (pixel_auroc, aupro, pixel_scores):
        with pytest.raises(EvaluationError, match=message):
            score(maps, masks)


def test_bad_fpr_limit():
    maps, masks = _hand_case()
    with pytest.raises(EvaluationError, match=r"fpr_limit must lie in \(0, 1\]"):
        aupro(maps, masks, 0.0)
