"""Pixel-level scores of an anomaly detector's maps against ground-truth defect masks.

`anomaly_maps` is (N, H, W), real and finite, higher = more anomalous; `masks` is (N, H, W) boolean (or 0/1), True
on defect pixels; an image without a defect has an empty mask. Both scores pool every pixel of every image.

- `pixel_auroc`: the area under the ROC curve of all pixels (defect pixels positive), exactly scikit-learn's
  `roc_auc_score` on the flattened arrays: the Mann-Whitney statistic with ties counted half, in integers.
- `pro_curve` / `aupro`: the per-region overlap (PRO) curve and its normalised area up to a false-positive rate
  of 0.3, the MVTec AD protocol (Bergmann et al., IJCV 2021; the MVTec evaluation code's `compute_pro` and
  `trapezoid`). Every 8-connected component of a mask (scipy.ndimage.label with a 3x3 structuring element, as the
  MVTec code and anomalib's cv2.connectedComponents do) is a region. At a threshold t a pixel is predicted
  anomalous when its score is >= t; the PRO is the mean over all regions of the share of the region's pixels
  predicted anomalous, and the false-positive rate the share of all defect-free pixels (outside every mask, of
  every image) predicted anomalous. The curve has one vertex at every distinct score (the exact curve, not a
  sampled one) plus (0, 0) and (1, 1); it is integrated by the trapezoid rule up to the limit, the PRO at the limit
  interpolated linearly between its neighbours, and divided by the limit, so a perfect map scores 1 and a constant
  map 0.15 (the straight line from (0, 0) to (1, 1)).

Memory: a sorted copy of the defect-free pixels' scores (in the maps' own dtype: float32 stays float32), a few
arrays the size of the defect pixels, and for the AUPRO only the thresholds down to the first past the limit; no
weight, index or cumulative-sum arrays over all pixels. 200 maps of 224 x 224 (10 million float32 pixels, every
score distinct) take about 10 s and 115 MB beside the maps (measured on a shared 2-core machine).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vapm.evaluation.metrics import EvaluationError

PRO_FPR_LIMIT = 0.3
# 8-connectivity: pixels touching at a corner belong to one region (the MVTec AD evaluation code's structure).
REGION_STRUCTURE = np.ones((3, 3), dtype=int)


def _checked(anomaly_maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The maps as a real floating array and the masks as bool, both (N, H, W), or an EvaluationError."""
    maps = np.asarray(anomaly_maps)
    truth = np.asarray(masks)
    if maps.ndim != 3:
        raise EvaluationError(f"anomaly maps must be (images, height, width), got shape {maps.shape}")
    if truth.shape != maps.shape:
        raise EvaluationError(f"masks have shape {truth.shape} but the anomaly maps {maps.shape}: one mask of the "
                              "same size per map")
    if maps.size == 0:
        raise EvaluationError("no pixels to score (empty anomaly maps)")
    if maps.dtype == np.bool_ or not (np.issubdtype(maps.dtype, np.integer) or np.issubdtype(maps.dtype, np.floating)):
        raise EvaluationError(f"anomaly maps must hold real numbers, got dtype {maps.dtype}")
    if not np.issubdtype(maps.dtype, np.floating) or maps.dtype.itemsize < 4:
        maps = maps.astype(np.float64)  # integers and float16 compare exactly as float64
    bad = ~np.isfinite(maps)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), maps.shape)
        raise EvaluationError(f"anomaly maps hold {int(bad.sum())} non-finite value(s) (NaN or infinite), the first "
                              f"in image {first[0]} at row {first[1]}, column {first[2]}")
    if truth.dtype != np.bool_:
        if not (np.issubdtype(truth.dtype, np.integer) or np.issubdtype(truth.dtype, np.floating)):
            raise EvaluationError(f"masks must be boolean or 0/1, got dtype {truth.dtype}")
        values = np.unique(truth)
        if not np.isin(values, (0, 1)).all():
            raise EvaluationError(f"masks must be boolean or 0/1, got values {values[:5].tolist()}")
        truth = truth == 1
    defect = int(np.count_nonzero(truth))
    if defect == 0:
        raise EvaluationError(f"the masks of all {maps.shape[0]} images are empty: pixel scores need defect pixels")
    if defect == truth.size:
        raise EvaluationError("every pixel of every mask is a defect: pixel scores need defect-free pixels too")
    return maps, truth


def pixel_auroc(anomaly_maps: Any, masks: Any) -> float:
    """Area under the pixel-level ROC curve: the chance that a random defect pixel scores above a random
    defect-free one, ties counting half (equal to sklearn's roc_auc_score(masks.ravel(), maps.ravel()))."""
    return _auroc(*_checked(anomaly_maps, masks))


def _sorted_normal(maps: np.ndarray, truth: np.ndarray) -> np.ndarray:
    normal = maps[~truth]
    normal.sort(kind="stable")
    return normal


def _auroc(maps: np.ndarray, truth: np.ndarray) -> float:
    normal = _sorted_normal(maps, truth)
    defect = maps[truth]
    # For each defect pixel: defect-free pixels below it (left) plus those at most it (right) = 2 x (below + ties/2).
    twice_wins = (np.searchsorted(normal, defect, side="left").sum(dtype=np.int64)
                  + np.searchsorted(normal, defect, side="right").sum(dtype=np.int64))
    return float(twice_wins / (2.0 * defect.size * normal.size))


