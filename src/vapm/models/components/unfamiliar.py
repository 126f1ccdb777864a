"""How unfamiliar an input is to a classifier: the distance of its features to the training data.

Class-conditional Mahalanobis distance with one shared covariance (Lee et al., 2018), shrunk towards a scaled
identity by the Ledoit-Wolf estimate so that it stays invertible with few items and many features; the score is
the smallest squared distance to a class mean. The threshold is the (1 - false_flag_rate) quantile of held-out
in-distribution scores, so at most that share of familiar items is flagged. k-nearest-neighbour distance (the mean
distance to the k nearest training rows) is the other measure (`ood.method`); docs/unfamiliar-findings.md compares
them on the real data.

The held-out scores are out-of-fold: the scorer is refitted on 4/5 of the training items and scores the other
fifth, five times, so every training item gets an honest score and a 1 % quantile is resolvable even where the
validation split has 26 items. The scorer that answers is then fitted on all of them (`fit_familiarity`).

With `scale="standardised"` (the models `ood.standardise` names) each feature is first centred on its training
mean and divided by its training spread, so that the distance weighs every feature alike instead of following the
few with the widest range: on the real data it kept vision_transfer's distance from flagging 5 of NEU's 72 test
images (docs/unfamiliar.md); the demo's acoustic CNN, whose noise clips its widest features tell, flagged 6 %
of them so instead of all. A feature that barely varies in training gets the spread floor (SPREAD_FLOOR of the
median spread), so that it cannot decide the distance alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MahalanobisScorer:
    means: np.ndarray       # (classes, features)
    precision: np.ndarray   # (features, features): the inverse of the shared, shrunk covariance

    def score(self, features: np.ndarray) -> np.ndarray:
        """The smallest squared Mahalanobis distance of each row to a class mean (higher: less familiar).

        One matrix product per class (an einsum over all classes at once was 10x slower at 1,280 features); the
        differences are formed first, so a row near a mean does not lose its distance to cancellation."""
        x = np.asarray(features, dtype=np.float64)
        distances = np.empty((len(x), len(self.means)))
        for c, mean in enumerate(self.means):
            difference = x - mean
            distances[:, c] = np.sum((difference @ self.precision) * difference, axis=1)
        return distances.min(axis=1)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> MahalanobisScorer:
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if x.ndim != 2 or len(x) != len(labels) or len(classes) == 0:
        raise ValueError(f"need features (n, d) and n labels, got {x.shape} and {labels.shape}")
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    return MahalanobisScorer(means, LedoitWolf(assume_centered=True).fit(centred).precision_)


@dataclass(frozen=True)
class NeighbourScorer:
    reference: np.ndarray   # the training features
    k: int

    def score(self, features: np.ndarray, chunk: int = 256) -> np.ndarray:
        """The mean Euclidean distance to the k nearest training rows, by brute force in NumPy (no index to build,
        nothing but NumPy needed where the model answers)."""
        x = np.asarray(features, dtype=np.float64)
        reference = np.asarray(self.reference, dtype=np.float64)
        squared_reference = np.sum(reference * reference, axis=1)
        scores = np.empty(len(x))
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            squared = np.sum(part * part, axis=1)[:, None] + squared_reference[None, :] - 2.0 * part @ reference.T
            nearest = np.partition(np.maximum(squared, 0.0), self.k - 1, axis=1)[:, :self.k]
            scores[start:start + chunk] = np.sqrt(nearest).mean(axis=1)
        return scores


@dataclass(frozen=True)
class Standardised:
    """A scorer of standardised features: each feature minus its training mean, over its (floored) spread."""
    centre: np.ndarray
    spread: np.ndarray
    scorer: MahalanobisScorer | NeighbourScorer

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.scorer.score((np.asarray(features, dtype=np.float64) - self.centre) / self.spread)


SCALES = ("raw", "standardised")
SPREAD_FLOOR = 0.01  # of the median spread of the features that vary


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's training mean and spread (standard deviation), the spread at least SPREAD_FLOOR of the
    median spread of the varying features (1 when none varies)."""
    x = np.asarray(features, dtype=np.float64)
    centre, spread = x.mean(axis=0), x.std(axis=0)
    varying = spread[spread > 1e-12 * max(1.0, float(np.abs(centre).max(initial=0.0)))]
    floor = SPREAD_FLOOR * float(np.median(varying)) if len(varying) else 1.0
    return centre, np.maximum(spread, floor)


