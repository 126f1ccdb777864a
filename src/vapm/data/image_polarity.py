"""Is this grey image the right way round, and is it the kind of image the training set holds? Two rules learnt
from the training images alone, on the same statistics.

1. Polarity: a rule that tells the training images from their own negatives (255 - image).

An inverted image (a camera's negative mode, a changed look-up table, back- instead of front-lighting) is a
plausible texture to a classifier: on NEU, both CNNs keep about 88 % accuracy on inverted test images, and no
layer's feature distance tells them apart (docs/unfamiliar-findings.md). What does tell them apart are
statistics that change sign when the grey levels are inverted: where the defects are darker or brighter than
their surroundings (skewness of the grey levels and of band-passed images, the asymmetry of the grey-level
quantiles, bright against dark top-hat energy) and how the sensor's noise grows with brightness (the correlation
between a block's mean and its fine-scale spread). Every one of them is exactly odd, f(255 - x) = -f(x), so the
training images' negatives need no computing: a logistic regression without intercept is fitted on f and -f.

Its threshold is set out of fold: each fifth of the training images is scored by a rule fitted on the other
four, and the threshold is the score that `false_flag_rate` of them exceed. The rule is kept only when, so
scored, it tells at least `MIN_DETECTED` of the training images' negatives: images with no polarity to learn
(symmetric textures) get no check rather than one that flags familiar images for nothing.

2. Likeness: the Mahalanobis distance of the same statistics to the training images' (their mean and a
Ledoit-Wolf covariance), with the out-of-fold threshold that `false_flag_rate` of them exceed. It tells images of
another kind (a spectrogram drawn as a picture, a photograph of something else) whatever the classifier's
features make of them: on NEU it flags every spectrogram image and none of the 72 test images, where the scratch
CNN's penultimate layer places spectrograms among the steel textures (docs/unfamiliar.md).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

QUANTILE_PAIRS = ((0.01, 0.99), (0.05, 0.95), (0.10, 0.90), (0.25, 0.75))
BAND_SIGMAS = (1.0, 2.0, 4.0, 8.0)
TOPHAT_SIZES = (3, 7, 15)
NOISE_SCALES = ((0.7, 8), (1.0, 8), (1.0, 16), (2.0, 16))  # (high-pass sigma, block side) in pixels
N_FEATURES = 1 + len(QUANTILE_PAIRS) + 2 * len(BAND_SIGMAS) + len(TOPHAT_SIZES) + 2 * len(NOISE_SCALES)
MIN_SIDE = 32  # two blocks of the largest side each way
MIN_IMAGES = 50
FOLDS = 5
REGULARISATION = 10.0  # scikit-learn's C: on NEU, C = 1 told 97.7 % of the negatives out of fold, C = 10 99.4 %
MIN_DETECTED = 0.9


class PolarityRule(BaseModel):
    """score = weights . (features / scales); above `threshold`: the image looks inverted."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    threshold: float
    detected: float  # share of the training images' negatives scored above the threshold, out of fold
    flagged: float  # share of the training images scored above it, out of fold

    def score(self, image: np.ndarray) -> float:
        return float(polarity_features(image) / np.asarray(self.scales) @ np.asarray(self.weights))