def _region_weights(truth: np.ndarray) -> tuple[np.ndarray, int]:
    """Per defect pixel (in maps[truth] order) 1 / the size of its region, and the number of regions."""
    from scipy.ndimage import label

    weights = np.empty(int(np.count_nonzero(truth)), dtype=np.float64)
    start, regions = 0, 0
    for mask in truth:  # image by image: regions never join across images
        labelled, count = label(mask, structure=REGION_STRUCTURE)
        if not count:
            continue
        ids = labelled[mask]  # row-major, the order of maps[truth] within this image
        weights[start:start + ids.size] = 1.0 / np.bincount(ids)[ids]
        start += ids.size
        regions += count
    return weights, regions


def pro_curve(anomaly_maps: Any, masks: Any, max_fpr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve: (false-positive rates, per-region overlaps), float64, in increasing order, from (0, 0) through
    one vertex per distinct score (thresholds from the highest down) to (1, 1). With `max_fpr`, it stops at the first
    vertex past `max_fpr` (all that an area up to `max_fpr` needs: far fewer thresholds on large maps)."""
    return _curve(*_checked(anomaly_maps, masks), max_fpr)


def _curve(maps: np.ndarray, truth: np.ndarray, max_fpr: float | None) -> tuple[np.ndarray, np.ndarray]:
    weights, regions = _region_weights(truth)
    defect = maps[truth]
    order = np.argsort(defect, kind="stable")
    defect = defect[order]
    # above[k] = sum of the weights of defect pixels from sorted position k on; above[len] = 0.
    above = np.concatenate([np.cumsum(weights[order][::-1])[::-1], [0.0]])
    del weights, order
    normal = _sorted_normal(maps, truth)
    n_normal = normal.size
    lowest = None
    if max_fpr is not None:
        # k: the most false positives with k / n <= max_fpr (as fprs are computed below). Thresholds above
        # cut = normal[n - 1 - k] leave at most k false positives; at cut itself there are more than k.
        k = min(int(np.floor(max_fpr * n_normal)), n_normal)
        while k < n_normal and (k + 1) / n_normal <= max_fpr:
            k += 1
        while k > 0 and k / n_normal > max_fpr:
            k -= 1
        if k < n_normal:
            lowest = normal[n_normal - 1 - k]
            # Every score >= cut (ties with it included), so that counts of scores >= a threshold stay whole.
            normal = normal[int(np.searchsorted(normal, lowest, side="left")):]
            defect_from = int(np.searchsorted(defect, lowest, side="left"))
            defect, above = defect[defect_from:], above[defect_from:]
    distinct_normal = normal[np.concatenate([[True], normal[1:] != normal[:-1]])]
    thresholds = np.union1d(distinct_normal, defect)[::-1]  # every distinct score (>= the cut), highest first
    del distinct_normal
    false_positives = normal.size - np.searchsorted(normal, thresholds, side="left")  # scores >= threshold
    fprs = false_positives / n_normal
    pros = np.minimum(above[np.searchsorted(defect, thresholds, side="left")] / regions, 1.0)
    if lowest is not None:
        return np.concatenate([[0.0], fprs]), np.concatenate([[0.0], pros])
    pros[-1] = 1.0  # the lowest threshold takes every pixel: exactly (1, 1), whatever the float sums say
    return np.concatenate([[0.0], fprs, [1.0]]), np.concatenate([[0.0], pros, [1.0]])


def area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """The trapezoid-rule area under (x, y) (x increasing, repeats allowed) from x[0] to `limit`, the y at the limit
    interpolated between its neighbours when no vertex lies there (the MVTec code's `trapezoid` with x_max)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not x[0] <= limit <= x[-1]:
        raise EvaluationError(f"integration limit {limit} lies outside the curve's range {x[0]}..{x[-1]}")
    end = int(np.searchsorted(x, limit, side="right"))  # vertices x <= limit
    area = float(np.sum(0.5 * (y[1:end] + y[:end - 1]) * (x[1:end] - x[:end - 1])))
    if x[end - 1] < limit:
        y_limit = y[end - 1] + (y[end] - y[end - 1]) * (limit - x[end - 1]) / (x[end] - x[end - 1])
        area += 0.5 * (y[end - 1] + y_limit) * (limit - x[end - 1])
    return float(area)


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise EvaluationError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")


def aupro(anomaly_maps: Any, masks: Any, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """The area under the PRO curve up to false-positive rate `fpr_limit`, divided by `fpr_limit` (0..1)."""
    _check_limit(fpr_limit)
    return _aupro(*_checked(anomaly_maps, masks), fpr_limit)


def _aupro(maps: np.ndarray, truth: np.ndarray, fpr_limit: float) -> float:
    fprs, pros = _curve(maps, truth, fpr_limit)
    return float(area_to(fprs, pros, fpr_limit) / fpr_limit)


def pixel_scores(anomaly_maps: Any, masks: Any, fpr_limit: float = PRO_FPR_LIMIT) -> dict[str, Any]:
    """Both pixel-level scores as plain JSON types: `pixel_auroc`, `aupro` (with `pro_fpr_limit`), and the counts
    they rest on (`regions`, `defect_pixels`, `normal_pixels`, `images_with_defect`)."""
    _check_limit(fpr_limit)
    maps, truth = _checked(anomaly_maps, masks)
    _, regions = _region_weights(truth)
    return {
        "pixel_auroc": _auroc(maps, truth),
        "aupro": _aupro(maps, truth, fpr_limit),
        "pro_fpr_limit": float(fpr_limit),
        "regions": int(regions),
        "defect_pixels": int(np.count_nonzero(truth)),
        "normal_pixels": int(truth.size - np.count_nonzero(truth)),
        "images_with_defect": int(np.count_nonzero(truth.any(axis=(1, 2)))),
    }
