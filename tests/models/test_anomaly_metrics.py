"""AUC and partial AUC as DCASE Task 2 defines them, against hand-worked cases, scikit-learn and the definition."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from vapm.models.components.anomaly_metrics import (anomaly_metrics, bootstrap_intervals, mcclish_standardised,
                                                  partial_auc, roc_auc, roc_curve_points, roc_rows)


def random_case(n_normal: int, n_abnormal: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_abnormal, bool)]
    scores = rng.standard_normal(len(labels)) + 0.8 * labels
    if ties:
        scores = np.round(scores, 1)  # many equal scores, across the two classes too
    return labels, scores


def test_auc_matches_a_hand_worked_case():
    # Abnormal 0.35 beats 0.1 but not 0.4; abnormal 0.8 beats both: 3 of 4 pairs.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75, abs=1e-15)
    # With a tie: abnormal 0.5 beats 0.2 and ties 0.5 (half), 0.9 beats both, 0.1 beats none: 3.5 of 6.
    assert roc_auc([0, 0, 1, 1, 1], [0.2, 0.5, 0.5, 0.9, 0.1]) == pytest.approx(3.5 / 6, abs=1e-15)


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_auc_and_roc_points_match_scikit_learn(seed, ties):
    labels, scores = random_case(37, 23, seed, ties)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert partial_auc(labels, scores, 1.0) == pytest.approx(roc_auc(labels, scores), abs=1e-12)  # area = ranks
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    curve = roc_curve_points(labels, scores)
    np.testing.assert_allclose(curve.fpr, fpr, atol=1e-15)
    np.testing.assert_allclose(curve.tpr, tpr, atol=1e-15)
    np.testing.assert_array_equal(curve.thresholds[1:], thresholds[1:])


def test_partial_auc_matches_a_hand_worked_case():
    # Ten normal clips 0..9; p = 0.1 looks only past the highest (9): abnormal 11, 10 and 9.5 beat it, 5 and 3 not.
    labels = np.r_[np.zeros(10, bool), np.ones(5, bool)]
    scores = np.r_[np.arange(10.0), [10.0, 11.0, 5.0, 9.5, 3.0]]
    assert partial_auc(labels, scores, 0.1) == pytest.approx(3 / 5, abs=1e-15)
    # p = 0.3: the three highest normal clips (9, 8, 7), each beaten by the same three abnormal ones.
    assert partial_auc(labels, scores, 0.3) == pytest.approx(3 / 5, abs=1e-15)


def dcase_pauc(labels: np.ndarray, scores: np.ndarray, p: float) -> float:
    """DCASE 2020 Task 2's formula: 1/(floor(pN-) N+) sum_{i <= floor(pN-)} sum_j H(A(x_j+) - A(x_i-)),
    normal clips x_i- in descending order of score, H(x) = 1 if x > 0 else 0."""
    normal = np.sort(scores[~labels])[::-1]
    abnormal = scores[labels]
    m = int(np.floor(p * len(normal)))
    return sum(float(a > n) for n in normal[:m] for a in abnormal) / (m * len(abnormal))


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_partial_auc_equals_the_dcase_formula_when_p_times_normals_is_whole(p):
    labels, scores = random_case(50, 30, seed=3, ties=False)  # p * 50 is a whole number; no ties
    assert partial_auc(labels, scores, p) == pytest.approx(dcase_pauc(labels, scores, p), abs=1e-12)


def integrate_roc(labels: np.ndarray, scores: np.ndarray, p: float, cells: int = 200_000) -> float:
    """(1/p) x midpoint-rule integral over [0, p] of the ROC curve drawn from scikit-learn's points.

    Between the last point at one FPR and the first point at the next, the curve is a straight line
    (a diagonal where normal and abnormal clips tie); vertical jumps have no area. The rule is exact on
    every cell without a corner; each corner costs at most one cell's width (p / cells) of area.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    x = (np.arange(cells) + 0.5) * p / cells
    left = np.searchsorted(fpr, x, side="right") - 1  # last point with fpr <= x
    right = left + 1                                  # first point with fpr > x
    y = tpr[left] + (tpr[right] - tpr[left]) * (x - fpr[left]) / (fpr[right] - fpr[left])
    return float(y.mean())  # = sum(y * p / cells) / p


@pytest.mark.parametrize("seed, ties, p", [(4, False, 0.1), (5, True, 0.1), (6, True, 0.25), (7, True, 1.0)])
def test_partial_auc_equals_the_integral_of_the_roc_curve(seed, ties, p):
    labels, scores = random_case(37, 23, seed, ties)  # 0.1 x 37 normal clips is not a whole number
    corners = len(np.unique(scores)) + 1
    tolerance = corners / 200_000 / p  # at most one cell of area per corner, divided by p as pAUC is
    assert partial_auc(labels, scores, p) == pytest.approx(integrate_roc(labels, scores, p), abs=tolerance)


