"""The measures of DCASE Task 2 (machine-condition monitoring): ROC AUC and partial AUC, with intervals.

Normal clips are the negatives, abnormal (fault) clips the positives, and a higher score means more
abnormal. AUC is the probability that a random abnormal clip scores above a random normal one (ties
count half): the Mann-Whitney statistic, equal to the trapezoidal area under the ROC curve.

Partial AUC (pAUC) follows the DCASE task description: the area under the ROC curve over false-positive
rates 0..p, divided by p, so a perfect detector scores 1 and a random one p/2:

    pAUC = (1/p) * integral_0^p TPR(FPR) dFPR,

which, when p * N_normal is a whole number m and there are no ties, equals DCASE's
1/(m N_abnormal) * sum over the m highest-scoring normal clips i and all abnormal clips j of
H(score_j - score_i). Between ROC points the curve is linearly interpolated (so a p * N_normal that is
not a whole number still has a value: with 8 normal test clips and p = 0.1 the area rests on the
first ROC segment, set by the highest-scoring normal clip).

scikit-learn's `roc_auc_score(..., max_fpr=p)` integrates the same curve but reports McClish's
standardisation 0.5 * (1 + (A - p^2/2) / (p - p^2/2)) of the raw area A, which maps a random detector to
0.5 instead of p/2; the DCASE baseline code called it, so its published "pAUC" numbers are on that
scale. We report the task description's A/p as `pauc` and McClish's value as `pauc_mcclish`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class RocCurve:
    """ROC points from the strictest threshold down: fpr[0] = tpr[0] = 0 (threshold +inf), last = (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # a clip is called abnormal when its score >= threshold


def _checked(is_abnormal: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(is_abnormal)
    values = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != values.shape:
        raise ValueError(f"is_abnormal and scores must be 1-D and of one length, got {labels.shape} and {values.shape}")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("is_abnormal must hold booleans or 0/1")
        labels = labels.astype(bool)
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite")
    if labels.all() or not labels.any():
        raise ValueError("an ROC curve needs both normal and abnormal clips")
    return labels, values


def roc_curve_points(is_abnormal: Any, scores: Any) -> RocCurve:
    """Every ROC point, one per distinct score (as sklearn.metrics.roc_curve with drop_intermediate=False)."""
    labels, values = _checked(is_abnormal, scores)
    order = np.argsort(-values, kind="stable")
    sorted_values, sorted_labels = values[order], labels[order]
    # np.concatenate rather than np.r_: this runs thousands of times in a bootstrap, and np.r_ is slow.
    last_of_each_value = np.append(np.flatnonzero(np.diff(sorted_values) != 0), len(values) - 1)
    true_positives = np.cumsum(sorted_labels)[last_of_each_value]
    false_positives = last_of_each_value + 1 - true_positives
    return RocCurve(fpr=np.concatenate(([0.0], false_positives / np.count_nonzero(~labels))),
                    tpr=np.concatenate(([0.0], true_positives / np.count_nonzero(labels))),
                    thresholds=np.concatenate(([np.inf], sorted_values[last_of_each_value])))


def partial_auc(is_abnormal: Any, scores: Any, max_fpr: float = 1.0) -> float:
    """(1/max_fpr) x the area under the ROC curve for FPR in [0, max_fpr]; max_fpr = 1 gives the AUC."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    curve = roc_curve_points(is_abnormal, scores)
    fpr, tpr = curve.fpr, curve.tpr
    if max_fpr < 1:
        stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[stop - 1] <= max_fpr < fpr[stop]
        tpr_at_max = np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])
        fpr, tpr = np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], tpr_at_max)
    return float(np.trapezoid(tpr, fpr) / max_fpr)


def roc_auc(is_abnormal: Any, scores: Any) -> float:
    """The Mann-Whitney statistic from average ranks (ties count half).

    Equal to `partial_auc(..., 1.0)`, the trapezoidal area, but computed from rank sums, which are
    whole or half numbers: a perfect separation gives exactly 1.0 rather than a sum of fractions
    that rounds to 0.9999999999999999.
    """
    # Imported here, by evaluation only: predict imports this package and needs no SciPy.
    from scipy.stats import rankdata

    labels, values = _checked(is_abnormal, scores)
    n_abnormal, n_normal = int(labels.sum()), int((~labels).sum())
    rank_sum = float(rankdata(values)[labels].sum())
    return (rank_sum - n_abnormal * (n_abnormal + 1) / 2) / (n_abnormal * n_normal)


def mcclish_standardised(pauc: float, max_fpr: float) -> float:
    """sklearn's `max_fpr` scale for a pAUC given as area / max_fpr (see the module docstring)."""
    area = pauc * max_fpr
    least, most = max_fpr ** 2 / 2, max_fpr
    return float(0.5 * (1 + (area - least) / (most - least)))


def bootstrap_intervals(is_abnormal: Any, scores: Any, statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
                        *, n_resamples: int, confidence: float,
                        seed: int | Sequence[int]) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over clips, resampling normal and abnormal clips separately.

    Stratifying keeps every resample's class sizes those of the data (each resample has both classes,
    and the ROC's resolution stays the same). All statistics share the same resamples. When the
    sample separates the classes perfectly every resample does too and the interval is [1, 1]: the
    percentile bootstrap cannot show uncertainty beyond the observed clips.
    """
    labels, values = _checked(is_abnormal, scores)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    normal, abnormal = np.flatnonzero(~labels), np.flatnonzero(labels)
    results = {name: np.empty(n_resamples) for name in statistics}
    for r in range(n_resamples):
        rows = np.concatenate((rng.choice(normal, len(normal)), rng.choice(abnormal, len(abnormal))))
        for name, statistic in statistics.items():
            results[name][r] = statistic(labels[rows], values[rows])
    tail = (1 - confidence) / 2
    # Clipped to the resampled values: numpy's interpolation can land a rounding error outside them
    # (0.9999999999999999 when every resample gives 1).
    return {name: tuple(float(np.clip(np.quantile(samples, q), samples.min(), samples.max()))
                        for q in (tail, 1 - tail))
            for name, samples in results.items()}


def rate_summary(flags: np.ndarray, confidence: float) -> dict[str, Any]:
    """Share of True flags with its count and a Wilson interval."""
    from scipy.stats import binomtest  # here, as rankdata above

    flags = np.asarray(flags, dtype=bool)
    count, n = int(flags.sum()), int(flags.size)
    interval = binomtest(count, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"rate": count / n, "count": count, "n": n, "wilson_ci": [float(interval.low), float(interval.high)]}


def comparison_metrics(is_abnormal: np.ndarray, scores: np.ndarray, threshold: float, *, max_fpr: float,
                       n_resamples: int, confidence: float, seed: int | Sequence[int]) -> dict[str, Any]:
    """AUC and pAUC with bootstrap intervals, and the detection rate at the threshold, of one comparison."""
    labels, values = _checked(is_abnormal, scores)
    intervals = bootstrap_intervals(
        labels, values, {"auc": roc_auc, "pauc": lambda y, s: partial_auc(y, s, max_fpr)},
        n_resamples=n_resamples, confidence=confidence, seed=seed)
    pauc = partial_auc(labels, values, max_fpr)
    return {
        "auc": roc_auc(labels, values), "auc_ci": list(intervals["auc"]),
        "pauc": pauc, "pauc_ci": list(intervals["pauc"]), "pauc_mcclish": mcclish_standardised(pauc, max_fpr),
        "n_normal": int(np.count_nonzero(~labels)), "n_abnormal": int(np.count_nonzero(labels)),
        "detection": rate_summary(values[labels] > threshold, confidence),
    }


def fault_types(clip_classes: Sequence[str], normal_class: str, class_names: Sequence[str] | None = None) -> list[str]:
    """The abnormal classes present, in `class_names` order (else sorted)."""
    present = set(np.asarray(clip_classes).tolist()) - {normal_class}
    order = list(class_names) if class_names is not None else sorted(present)
    return [name for name in order if name in present]


def anomaly_metrics(scores: Any, clip_classes: Sequence[str], normal_class: str, threshold: float, *,
                    max_fpr: float = 0.1, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 42,
                    class_names: Sequence[str] | None = None, target_false_alarm_rate: float | None = None
                    ) -> dict[str, Any]:
    """JSON-ready test metrics: overall and per fault type (normal clips vs that fault's clips).

    Each comparison has `auc`, `pauc` (DCASE: area / max_fpr), `pauc_mcclish`, their bootstrap intervals
    and the detection rate at the threshold; `false_alarm` is the share of normal test clips above it.
    """
    values = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(clip_classes).astype(str)
    if values.shape != classes.shape:
        raise ValueError(f"{len(values)} scores but {len(classes)} class names")
    normal = classes == normal_class
    faults = fault_types(classes, normal_class, class_names)
    if not normal.any() or not faults:
        raise ValueError(f"test clips must include the normal class {normal_class!r} and at least one fault")
    options = {"max_fpr": max_fpr, "n_resamples": n_resamples, "confidence": confidence}
    per_fault = {}
    for index, fault in enumerate(faults, start=1):
        rows = normal | (classes == fault)
        per_fault[fault] = comparison_metrics(classes[rows] == fault, values[rows], threshold,
                                              seed=[seed, index], **options)
    return {
        "normal_class": normal_class, "threshold": float(threshold), "max_fpr": max_fpr, "confidence": confidence,
        "bootstrap_resamples": n_resamples, "target_false_alarm_rate": target_false_alarm_rate,
        "false_alarm": rate_summary(values[normal] > threshold, confidence),
        "overall": comparison_metrics(~normal, values, threshold, seed=[seed, 0], **options),
        "per_fault": per_fault,
    }


def roc_rows(scores: Any, clip_classes: Sequence[str], normal_class: str,
             class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """ROC points for plotting: rows {curve, fpr, tpr}, curve `overall` and one per fault type."""
    values = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(clip_classes).astype(str)
    normal = classes == normal_class
    comparisons = [("overall", ~normal, values)]
    for fault in fault_types(classes, normal_class, class_names):
        rows = normal | (classes == fault)
        comparisons.append((fault, classes[rows] == fault, values[rows]))
    table = []
    for name, is_abnormal, curve_scores in comparisons:
        curve = roc_curve_points(is_abnormal, curve_scores)
        table.extend({"curve": name, "fpr": float(f), "tpr": float(t)} for f, t in zip(curve.fpr, curve.tpr))
    return table