def fit_neighbours(features: np.ndarray, k: int = 5) -> NeighbourScorer:
    reference = np.asarray(features, dtype=np.float64)
    if reference.ndim != 2 or not 1 <= k <= len(reference):
        raise ValueError(f"need features (n, d) with n >= k = {k}, got {reference.shape}")
    return NeighbourScorer(reference, k)


def flag_threshold(held_out_scores: np.ndarray, false_flag_rate: float) -> float:
    """The score above which an input is unfamiliar: at most `false_flag_rate` of these familiar items exceed it."""
    scores = np.asarray(held_out_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0 or not 0 < false_flag_rate < 1:
        raise ValueError(f"need held-out scores and a rate in (0, 1), got {scores.shape} and {false_flag_rate}")
    return float(np.quantile(scores, 1 - false_flag_rate, method="higher"))


METHODS = ("mahalanobis", "knn")
MIN_ITEMS = 4  # two folds of two: fewer items cannot say how far a familiar item lies


Scorer = MahalanobisScorer | NeighbourScorer | Standardised


def fit_scorer(method: str, features: np.ndarray, labels: np.ndarray, k: int, scale: str = "raw") -> Scorer:
    if scale not in SCALES:
        raise ValueError(f"unknown feature scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "standardised":
        centre, spread = standardisation(features)
        standardised = (np.asarray(features, dtype=np.float64) - centre) / spread
        return Standardised(centre, spread, fit_scorer(method, standardised, labels, k))
    if method == "mahalanobis":
        return fit_mahalanobis(features, labels)
    if method == "knn":
        return fit_neighbours(features, min(k, len(features)))
    raise ValueError(f"unknown unfamiliar-input method {method!r}; choose one of {', '.join(METHODS)}")


def _scorer_arrays(scorer: Scorer) -> dict[str, np.ndarray]:
    if isinstance(scorer, Standardised):
        return {**_scorer_arrays(scorer.scorer), "centre": scorer.centre, "spread": scorer.spread}
    if isinstance(scorer, MahalanobisScorer):
        return {"method": np.str_("mahalanobis"), "means": scorer.means, "precision": scorer.precision}
    return {"method": np.str_("knn"), "reference": scorer.reference, "k": np.int64(scorer.k)}


def _scorer_from(arrays: dict[str, np.ndarray], prefix: str = "") -> Scorer:
    scorer = _unscaled_scorer_from(arrays, prefix)
    if f"{prefix}spread" in arrays:
        return Standardised(np.asarray(arrays[f"{prefix}centre"]), np.asarray(arrays[f"{prefix}spread"]), scorer)
    return scorer  # raw features (and every model saved before `ood.standardise` existed)


def _unscaled_scorer_from(arrays: dict[str, np.ndarray], prefix: str) -> MahalanobisScorer | NeighbourScorer:
    method = str(arrays[f"{prefix}method"])
    if method == "mahalanobis":
        return MahalanobisScorer(np.asarray(arrays[f"{prefix}means"]), np.asarray(arrays[f"{prefix}precision"]))
    if method == "knn":
        return NeighbourScorer(np.asarray(arrays[f"{prefix}reference"]), int(arrays[f"{prefix}k"]))
    raise ValueError(f"unknown unfamiliar-input method {method!r}")


def combined_score(group_scores: list[np.ndarray], medians: np.ndarray) -> np.ndarray:
    """Several feature groups as one score: the largest log(score / its familiar median) over the groups, so a
    group on its own scale counts by how unusual its score is (0: a typical familiar item)."""
    ratios = [np.log(np.maximum(np.asarray(scores, dtype=np.float64), _TINY) / max(float(median), _TINY))
              for scores, median in zip(group_scores, medians)]
    return np.max(np.stack(ratios), axis=0)


_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class Familiarity:
    """Fitted scorers, one per feature group (the penultimate layer first), and the score above which an input is
    unfamiliar: the group's own distance with one group, `combined_score` with several."""
    scorers: tuple[Scorer, ...]
    threshold: float
    false_flag_rate: float
    held_out: int                 # training items whose out-of-fold scores set the threshold
    medians: tuple[float, ...] = ()  # per group, of the out-of-fold scores (several groups only)
    # Those out-of-fold scores, in the training items' order, when just fitted (not saved: the threshold says it).
    held_out_scores: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def method(self) -> str:
        scorer = self.scorers[0]
        inner = scorer.scorer if isinstance(scorer, Standardised) else scorer
        return "mahalanobis" if isinstance(inner, MahalanobisScorer) else "knn"

    @property
    def scale(self) -> str:
        return "standardised" if isinstance(self.scorers[0], Standardised) else "raw"

    def score(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        groups = list(features) if isinstance(features, (list, tuple)) else [features]
        if len(groups) != len(self.scorers):
            raise ValueError(f"the scorer takes {len(self.scorers)} feature groups, got {len(groups)}")
        if len(groups) == 1:
            return self.scorers[0].score(groups[0])
        return combined_score([scorer.score(group) for scorer, group in zip(self.scorers, groups)],
                              np.asarray(self.medians))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to score again, as arrays (the model folder's unfamiliar.npz)."""
        common = {"threshold": np.float64(self.threshold), "false_flag_rate": np.float64(self.false_flag_rate),
                  "held_out": np.int64(self.held_out)}
        if len(self.scorers) == 1:
            return {**common, **_scorer_arrays(self.scorers[0])}
        grouped = {f"g{i}_{key}": value for i, scorer in enumerate(self.scorers)
                   for key, value in _scorer_arrays(scorer).items()}
        return {**common, **grouped, "groups": np.int64(len(self.scorers)),
                "medians": np.asarray(self.medians, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Familiarity:
        common = (float(arrays["threshold"]), float(arrays["false_flag_rate"]), int(arrays["held_out"]))
        if "groups" not in arrays:
            return cls((_scorer_from(arrays),), *common)
        scorers = tuple(_scorer_from(arrays, f"g{i}_") for i in range(int(arrays["groups"])))
        return cls(scorers, *common, tuple(float(m) for m in np.asarray(arrays["medians"])))


def out_of_fold_scores(method: str, features: np.ndarray, labels: np.ndarray, k: int, folds: int,
                       seed: int, scale: str = "raw") -> np.ndarray:
    """Each item's score by a scorer fitted without it: stratified folds (plain folds when a class is too small;
    fewer folds when there are fewer than two items per fold)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    x, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if len(x) < MIN_ITEMS:
        raise ValueError(f"need at least {MIN_ITEMS} training items to set a threshold, got {len(x)}")
    folds = min(folds, len(x) // 2)
    stratify = np.bincount(np.unique(labels, return_inverse=True)[1]).min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    scores = np.empty(len(x))
    for fit_rows, held_rows in splitter.split(x, labels):
        scores[held_rows] = fit_scorer(method, x[fit_rows], labels[fit_rows], k, scale).score(x[held_rows])
    return scores


def fit_familiarity(features: np.ndarray | list[np.ndarray], labels: np.ndarray, method: str, k: int,
                    false_flag_rate: float, folds: int, seed: int, scale: str = "raw") -> Familiarity:
    """Scorers fitted on every training item, one per feature group, and a threshold that at most
    `false_flag_rate` of their out-of-fold (combined) scores exceed; each fold standardises (`scale`) with its own
    training items' mean and spread."""
    groups = [np.asarray(group, dtype=np.float64) for group in
              (features if isinstance(features, (list, tuple)) else [features])]
    held_out = [out_of_fold_scores(method, group, labels, k, folds, seed, scale) for group in groups]
    scorers = tuple(fit_scorer(method, group, np.asarray(labels), k, scale) for group in groups)
    if len(groups) == 1:
        return Familiarity(scorers, flag_threshold(held_out[0], false_flag_rate), false_flag_rate, len(held_out[0]),
                           held_out_scores=held_out[0])
    medians = tuple(float(np.median(scores)) for scores in held_out)
    combined = combined_score(held_out, np.asarray(medians))
    return Familiarity(scorers, flag_threshold(combined, false_flag_rate), false_flag_rate, len(held_out[0]), medians,
                       combined)