class LikenessRule(BaseModel):
    """distance = (f - mean) . precision . (f - mean) of an image's `polarity_features` f; above `threshold`: unlike
    the training images."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    mean: tuple[float, ...]
    precision: tuple[tuple[float, ...], ...]
    threshold: float

    def distance(self, image: np.ndarray) -> float:
        offset = polarity_features(image) - np.asarray(self.mean)
        return float(offset @ np.asarray(self.precision) @ offset)


def _skew(values: np.ndarray) -> float:
    centred = values.ravel() - values.mean()
    spread = np.mean(centred * centred)
    return float(np.mean(centred * centred * centred) / spread ** 1.5) if spread > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (scipy.stats.rankdata's default), so that the ranks of -v are
    exactly n + 1 minus those of v."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse] + 1.0


# NumPy, not SciPy: `vapm predict` scores every image with these, and importing scipy.ndimage and scipy.stats
# costs about a second of a cold start (docs/performance.md). Edges are mirrored as SciPy's default 'reflect'.
def _along_rows(image: np.ndarray, pad: int, combine, count: int, weights=None) -> np.ndarray:
    """Each pixel's `count` neighbours down its column (centred, edges mirrored) combined: a weighted sum, or
    the running np.minimum / np.maximum."""
    padded = np.pad(image, ((pad, pad), (0, 0)), mode="symmetric")
    rows = image.shape[0]
    result = padded[0:rows] * weights[0] if weights is not None else padded[0:rows]
    for i in range(1, count):
        term = padded[i:i + rows] * weights[i] if weights is not None else padded[i:i + rows]
        result = combine(result, term)
    return result


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur, truncated at 4 sigma (as scipy.ndimage.gaussian_filter), one axis after the other."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    down = _along_rows(image, radius, np.add, len(taps), taps)
    return _along_rows(down.T, radius, np.add, len(taps), taps).T


def _extreme_filter(image: np.ndarray, size: int, combine) -> np.ndarray:
    """The minimum (combine=np.minimum) or maximum over each pixel's centred size x size square."""
    down = _along_rows(image, size // 2, combine, size)
    return _along_rows(down.T, size // 2, combine, size).T


def _tophats(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(white, black) top-hats with a size x size square: what an opening removes, what a closing fills."""
    opening = _extreme_filter(_extreme_filter(image, size, np.minimum), size, np.maximum)
    closing = _extreme_filter(_extreme_filter(image, size, np.maximum), size, np.minimum)
    return image - opening, closing - image


def polarity_features(image: np.ndarray) -> np.ndarray:
    """float64 (N_FEATURES,) of a grey image of at least MIN_SIDE pixels a side; each one changes sign exactly when
    the image is inverted, and all are 0 for a flat image."""
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim != 2 or min(grey.shape) < MIN_SIDE:
        raise ValueError(f"need a 2-D grey image of at least {MIN_SIDE}x{MIN_SIDE} pixels, got shape {grey.shape}")
    spread = grey.std()
    if spread == 0:
        return np.zeros(N_FEATURES)
    z = (grey - grey.mean()) / spread
    features = [_skew(z)]
    quantiles = np.quantile(z, [0.5, *np.ravel(QUANTILE_PAIRS)])
    features += [low + high - 2 * quantiles[0] for low, high in quantiles[1:].reshape(-1, 2)]
    smoothed = {sigma: _gaussian(z, sigma) for sigma in {*BAND_SIGMAS, *(s for s, _ in NOISE_SCALES)}}
    for sigma in BAND_SIGMAS:
        features += [_skew(z - smoothed[sigma]), _skew(smoothed[sigma])]
    for size in TOPHAT_SIZES:
        white, black = _tophats(z, size)
        bright, dark = np.mean(white ** 2), np.mean(black ** 2)
        features.append(float(np.log(bright + 1e-9) - np.log(dark + 1e-9)))
    for sigma, side in NOISE_SCALES:
        residual = z - smoothed[sigma]
        rows, cols = z.shape[0] // side * side, z.shape[1] // side * side
        blocks = (rows // side, side, cols // side, side)
        means = z[:rows, :cols].reshape(blocks).mean(axis=(1, 3)).ravel()
        noise = residual[:rows, :cols].reshape(blocks).std(axis=(1, 3)).ravel()
        if means.std() == 0 or noise.std() == 0:
            features += [0.0, 0.0]
            continue
        rank_correlation = np.corrcoef(_ranks(means), _ranks(noise))[0, 1]  # Spearman's
        # The slope of log noise on the standardised block means is odd too: inverting negates the means only.
        slope = np.polyfit((means - means.mean()) / means.std(), np.log(noise + 1e-3), 1)[0]
        features += [float(rank_correlation) if np.isfinite(rank_correlation) else 0.0, float(slope)]
    return np.asarray(features, dtype=np.float64)


def _fitted(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales, weights) of the logistic regression telling `features` (0) from their negatives (1)."""
    from sklearn.linear_model import LogisticRegression

    scales = np.sqrt(np.mean(features * features, axis=0))  # the std of f and -f together: their mean is 0
    scales[scales == 0] = 1.0
    scaled = features / scales
    model = LogisticRegression(C=REGULARISATION, fit_intercept=False, max_iter=5000)
    model.fit(np.concatenate([scaled, -scaled]), np.repeat([0, 1], len(scaled)))
    return scales, model.coef_[0].astype(np.float64)


def _checked(features: np.ndarray, false_flag_rate: float) -> np.ndarray | None:
    """The training images' statistics as float64, or None when they are too few to learn a rule from."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != N_FEATURES:
        raise ValueError(f"need polarity features (N, {N_FEATURES}), got shape {features.shape}")
    if not 0 < false_flag_rate < 0.5:
        raise ValueError(f"false_flag_rate must lie in (0, 0.5), got {false_flag_rate}")
    return features if len(features) >= MIN_IMAGES else None


def _out_of_fold(features: np.ndarray, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each row's score(fitted on the other folds' rows, its own fold's rows), in row order. The rows' order is
    the dataset's, so every fold sees every class."""
    fold = np.arange(len(features)) % FOLDS
    scores = np.empty(len(features))
    for k in range(FOLDS):
        scores[fold == k] = score(features[fold != k], features[fold == k])
    return scores


def _polarity_scores(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
    scales, weights = _fitted(fit)
    return scored / scales @ weights


def fit_polarity(features: np.ndarray, false_flag_rate: float) -> PolarityRule | None:
    """The rule for training images whose `polarity_features` are the rows of `features`, or None when there are
    fewer than MIN_IMAGES of them or it tells fewer than MIN_DETECTED of their negatives out of fold."""
    features = _checked(features, false_flag_rate)
    if features is None:
        return None
    familiar = _out_of_fold(features, _polarity_scores)
    negatives = -familiar  # the score is linear and every statistic odd: a negative scores minus its image
    threshold = float(np.quantile(familiar, 1 - false_flag_rate))
    detected = float(np.mean(negatives > threshold))
    if detected < MIN_DETECTED:
        return None
    scales, weights = _fitted(features)
    return PolarityRule(scales=tuple(scales.tolist()), weights=tuple(weights.tolist()), threshold=threshold,
                        detected=detected, flagged=float(np.mean(familiar > threshold)))


def _mean_and_precision(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    return features.mean(axis=0), LedoitWolf().fit(features).precision_


def _distances(fit: np.ndarray, scored: np.ndarray) -> np.ndarray:
    mean, precision = _mean_and_precision(fit)
    offsets = scored - mean
    return np.einsum("ij,jk,ik->i", offsets, precision, offsets)


def fit_likeness(features: np.ndarray, false_flag_rate: float) -> LikenessRule | None:
    """The likeness rule of training images whose `polarity_features` are the rows of `features`; None when there
    are fewer than MIN_IMAGES of them. The threshold is the (1 - false_flag_rate) quantile of their out-of-fold
    distances (each fifth measured from the other four)."""
    features = _checked(features, false_flag_rate)
    if features is None:
        return None
    distances = _out_of_fold(features, _distances)
    mean, precision = _mean_and_precision(features)
    return LikenessRule(mean=tuple(mean.tolist()), precision=tuple(map(tuple, precision.tolist())),
                        threshold=float(np.quantile(distances, 1 - false_flag_rate)))
