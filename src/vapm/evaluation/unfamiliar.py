"""How unfamiliar an input is to a classifier: the distance of its features to the training data.

Class-conditional Mahalanobis distance with one shared covariance (Lee et al., 2018), shrunk towards a scaled
identity by the Ledoit-Wolf estimate so that it stays invertible with few items and many features; the score is
the smallest squared distance to a class mean. The threshold is the (1 - false_flag_rate) quantile of held-out
in-distribution scores, so at most that share of familiar items is flagged. k-nearest-neighbour distance is the
other measure the issue asks to compare; both are fitted from (features, labels) of the training split.
Here for now as pure functions; the trainers will fit the scorer when issue 26 wires it in (then in
models.components).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    _index: Any = field(default=None, init=False, repr=False, compare=False)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The mean Euclidean distance to the k nearest training rows (the search index is built once)."""
        if self._index is None:
            from sklearn.neighbors import NearestNeighbors

            object.__setattr__(self, "_index", NearestNeighbors(n_neighbors=self.k).fit(self.reference))
        distances, _ = self._index.kneighbors(np.asarray(features, dtype=np.float64))
        return distances.mean(axis=1)


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
