"""The threshold's false-alarm rate: the quantile rule, the holdout/cross-validation choice, and the
rate a fitted detector really gives on fresh synthetic normal data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vapm.models.acoustic_anomaly import AnomalySettings, SpectrogramSettings, fit_anomaly_model
from vapm.models.components.anomaly_threshold import (alarms, choose_method, fold_indices, holdout_indices,
                                                    min_normal_scores, out_of_fold_scores, quantile_threshold)

RATE = 0.05


def test_quantile_rule_by_hand():
    # weibull: position (1 - rate)(n + 1), 1-based. n = 19: position 19 = the largest score.
    assert quantile_threshold(np.arange(1.0, 20.0), RATE) == 19.0
    # n = 39: position 38.
    assert quantile_threshold(np.arange(1.0, 40.0), RATE) == 38.0
    # n = 9: position 9.5 lies beyond the data, so the threshold is the largest score.
    assert quantile_threshold(np.arange(1.0, 10.0), RATE) == 9.0
    # n = 49: position 47.5, halfway between the 47th and 48th scores.
    assert quantile_threshold(np.arange(1.0, 50.0), RATE) == 47.5
    assert alarms([1.0, 2.0, 3.0], 2.0).tolist() == [False, False, True]  # strictly above


@pytest.mark.parametrize("n, order_statistic", [(19, 19), (39, 38), (99, 95)])
def test_quantile_rule_gives_the_target_false_alarm_rate_in_expectation(n, order_statistic):
    # Normal scores uniform on (0, 1): a new normal clip exceeds threshold t with probability exactly 1 - t.
    # The k-th smallest of n uniform scores is Beta(k, n + 1 - k), so 1 - t is Beta(n + 1 - k, k), whose mean
    # (n + 1 - k)/(n + 1) is 0.05 for these (n, k) and whose variance is rate (1 - rate) / (n + 2).
    # The mean over R replicates is within 4 of its standard errors with probability 0.99994.
    replicates = 4000
    rng = np.random.default_rng(n)
    false_alarm = np.array([1 - quantile_threshold(rng.uniform(size=n), RATE) for _ in range(replicates)])
    k = order_statistic
    assert (n + 1 - k) / (n + 1) == pytest.approx(RATE)
    standard_error = math.sqrt(RATE * (1 - RATE) / (n + 2) / replicates)
    assert false_alarm.mean() == pytest.approx(RATE, abs=4 * standard_error)


def test_smallest_set_that_resolves_the_rate():
    assert min_normal_scores(0.05) == 19
    assert min_normal_scores(0.1) == 9
    assert min_normal_scores(0.01) == 99


def test_auto_uses_cross_validation_when_the_holdout_is_too_small():
    # The compressor subset: 32 healthy train clips; a 20 % holdout is 6 clips, whose smallest step is 1/7.
    method, reason = choose_method("auto", 32, 0.2, RATE)
    assert method == "cross_validation" and "1/7" in reason
    assert choose_method("auto", 200, 0.2, RATE)[0] == "holdout"  # 40 validation clips >= 19
    assert choose_method("holdout", 32, 0.2, RATE)[0] == "holdout"


def test_holdout_and_folds_partition_the_normal_clips():
    fit, validation = holdout_indices(32, 0.2, seed=1)
    assert len(validation) == 6 and not set(fit) & set(validation) and len(fit) + len(validation) == 32
    folds = fold_indices(32, 5, seed=1)
    held = np.concatenate([held for _, held in folds])
    assert sorted(held.tolist()) == list(range(32))
    assert all(not set(fit) & set(held) for fit, held in folds)
    scores = out_of_fold_scores(32, 5, 1, lambda fit, held: held * 10.0)
    np.testing.assert_array_equal(scores, np.arange(32) * 10.0)


def synthetic_normal_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 8 bands, 16 frames) 'log-mel' images: fixed band levels 0 to -20 dB, plus clip-to-clip level
    jitter and frame-to-frame noise, the kinds of variation normal machine sound has."""
    levels = np.linspace(0.0, -20.0, 8)[np.newaxis, :, np.newaxis]
    clip_jitter = rng.normal(0.0, 1.0, size=(n, 8, 1))
    frame_noise = rng.normal(0.0, 2.0, size=(n, 8, 16))
    return (levels + clip_jitter + frame_noise).astype(np.float32)


@pytest.mark.parametrize("threshold_method", ["cross_validation", "holdout"])
def test_false_alarm_rate_on_fresh_normal_data_meets_the_target(threshold_method):
    rng = np.random.default_rng(2024)
    n_train, n_fresh = 4000, 20000
    train = synthetic_normal_images(n_train, rng)
    settings = AnomalySettings(method="mahalanobis", normal_class="Healthy", false_alarm_rate=RATE,
                               threshold_method=threshold_method, validation_fraction=0.2, cv_folds=5,
                               band_floor_db=None)
    spectrogram = SpectrogramSettings(8000.0, 8, 256, 128, None, True)  # recorded only; images are given
    model = fit_anomaly_model(train, np.zeros(n_train, dtype=np.int64), np.full(n_train, "train"), ["Healthy"],
                              settings=settings, spectrogram=spectrogram, seed=3)
    assert model.threshold.method == threshold_method
    fresh = synthetic_normal_images(n_fresh, rng)
    observed = float(np.mean(model.is_abnormal(model.score(fresh))))
    # Two sources of spread around the 5 % target: the threshold is a sample quantile of n normal scores,
    # so the rate it really gives is Beta-distributed with variance rate (1 - rate)/(n + 2); and the
    # fresh clips estimate that rate with binomial variance rate (1 - rate)/n_fresh. (The out-of-fold
    # models see 4/5 of the data; that shifts 16-dimensional Mahalanobis scores by ~0.2 %, negligible.)
    # A correct threshold lands within 4 combined standard deviations with probability 0.99994.
    n = model.threshold.n_normal_scores
    spread = math.sqrt(RATE * (1 - RATE) / (n + 2) + RATE * (1 - RATE) / n_fresh)
    assert observed == pytest.approx(RATE, abs=4 * spread)
    assert n == (n_train if threshold_method == "cross_validation" else 800)