@pytest.mark.parametrize("seed, ties, p", [(8, False, 0.1), (9, True, 0.1), (10, True, 0.3)])
def test_partial_auc_relates_to_scikit_learns_max_fpr_by_mcclish(seed, ties, p):
    labels, scores = random_case(40, 25, seed, ties)
    ours = partial_auc(labels, scores, p)
    sklearn_value = roc_auc_score(labels, scores, max_fpr=p)
    assert mcclish_standardised(ours, p) == pytest.approx(sklearn_value, abs=1e-12)
    assert abs(ours - sklearn_value) > 0.01  # the two scales differ: reporting one as the other would show here


def test_partial_auc_of_a_perfect_and_a_reversed_detector():
    labels = np.r_[np.zeros(8, bool), np.ones(8, bool)]
    scores = np.arange(16.0)
    assert partial_auc(labels, scores, 0.1) == 1.0
    assert partial_auc(labels, -scores, 0.1) == 0.0
    assert mcclish_standardised(1.0, 0.1) == pytest.approx(1.0)


def test_bootstrap_is_seeded_stratified_and_brackets_the_estimate():
    labels, scores = random_case(20, 30, seed=11, ties=False)
    sizes = []

    def auc_and_record(y, s):
        sizes.append((int((~y).sum()), int(y.sum())))
        return roc_auc(y, s)

    first = bootstrap_intervals(labels, scores, {"auc": auc_and_record}, n_resamples=300, confidence=0.95, seed=5)
    again = bootstrap_intervals(labels, scores, {"auc": roc_auc}, n_resamples=300, confidence=0.95, seed=5)
    other = bootstrap_intervals(labels, scores, {"auc": roc_auc}, n_resamples=300, confidence=0.95, seed=6)
    assert first == again and first != other
    assert set(sizes) == {(20, 30)}  # every resample keeps both class sizes
    low, high = first["auc"]
    assert low < roc_auc(labels, scores) < high
    narrower = bootstrap_intervals(labels, scores, {"auc": roc_auc}, n_resamples=300, confidence=0.5, seed=5)["auc"]
    assert low <= narrower[0] and narrower[1] <= high


def test_anomaly_metrics_per_fault_overall_and_at_the_threshold():
    classes = np.array(["Healthy"] * 4 + ["Bearing"] * 3 + ["Piston"] * 3)
    scores = np.array([0.1, 0.2, 0.3, 0.9,   # healthy; 0.9 is above the threshold: one false alarm of 4
                       1.0, 2.0, 3.0,        # Bearing: all above every healthy clip and the threshold
                       0.25, 0.35, 0.8])     # Piston: mixed
    metrics = anomaly_metrics(scores, classes, "Healthy", threshold=0.5, max_fpr=0.25, n_resamples=200, seed=1,
                              class_names=["Bearing", "Healthy", "Piston"], target_false_alarm_rate=0.05)
    json.dumps(metrics)  # JSON-ready
    assert list(metrics["per_fault"]) == ["Bearing", "Piston"]
    assert metrics["false_alarm"] | {"wilson_ci": None} == {"rate": 0.25, "count": 1, "n": 4, "wilson_ci": None}
    bearing, piston = metrics["per_fault"]["Bearing"], metrics["per_fault"]["Piston"]
    assert bearing["auc"] == 1.0 and bearing["detection"]["rate"] == 1.0
    # Piston vs healthy: 0.25 beats 0.1, 0.2; 0.35 beats 0.1, 0.2, 0.3; 0.8 beats three: 8 of 12 pairs.
    assert piston["auc"] == pytest.approx(8 / 12)
    assert piston["detection"] | {"wilson_ci": None} == {"rate": 1 / 3, "count": 1, "n": 3, "wilson_ci": None}
    assert metrics["overall"]["auc"] == pytest.approx(roc_auc_score(classes != "Healthy", scores))
    assert metrics["overall"]["n_normal"] == 4 and metrics["overall"]["n_abnormal"] == 6
    low, high = piston["auc_ci"]
    assert low <= piston["auc"] <= high


def test_roc_rows_hold_one_curve_overall_and_per_fault():
    classes = np.array(["Healthy"] * 3 + ["Bearing"] * 2 + ["Piston"] * 2)
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.15, 0.7])
    rows = roc_rows(scores, classes, "Healthy")
    assert {row["curve"] for row in rows} == {"overall", "Bearing", "Piston"}
    bearing = [(row["fpr"], row["tpr"]) for row in rows if row["curve"] == "Bearing"]
    assert bearing[0] == (0.0, 0.0) and bearing[-1] == (1.0, 1.0)


def test_metrics_refuse_one_class_data():
    with pytest.raises(ValueError, match="both normal and abnormal"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
