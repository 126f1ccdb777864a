"""The decision threshold: a quantile of normal clips' scores that none of them were fitted on.

Rule. A clip is called abnormal when its score is strictly above the threshold. The threshold is the
(1 - rate) quantile of n normal validation scores with numpy's `weibull` rule (linear interpolation
between order statistics at position (1 - rate)(n + 1), 1-based). Why this rule: for n exchangeable
scores with a continuous distribution, a new normal clip exceeds the k-th smallest of them with
probability exactly (n + 1 - k)/(n + 1); at position k = (1 - rate)(n + 1) that is `rate`. So the
expected false-alarm rate is the target, not biased low or high as other positions are.

Resolution. The rule can only reach rate when (1 - rate)(n + 1) <= n, i.e. n >= (1 - rate)/rate normal
scores (19 for 5 %); with fewer, the threshold is the largest score and the expected false-alarm rate
is 1/(n + 1), the smallest step n clips can resolve. `holdout` keeps a seeded random share of the
normal train clips out of fitting and uses their scores; `cross_validation` splits all normal train
clips into k folds, fits on k - 1, scores the held-out fold, and pools the out-of-fold scores, so
every normal train clip gives one score (n = all of them) and the final detector is then fitted on
all of them. The out-of-fold models saw (k - 1)/k of the data, so they score normal clips slightly
higher than the final model will: the threshold errs towards fewer false alarms. `auto` takes the
holdout when it leaves at least (1 - rate)/rate validation clips, else cross-validation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

QUANTILE_METHOD = "weibull"


@dataclass(frozen=True)
class Threshold:
    """A fitted threshold and how it was set."""

    value: float
    false_alarm_rate: float           # the target
    method: str                       # holdout | cross_validation
    n_normal_scores: int              # validation (holdout) or pooled out-of-fold scores it was set on
    expected_false_alarm_floor: float  # 1/(n + 1): the smallest false-alarm rate n scores can resolve
    reason: str
    folds: int | None = None

    def as_dict(self) -> dict[str, Any]:
        rule = f"numpy.quantile(method={QUANTILE_METHOD!r}), alarm when score > value"
        return {**asdict(self), "quantile_rule": rule}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Threshold":
        return cls(value=float(values["value"]), false_alarm_rate=float(values["false_alarm_rate"]),
                   method=str(values["method"]), n_normal_scores=int(values["n_normal_scores"]),
                   expected_false_alarm_floor=float(values["expected_false_alarm_floor"]),
                   reason=str(values["reason"]), folds=None if values.get("folds") is None else int(values["folds"]))


def _check_rate(rate: float) -> None:
    if not 0 < rate < 1:
        raise ValueError(f"the false-alarm rate must lie strictly between 0 and 1, got {rate}")


def min_normal_scores(rate: float) -> int:
    """Fewest normal scores whose (1 - rate) quantile lies inside them: ceil((1 - rate)/rate), 19 for 5 %."""
    _check_rate(rate)
    return math.ceil(round((1 - rate) / rate, 9))  # round: (1 - 0.05)/0.05 is 19.000000000000004 in floats


def quantile_threshold(normal_scores: Any, rate: float) -> float:
    """The (1 - rate) quantile of normal scores by the `weibull` rule (see the module docstring)."""
    _check_rate(rate)
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError(f"need a non-empty 1-D array of finite normal scores, got shape {scores.shape}")
    return float(np.quantile(scores, 1 - rate, method=QUANTILE_METHOD))


def alarms(scores: Any, threshold: float) -> np.ndarray:
    """True where a clip is called abnormal: score strictly above the threshold."""
    return np.asarray(scores, dtype=np.float64) > threshold


def holdout_size(n_normal: int, validation_fraction: float) -> int:
    """Validation clips a holdout of `validation_fraction` takes (rounded, at least 1, leaving at least 1 to fit)."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {validation_fraction}")
    if n_normal < 2:
        raise ValueError(f"a holdout needs at least 2 normal clips, got {n_normal}")
    return min(max(1, round(n_normal * validation_fraction)), n_normal - 1)


def choose_method(requested: str, n_normal: int, validation_fraction: float, rate: float) -> tuple[str, str]:
    """The threshold method to use and why (`auto` picks holdout only when it resolves the rate)."""
    needed = min_normal_scores(rate)
    n_validation = holdout_size(n_normal, validation_fraction)
    if requested == "holdout":
        return "holdout", f"requested; {n_validation} of {n_normal} normal train clips held out"
    if requested == "cross_validation":
        return "cross_validation", f"requested; out-of-fold scores of all {n_normal} normal train clips"
    if requested != "auto":
        raise ValueError(f"threshold method must be auto, holdout or cross_validation, got {requested!r}")
    if n_validation >= needed:
        return "holdout", (f"auto: a holdout of {n_validation} normal clips resolves a {rate:g} false-alarm rate "
                           f"(needs >= {needed})")
    return "cross_validation", (f"auto: a holdout of {n_validation} of {n_normal} normal clips cannot resolve a "
                                f"{rate:g} false-alarm rate (needs >= {needed}; its smallest step is "
                                f"1/{n_validation + 1}), so out-of-fold scores of all {n_normal} are pooled")


def holdout_indices(n_normal: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, validation) indices into the normal train clips, each sorted."""
    order = np.random.default_rng(seed).permutation(n_normal)
    n_validation = holdout_size(n_normal, validation_fraction)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def fold_indices(n_normal: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded shuffled k-fold (fit, held-out) indices into the normal train clips."""
    if not 2 <= folds <= n_normal:
        raise ValueError(f"cross-validation needs 2..{n_normal} folds for {n_normal} normal clips, got {folds}")
    # Imported here, by fitting only: loading a detector's threshold needs NumPy alone.
    from sklearn.model_selection import KFold

    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(fit, held) for fit, held in splitter.split(np.arange(n_normal))]


def out_of_fold_scores(n_normal: int, folds: int, seed: int,
                       fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Every normal clip's score from a model fitted without its fold.

    `fit_and_score(fit_idx, held_idx)` fits a fresh detector on the clips `fit_idx` and returns the
    scores of the clips `held_idx`.
    """
    scores = np.full(n_normal, np.nan)
    for fit, held in fold_indices(n_normal, folds, seed):
        held_scores = np.asarray(fit_and_score(fit, held), dtype=np.float64)
        if held_scores.shape != held.shape:
            raise ValueError(f"fit_and_score returned {held_scores.shape} scores for {len(held)} held-out clips")
        scores[held] = held_scores
    return scores


def make_threshold(normal_scores: np.ndarray, rate: float, method: str, reason: str,
                   folds: int | None = None) -> Threshold:
    scores = np.asarray(normal_scores, dtype=np.float64)
    return Threshold(value=quantile_threshold(scores, rate), false_alarm_rate=float(rate), method=method,
                     n_normal_scores=len(scores), expected_false_alarm_floor=1.0 / (len(scores) + 1),
                     reason=reason, folds=folds)
