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
"""
from __future__ import annotations

from dataclasses import dataclass

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


def fit_scorer(method: str, features: np.ndarray, labels: np.ndarray, k: int) -> MahalanobisScorer | NeighbourScorer:
    if method == "mahalanobis":
        return fit_mahalanobis(features, labels)
    if method == "knn":
        return fit_neighbours(features, min(k, len(features)))
    raise ValueError(f"unknown unfamiliar-input method {method!r}; choose one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Familiarity:
    """A fitted scorer and the score above which an input is unfamiliar."""
    scorer: MahalanobisScorer | NeighbourScorer
    threshold: float
    false_flag_rate: float
    held_out: int            # training items whose out-of-fold scores set the threshold

    @property
    def method(self) -> str:
        return "mahalanobis" if isinstance(self.scorer, MahalanobisScorer) else "knn"

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.scorer.score(features)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to score again, as arrays (the model folder's unfamiliar.npz)."""
        common = {"threshold": np.float64(self.threshold), "false_flag_rate": np.float64(self.false_flag_rate),
                  "held_out": np.int64(self.held_out)}
        if isinstance(self.scorer, MahalanobisScorer):
            return {**common, "method": np.str_("mahalanobis"), "means": self.scorer.means,
                    "precision": self.scorer.precision}
        return {**common, "method": np.str_("knn"), "reference": self.scorer.reference, "k": np.int64(self.scorer.k)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Familiarity:
        method = str(arrays["method"])
        if method == "mahalanobis":
            scorer: MahalanobisScorer | NeighbourScorer = MahalanobisScorer(np.asarray(arrays["means"]),
                                                                            np.asarray(arrays["precision"]))
        elif method == "knn":
            scorer = NeighbourScorer(np.asarray(arrays["reference"]), int(arrays["k"]))
        else:
            raise ValueError(f"unknown unfamiliar-input method {method!r}")
        return cls(scorer, float(arrays["threshold"]), float(arrays["false_flag_rate"]), int(arrays["held_out"]))


def out_of_fold_scores(method: str, features: np.ndarray, labels: np.ndarray, k: int, folds: int,
                       seed: int) -> np.ndarray:
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
        scores[held_rows] = fit_scorer(method, x[fit_rows], labels[fit_rows], k).score(x[held_rows])
    return scores


def fit_familiarity(features: np.ndarray, labels: np.ndarray, method: str, k: int, false_flag_rate: float,
                    folds: int, seed: int) -> Familiarity:
    """The scorer fitted on every training item, and a threshold that at most `false_flag_rate` of their
    out-of-fold scores exceed."""
    held_out = out_of_fold_scores(method, features, labels, k, folds, seed)
    return Familiarity(fit_scorer(method, np.asarray(features, dtype=np.float64), np.asarray(labels), k),
                       flag_threshold(held_out, false_flag_rate), false_flag_rate, len(held_out))
